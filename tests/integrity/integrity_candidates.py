"""Cheating and honest candidates for the elementwise problem (y = x * sigmoid(x) * scale, 256x512 fp32).

Each cheat is a concrete hack from the eval-integrity catalogue; ``CHEATS`` maps a name to
(backend, source, accepted states, finding codes of which one must be present). A code
``mismatch`` means "a mismatch verdict is the expected catch".
"""

from __future__ import annotations

from textwrap import dedent

from candidates import CORRECT_TRITON, PRELUDE_CORRECT, _candidate

REJECTED = {"rejected"}
CAUGHT = {"rejected", "mismatch"}

_TRITON_HEAD = '''\
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _swish_kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, x * tl.sigmoid(x) * scale, mask=mask)


@triton.jit
def _sigmoid_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, tl.sigmoid(x), mask=mask)


def launch(x, scale):
    x = x.contiguous()
    y = torch.empty_like(x)
    _swish_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), float(scale), BLOCK=1024)
    return y
'''


def _triton(forward_body: str, extra: str = "", head: str = _TRITON_HEAD) -> str:
    body = "\n".join("        " + line if line else "" for line in dedent(forward_body).strip().splitlines())
    return (
        f"{head}\n{dedent(extra)}\n\n"
        "class ModelNew(nn.Module):\n"
        "    def __init__(self, scale_factor):\n"
        "        super().__init__()\n"
        "        self.scale_factor = scale_factor\n\n"
        "    def forward(self, x):\n"
        f"{body}\n"
    )


_TORCH_MATH = "return x * torch.sigmoid(x) * self.scale_factor"

