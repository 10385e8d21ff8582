"""Runtime facts the worker gathers around the candidate's forward (the parent turns them into findings).

Nothing here decides a verdict: it snapshots global state, traces aten ops, poisons
the allocator and measures storage overlap, and reports what it saw.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: aten ops a forward may call beside its own kernel: allocation, views, copies, metadata
ALLOWED_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones", "ones_like",
    "full", "full_like", "new_zeros", "new_ones", "new_full", "fill_", "zero_", "copy_", "clone", "_to_copy", "to",
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "t", "transpose", "permute", "expand",
    "squeeze", "unsqueeze", "select", "slice", "narrow", "split", "split_with_sizes", "chunk", "unbind", "cat",
    "stack", "contiguous", "detach", "alias", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "flatten",
    "unflatten", "view_as", "expand_as", "arange", "set_", "resize_", "is_same_size", "constant_pad_nd",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "scalar_tensor", "is_nonzero", "_has_compatible_shallow_copy_type", "view_as_real", "view_as_complex", "movedim", "unfold",
    "diagonal", "index_put_", "masked_fill_", "detach_", "_copy_from", "_copy_from_and_resize", "empty_permuted",
    "resize_as_", "as_strided_", "unsqueeze_", "squeeze_", "transpose_", "t_", "lift", "_pin_memory", "pin_memory",
    "select_scatter", "slice_scatter", "tensor_split", "split_copy", "repeat", "tile", "flip", "roll",
    # dtype arithmetic: no tensor is read
    "promote_types", "result_type", "can_cast",
})


def _shape_only(args: Any, kwargs: Any) -> bool:
    """Whether an op runs on FakeTensors under an active FakeTensorMode: it computes shapes, not data.

    Kernel DSLs that trace their function on the first call (Helion) run it that way. Only
    exact FakeTensors count, and only while a fake mode is active: a subclass (of FakeTensor,
    or a wrapper that claims the meta device) can carry real data and compute on it in its own
    dispatch, so its ops are recorded. Real tensors a traced function captured from elsewhere
    are recorded too.
    """
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None:
        return False
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(type(t) is FakeTensor for t in tensors)


class OpTrace(TorchDispatchMode):
    """Records the aten ops (overload packet names) run on real data while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not _shape_only(args, kwargs):
            name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def compute_ops(self) -> dict[str, int]:
        return {k: v for k, v in self.ops.items() if k not in ALLOWED_OPS}


def numerics_flags() -> dict[str, Any]:
    flags: dict[str, Any] = {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.enabled": torch.backends.cudnn.enabled,
    }
    matmul = torch.backends.cuda.matmul
    for name in ("allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"):
        try:
            flags[f"cuda.matmul.{name}"] = getattr(matmul, name)
        except (AttributeError, RuntimeError):
            pass
    return flags


def _critical() -> dict[str, Any]:
    import builtins

    table: dict[str, Any] = {
        "torch.allclose": torch.allclose, "torch.isclose": torch.isclose, "torch.equal": torch.equal,
        "torch.testing.assert_close": torch.testing.assert_close, "time.perf_counter": time.perf_counter,
        "time.perf_counter_ns": time.perf_counter_ns, "time.time": time.time, "time.monotonic": time.monotonic,
        "torch.Tensor.__eq__": torch.Tensor.__eq__, "torch.Tensor.allclose": torch.Tensor.allclose,
        "torch.Tensor.data_ptr": torch.Tensor.data_ptr, "torch.Tensor.clone": torch.Tensor.clone,
        "torch.Tensor.contiguous": torch.Tensor.contiguous, "torch.Tensor.to": torch.Tensor.to,
        "torch.Tensor.cpu": torch.Tensor.cpu, "torch.Tensor.numpy": torch.Tensor.numpy,
        "torch.cuda.synchronize": torch.cuda.synchronize, "torch.cuda.Event": torch.cuda.Event,
        "torch.cuda.Event.elapsed_time": torch.cuda.Event.elapsed_time, "builtins.isinstance": builtins.isinstance,
        "builtins.type": builtins.type, "torch.nn.Module.__call__": torch.nn.Module.__call__,
        # What OpTrace trusts to compute shapes only (``_shape_only``)
        "FakeTensor.__torch_dispatch__": FakeTensor.__torch_dispatch__.__func__,  # a classmethod: its function, not a fresh binding
        "FakeTensorMode.__torch_dispatch__": FakeTensorMode.__torch_dispatch__,
    }
    return table


def function_identities() -> dict[str, int]:
    return {name: id(fn) for name, fn in _critical().items()}


def threads_and_children() -> tuple[set[int], set[int]]:
    """Python thread idents alive and child process ids of this process."""
    idents = {t.ident for t in threading.enumerate() if t.ident is not None}
    children: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children") as fh:
                    children.update(int(p) for p in fh.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return idents, children


def _storage_span(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return None
    if size == 0 or start == 0:
        return None
    return start, start + size


def overlaps(t: torch.Tensor, spans: list[tuple[int, int]]) -> bool:
    mine = _storage_span(t)
    if mine is None:
        return False
    return any(mine[0] < end and start < mine[1] for start, end in spans)


def spans(values: list[Any]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            span = _storage_span(v)
            if span is not None:
                out.append(span)
    return out


def poison(nbytes: int, value: float, device: str) -> None:
    """Fill a freed block of ``nbytes`` (and a few smaller ones) with ``value`` so reuse of stale memory shows."""
    if nbytes <= 0:
        return
    numel = max(1, nbytes // 4)
    blocks = []
    for size in (numel, numel, max(1, numel // 2), max(1, numel // 4)):
        blocks.append(torch.full((size,), value, dtype=torch.float32, device=device))
    del blocks


def output_bytes(values: list[Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def same_outputs(a: list[Any], b: list[Any]) -> str | None:
    """None when two runs' outputs agree (within the dtype's default tolerance); else what differs."""
    from kfoundry.verify.compare import compare_tensor

    if len(a) != len(b):
        return f"{len(a)} outputs in one run, {len(b)} in the other"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            continue
        x, y = x.detach().to("cpu"), y.detach().to("cpu")
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"output {i}: shape/dtype differ between runs"
        detail = compare_tensor(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor), None, None)
        if detail is not None:
            return f"output {i}: {detail.message}"
    return None
