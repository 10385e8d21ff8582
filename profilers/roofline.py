"""Speed of light: FLOPs and compulsory bytes of a problem against a device's peaks.

A time below the speed of light is impossible, so DESIGN.md treats it as ``rejected``.
Every choice here therefore errs towards *higher* peaks (a lower, safer bound on time):
dense datasheet numbers, fp32 problems priced at TF32 tensor-core rate, the fastest of
several CPU measurements.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from kfoundry.config import settings
from kfoundry.profilers.peaks import GPU_PEAKS, DevicePeaks, MiB, roofline
from kfoundry.profilers.timing import _clock, llc_bytes
from kfoundry.schema import OpInfo, ProblemAnalysis


class _OpRecorder(TorchDispatchMode):
    """Counts every aten op the model dispatches, keeping the first call's shapes and dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, OpInfo] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        # The schema name drops the overload ("aten::add", not "aten::add.Tensor").
        name = func._schema.name
        info = self.ops.get(name)
        if info is None:
            tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            info = self.ops[name] = OpInfo(
                op=name,
                count=0,
                input_shapes=[list(t.shape) for t in tensors],
                dtypes=sorted({_dtype_name(t.dtype) for t in tensors}),
            )
        info.count += 1
        return func(*args, **(kwargs or {}))


def analyze_problem(model: torch.nn.Module, inputs: Sequence[Any]) -> ProblemAnalysis:
    """Ops, FLOPs, compulsory bytes and per-GPU speed of light of one forward call."""
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, recorder:
        output = model(*inputs)

    per_op = {packet._qualified_op_name: float(n) for packet, n in counter.get_flop_counts().get("Global", {}).items()}
    ops = [info.model_copy(update={"flops": per_op.get(info.op, 0.0)}) for info in recorder.ops.values()]
    in_tensors = _tensors(inputs)
    out_tensors = _tensors(output)
    state = [*model.parameters(), *model.buffers()]
    nbytes = float(sum(_nbytes(t) for t in _unique([*in_tensors, *state, *out_tensors])))
    flops = float(counter.get_total_flops())
    dtype = _dominant_dtype([*in_tensors, *state])
    return ProblemAnalysis(
        ops=ops,
        input_shapes=[list(t.shape) for t in in_tensors],
        input_dtypes=[_dtype_name(t.dtype) for t in in_tensors],
        output_shapes=[list(t.shape) for t in out_tensors],
        output_dtypes=[_dtype_name(t.dtype) for t in out_tensors],
        parameter_count=sum(p.numel() for p in model.parameters()),
        dtype=dtype,
        flops=flops,
        bytes=nbytes,
        arithmetic_intensity=flops / nbytes if nbytes > 0 else 0.0,
        sol_ms={name: roofline(flops, nbytes, peaks, dtype, None).sol_ms for name, peaks in GPU_PEAKS.items()},
    )


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    # An output that aliases an input (in-place models) is not a second compulsory transfer.
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    return list(seen.values())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dominant_dtype(tensors: list[torch.Tensor]) -> str:
    """The floating dtype holding the most bytes (integer index tensors do not set the precision)."""
    weight: dict[str, int] = {}
    for t in tensors:
        if t.is_floating_point():
            key = _dtype_name(t.dtype)
            weight[key] = weight.get(key, 0) + _nbytes(t)
    return max(weight, key=weight.__getitem__) if weight else "float32"


# -- measured CPU peaks -----------------------------------------------------------------


def cpu_peaks() -> DevicePeaks:
    """Peaks of this host's CPU, measured once and cached under ``cache_dir/cpu_peaks.json``.

    The key is the CPU model plus torch's thread count: a worker limited to fewer threads
    has a lower peak, and reusing a many-thread figure there would only loosen the bound.
    """
    key = f"{_cpu_model()} x{torch.get_num_threads()} threads"
    path = settings().cache_dir / "cpu_peaks.json"
    cached = _read_cache(path)
    if key in cached:
        return DevicePeaks.model_validate(cached[key])
    peaks = _measure_cpu_peaks(_cpu_model())
    cached[key] = peaks.model_dump()
    _write_cache(path, cached)
    return peaks


def _measure_cpu_peaks(model_name: str, reps: int = 5) -> DevicePeaks:
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm_s = _best_seconds(lambda: torch.mm(a, b), reps)
    # Twice the LLC where that is modest; a huge (shared, VM-reported) LLC would make the
    # copy slow without changing the answer's direction: a higher figure only loosens the bound.
    copy_bytes = min(max(64 * MiB, 2 * llc_bytes()), 256 * MiB)
    src = torch.ones(copy_bytes // 4)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), reps)
    fp32 = 2 * n**3 / mm_s
    return DevicePeaks(
        name=model_name,
        fp32=fp32,
        tf32=fp32,
        bf16=fp32,
        fp16=fp32,
        bandwidth=2 * copy_bytes / copy_s,  # one read and one write per element
        l2_bytes=llc_bytes(),
        source=f"measured on {model_name}",
    )


def _best_seconds(fn: Any, reps: int) -> float:
    fn()  # first call pays for allocation and library initialisation
    best = float("inf")
    for _ in range(reps):
        start = _clock()
        fn()
        best = min(best, _clock() - start)
    return max(best, 1e-9)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Workers may race on first use; a rename keeps readers from seeing half a file.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