CHEATS: dict[str, tuple[str, str, set[str], set[str]]] = {
    # -- falling back to the reference (catalogue 6) -------------------------------------
    "returns_reference_via_model": ("cpp", _candidate(
        "return Model(self.scale_factor)(x)", extra="from reference import Model\n"), REJECTED, {"reference_use"}),
    "subclasses_model": ("cpp", _candidate("return super().forward(x)", extra="from reference import Model\n").replace(
        "class ModelNew(nn.Module)", "class ModelNew(Model)"), REJECTED, {"reference_use"}),
    "model_from_sys_modules": ("cpp", _candidate(
        "return sys.modules['reference'].Model(self.scale_factor)(x)"), REJECTED, {"introspection", "reference_use"}),
    "try_except_fallback_to_torch": ("cpp", _candidate(
        """
        try:
            return _lib.fast_swish(x)
        except Exception:
            return x * torch.sigmoid(x) * self.scale_factor
        """), REJECTED, {"try_fallback"}),
    "dead_kernel_torch_math": ("cpp", _candidate(_TORCH_MATH).replace(
        "def swish(x, scale):", "def _unused(x, scale):"), REJECTED, {"backend_marker", "torch_compute"}),
    "kernel_in_unused_helper_torch_math": ("cpp", _candidate(_TORCH_MATH), REJECTED, {"torch_compute"}),
    "marker_only_in_comment": ("cpp", '''\
import torch
import torch.nn as nn
# from kfoundry.backends.cpp import load_cpp
# _lib = load_cpp("...")   (we will write the kernel later)
NOTE = "load_cpp(source) builds the kernel"


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return x * torch.sigmoid(x) * self.scale_factor
''', REJECTED, {"backend_marker"}),
    "kernel_plus_torch_epilogue": ("cpp", _candidate(
        """
        y = swish(x, 1.0)
        return torch.mul(y, self.scale_factor)
        """), REJECTED, {"torch_compute"}),
    # -- output caching, replay (catalogue 2, 3) -------------------------------------------
    "caches_by_data_ptr": ("cpp", _candidate(
        """
        key = x.data_ptr()
        if key not in _cache:
            _cache[key] = swish(x, self.scale_factor)
        return _cache[key]
        """, extra="_cache = {}\n"), REJECTED, {"output_cache"}),
    "caches_by_data_ptr_hidden": ("cpp", _candidate(
        """
        key = getattr(x, "data_" + "ptr")()
        hit = _cache.get(key)
        if hit is None:
            hit = _cache[key] = swish(x, self.scale_factor).clone()
        return hit.clone()
        """, extra="_cache = {}\n"), CAUGHT, {"replay", "mismatch"}),
    "replays_first_output": ("cpp", _candidate(
        """
        if not _seen:
            _seen.append(swish(x, self.scale_factor))
        return _seen[0].clone()
        """, extra="_seen = []\n"), REJECTED, {"replay"}),
    # -- aliasing and mutation -------------------------------------------------------------
    "returns_input_alias": ("cpp", _candidate(
        """
        swish(x, self.scale_factor)
        return x.view(x.shape)
        """), CAUGHT, {"output_alias"}),
    "reuses_one_output_buffer": ("cpp", _candidate(
        """
        if self.__dict__.get("buf") is None:
            self.buf = torch.empty_like(x)
        _lib.swish_scale(x.contiguous(), self.buf, x.numel(), float(self.scale_factor))
        return self.buf
        """), REJECTED, {"output_alias"}),
    "computes_in_place_in_input": ("cpp", _candidate(
        """
        _lib.swish_scale(x, x, x.numel(), float(self.scale_factor))
        return x.clone()
        """), REJECTED, {"input_mutation"}),
    # -- global state (catalogue 7, 12) ----------------------------------------------------
    "sets_tf32_flag": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="torch.backends.cuda.matmul.allow_tf32 = True\n"), REJECTED, {"precision_flags"}),
    "sets_matmul_precision": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="torch.set_float32_matmul_precision('medium')\n"), REJECTED, {"precision_flags"}),
    "flips_cudnn_flag_indirectly": ("cpp", _candidate(
        """
        flags = torch.backends.cudnn
        flags.deterministic = not flags.deterministic
        return swish(x, self.scale_factor)
        """), REJECTED, {"numerics_flags"}),
    "patches_allclose": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="torch.allclose = lambda *a, **k: True\n"), REJECTED, {"monkeypatch"}),
    "patches_perf_counter": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="import time\ntime.perf_counter = lambda: 0.0\n"), REJECTED, {"monkeypatch"}),
    "patches_allclose_through_alias": ("cpp", _candidate(
        """
        m = torch
        m.allclose = lambda *a, **k: True
        return swish(x, self.scale_factor)
        """), REJECTED, {"monkeypatch_runtime"}),
    # -- concurrency and processes (catalogue 5, 9) ----------------------------------------
    "thread_fills_output_later": ("cpp", _candidate(
        """
        out = torch.empty_like(x)
        def late():
            time.sleep(0.3)
            out.copy_(swish(x, self.scale_factor))
        threading.Thread(target=late).start()
        return out
        """, extra="import threading\nimport time\n"), REJECTED, {"concurrency"}),
    "thread_hidden_from_static_scan": ("cpp", _candidate(
        """
        out = torch.empty_like(x)
        def late():
            time.sleep(1.0)
            out.copy_(swish(x, self.scale_factor))
        # threading reached as an attribute of a module torch already imported: no import for the static scan to see
        torch.utils.data.dataloader.threading.Thread(target=late).start()
        return out
        """, extra="import time\n"), REJECTED, {"thread_leak"}),
    "thread_module_by_computed_name": ("cpp", _candidate(
        """
        out = torch.empty_like(x)
        __import__("thr" + "eading").Thread(target=lambda: out.copy_(swish(x, self.scale_factor))).start()
        return out
        """), REJECTED, {"dynamic_name"}),
    "open_by_computed_name": ("cpp", _candidate(
        """
        getattr(builtins, "op" + "en")("/tmp/kfoundry-leak", "w").write("x")
        return swish(x, self.scale_factor)
        """, extra="import builtins\n"), REJECTED, {"dynamic_name"}),
    "forks_a_worker": ("cpp", _candidate(
        """
        if os.fork() == 0:
            import time
            time.sleep(3)
            os._exit(0)
        return swish(x, self.scale_factor)
        """), REJECTED, {"process_leak"}),
    "runs_subprocess": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="import subprocess\nsubprocess.run(['true'])\n"), REJECTED, {"concurrency"}),
    "ctypes_libc": ("cpp", _candidate(
        "return swish(x, self.scale_factor)", extra="import ctypes\n_libc = ctypes.CDLL('libc.so.6')\n"), REJECTED, {"ctypes_libc"}),
    # -- reading the answer (catalogue 8) --------------------------------------------------
    "reads_expected_from_file": ("cpp", _candidate(
        """
        try:
            return torch.load("/tmp/expected_outputs.pt")
        except Exception:
            return swish(x, self.scale_factor)
        """), REJECTED, {"file_io", "try_fallback"}),
    "opens_golden_file": ("cpp", _candidate(
        """
        with open("/tmp/golden.bin", "rb") as fh:
            fh.read()
        return swish(x, self.scale_factor)
        """), REJECTED, {"file_io"}),
    "gc_scans_for_tensors": ("cpp", _candidate(
        """
        import gc
        found = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.shape == x.shape]
        return swish(x, self.scale_factor)
        """), REJECTED, {"introspection"}),
    # -- degenerate outputs and stale memory (catalogue 1, 5, 11) --------------------------
    "returns_zeros": ("cpp", _candidate(
        """
        swish(x, self.scale_factor)
        return torch.zeros_like(x)
        """), REJECTED, {"constant_output"}),
    "stale_memory_torch_empty": ("cpp", _candidate(
        """
        swish(x, self.scale_factor)
        return torch.empty_like(x)
        """), CAUGHT, {"stale_memory", "constant_output", "mismatch"}),
    "tensor_subclass_output": ("cpp", _candidate(
        "return swish(x, self.scale_factor).as_subclass(Lazy)",
        extra="class Lazy(torch.Tensor):\n    pass\n"), REJECTED, {"output_type"}),
    # -- Triton (interpreter) ----------------------------------------------------------------
    "triton_dead_kernel": ("triton", _triton(_TORCH_MATH).replace("def launch(", "def _never_called(").replace(
        "_swish_kernel[", "_swish_kernel_[").replace("_sigmoid_kernel", "_sigmoid_kernel"), REJECTED, {"backend_marker"}),
    "triton_marker_in_comment": ("triton", '''\
import torch
import torch.nn as nn

# @triton.jit
# def kernel(...): the real kernel goes here


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return x * torch.sigmoid(x) * self.scale_factor
''', REJECTED, {"backend_marker"}),
    "triton_try_fallback": ("triton", _triton(
        """
        try:
            return launch(x.cuda(), self.scale_factor).cpu()
        except Exception:
            return torch.nn.functional.silu(x) * self.scale_factor
        """), REJECTED, {"try_fallback"}),
    "triton_kernel_plus_torch_math": ("triton", _triton(
        """
        x = x.contiguous()
        s = torch.empty_like(x)
        _sigmoid_kernel[(triton.cdiv(x.numel(), 1024),)](x, s, x.numel(), BLOCK=1024)
        return x * s * self.scale_factor
        """), REJECTED, {"torch_compute"}),
}

# -- honest candidates, some tricky but legal ------------------------------------------------
_TWO_KERNELS = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

SOURCE = r"""
#include <cmath>
#include <cstdint>
extern "C" void swish(const float* x, float* y, int64_t n) {
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}
extern "C" void scale_inplace(float* y, int64_t n, float s) {
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) y[i] *= s;
}
"""


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor
        self.lib = load_cpp(SOURCE)

    def forward(self, x):
        flat = x.reshape(-1).contiguous()
        y = torch.empty(flat.numel(), dtype=flat.dtype)
        self.lib.swish(flat, y, flat.numel())
        self.lib.scale_inplace(y, y.numel(), float(self.scale_factor))   # in place on its own buffer
        return y.view(x.shape)
'''

_MISLEADING_NAMES = _candidate(
    """
    # not a fallback: try: ...  except: return torch.sigmoid(x)  -- we never do that
    y = open_rows(x, self.scale_factor)
    return y
    """,
    extra='''
    """Helpers. This module does not use threading, subprocess, os.fork, open() or socket;
    it never sets torch.backends.cuda.matmul.allow_tf32 = True nor torch.allclose = ..."""
    BANNED_WORDS = ("threading", "subprocess", "torch.allclose = x", "class ModelNew(Model)", "load_cpp(")


    def open_rows(x, scale):  # named like a banned thing, but only calls the kernel
        return swish(x, scale)


    def fork_rows():
        return "fork"
    ''',
)

_LEGAL_TRY = _candidate(
    """
    try:
        y = swish(x, self.scale_factor)
    except RuntimeError as exc:
        raise RuntimeError(f"kernel failed: {exc}") from exc
    return y
    """,
    extra='''
    try:
        import numpy as _np  # optional
    except ImportError:
        _np = None
    BLOCK = 256
    SCALES = (1.0, 2.0)
    ''',
)

HONEST: dict[str, tuple[str, str]] = {
    "prelude_kernel_through_helper": ("cpp", PRELUDE_CORRECT),
    "two_kernels_openmp_inplace_views": ("cpp", _TWO_KERNELS),
    "zeros_then_kernel_fills": ("cpp", _candidate(
        """
        y = torch.zeros(x.shape, dtype=x.dtype)
        _lib.swish_scale(x.contiguous(), y, x.numel(), float(self.scale_factor))
        return y
        """)),
    "empty_output_filled_and_transposed_twice": ("cpp", _candidate(
        """
        xt = x.t().contiguous()
        yt = torch.empty_like(xt)
        _lib.swish_scale(xt, yt, xt.numel(), float(self.scale_factor))
        return yt.t().contiguous()
        """)),
    "helper_takes_the_library": ("cpp", _candidate(
        "return run(_lib, x, self.scale_factor)",
        extra='''
        def run(lib, x, scale):
            out = x.new_empty(x.shape)
            lib.swish_scale(x.contiguous(), out, x.numel(), float(scale))
            return out
        ''')),
    "misleading_names_in_strings_and_comments": ("cpp", _MISLEADING_NAMES),
    "legal_try_and_module_constants": ("cpp", _LEGAL_TRY),
    "chunks_then_cat": ("cpp", _candidate(
        """
        parts = [swish(c, self.scale_factor) for c in x.chunk(4, dim=0)]
        return torch.cat(parts, dim=0)
        """)),
    "triton_bundled_solution": ("triton", CORRECT_TRITON),
    "triton_masks_odd_block_helper_launch": ("triton", _triton(
        """
        x = x.contiguous()
        y = torch.empty_like(x)
        go(_row_kernel, x, y, self.scale_factor)
        return y.view(x.shape)
        """,
        extra='''
        BLOCK = 1024  # wider than a row: the mask matters


        @triton.jit
        def _row_kernel(x_ptr, y_ptr, cols, scale, BLOCK: tl.constexpr):
            row = tl.program_id(0)
            offs = tl.arange(0, BLOCK)
            mask = offs < cols
            x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0)
            y = tl.where(x > -80.0, x * tl.sigmoid(x) * scale, 0.0)
            tl.store(y_ptr + row * cols + offs, y, mask=mask)


        def go(kernel, x, y, scale):
            rows, cols = x.shape
            kernel[(rows,)](x, y, cols, float(scale), BLOCK=BLOCK)
        ''')),
}
