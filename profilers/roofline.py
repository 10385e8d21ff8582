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
from pydantic import BaseModel, Field
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from kfoundry.config import settings
from kfoundry.profilers.timing import _clock, llc_bytes
from kfoundry.schema import OpInfo, ProblemAnalysis, Roofline

MiB = 1 << 20


class DevicePeaks(BaseModel):
    """Peak throughput of one device; FLOP/s per precision and main-memory bytes/s."""

    name: str
    fp32: float
    tf32: float
    bf16: float
    fp16: float
    fp8: float | None = Field(default=None, description="None where the device has no fp8 tensor cores.")
    bandwidth: float
    l2_bytes: int | None = None
    source: str

    def flops_for(self, dtype: str, policy: str | None = None) -> float:
        """Peak FLOP/s a legitimate kernel could reach for a problem in ``dtype``.

        ``policy`` is the precision policy's peak column ('fp32' for strict, 'tf32', 'bf16',
        'fp16'); without one, fp32 problems are priced at the faster of fp32 and TF32.
        """
        kind = _precision(dtype)
        if policy is not None and kind == "fp32":
            return {"fp32": self.fp32, "tf32": max(self.fp32, self.tf32), "bf16": self.bf16, "fp16": self.fp16}.get(policy, self.fp32)
        if kind == "fp32":
            # torch's fp32 matmul may run on TF32 tensor cores when allowed, and tolerances
            # usually admit it; pricing fp32 at the CUDA-core rate would reject such kernels.
            return max(self.fp32, self.tf32)
        if kind == "fp8":
            return self.fp8 or self.fp16
        return {"bf16": self.bf16, "fp16": self.fp16}.get(kind, self.fp32)


def _precision(dtype: str) -> str:
    name = dtype.removeprefix("torch.").lower()
    if name in ("bfloat16", "bf16"):
        return "bf16"
    if name in ("float16", "half", "fp16"):
        return "fp16"
    if name.startswith("float8") or name in ("int8", "uint8", "fp8"):
        return "fp8"
    # float64 is priced at fp32: every device below is slower in fp64, so this stays a bound.
    return "fp32"


def _datasheet(
    name: str, tflops: tuple[float, float, float, float, float | None], tb_s: float, l2_mib: int, source: str
) -> DevicePeaks:
    fp32, tf32, bf16, fp16 = (v * 1e12 for v in tflops[:4])
    fp8 = None if tflops[4] is None else tflops[4] * 1e12
    return DevicePeaks(
        name=name,
        source=f"{source} (dense peaks)",
        fp32=fp32,
        tf32=tf32,
        bf16=bf16,
        fp16=fp16,
        fp8=fp8,
        bandwidth=tb_s * 1e12,
        l2_bytes=l2_mib * MiB,
    )


# Dense (no 2:4 sparsity) peaks from each vendor datasheet; datasheets headline the sparse
# figure, twice these. TFLOP/s as (fp32, tf32, bf16, fp16, fp8), main-memory TB/s, and L2 MiB
# as torch.cuda.get_device_properties reports it (60 on an H200, checked on one).
# fmt: off
GPU_PEAKS: dict[str, DevicePeaks] = {p.name: p for p in (
    _datasheet("H100 SXM",       (67, 494.7, 989.4, 989.4, 1978.9), 3.35, 50, "NVIDIA H100 SXM datasheet"),
    _datasheet("H100 PCIe",      (51, 378, 756, 756, 1513),         2.0, 50, "NVIDIA H100 PCIe datasheet"),
    _datasheet("H100 NVL",       (60, 417.5, 835.5, 835.5, 1670.5), 3.9, 50, "NVIDIA H100 NVL datasheet"),
    _datasheet("H200",           (67, 494.7, 989.4, 989.4, 1978.9), 4.8, 60, "NVIDIA H200 SXM datasheet"),
    _datasheet("H200 NVL",       (60, 417.5, 835.5, 835.5, 1670.5), 4.8, 60, "NVIDIA H200 NVL datasheet"),
    _datasheet("A100 SXM 80GB",  (19.5, 156, 312, 312, None),       2.039, 40, "NVIDIA A100 SXM 80GB datasheet"),
    _datasheet("A100 PCIe 80GB", (19.5, 156, 312, 312, None),       1.935, 40, "NVIDIA A100 PCIe 80GB datasheet"),
    _datasheet("A100 40GB",      (19.5, 156, 312, 312, None),       1.555, 40, "NVIDIA A100 40GB datasheet"),
    _datasheet("B200",           (80, 1100, 2250, 2250, 4500),      8.0, 126, "NVIDIA HGX B200 datasheet, per GPU"),
    _datasheet("L40S",           (91.6, 183, 362.05, 362.05, 733),  0.864, 96, "NVIDIA L40S datasheet"),
    # Ada GeForce runs fp16/fp8 with fp16 accumulate at twice the fp32-accumulate rate (bf16's only mode).
    _datasheet("RTX 4090",       (82.6, 82.6, 165.2, 330.3, 660.6), 1.008, 72, "NVIDIA Ada whitepaper, RTX 4090"),
)}
# fmt: on

# torch.cuda.get_device_name spellings -> table key; first match wins, most specific first.
_NAME_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("h200", "nvl"), "H200 NVL"),
    (("h200",), "H200"),
    (("h100", "pcie"), "H100 PCIe"),
    (("h100", "nvl"), "H100 NVL"),
    (("h100",), "H100 SXM"),
    (("a100", "pcie", "80gb"), "A100 PCIe 80GB"),
    (("a100", "80gb"), "A100 SXM 80GB"),
    (("a100",), "A100 40GB"),
    (("b200",), "B200"),
    (("l40s",), "L40S"),
    (("4090",), "RTX 4090"),
)


def gpu_peaks(device_name: str) -> DevicePeaks | None:
    """Datasheet peaks for a ``torch.cuda.get_device_name()`` string, or None when unknown."""
    name = device_name.lower()
    for needles, key in _NAME_RULES:
        if all(n in name for n in needles):
            return GPU_PEAKS[key]
    return None


def roofline(flops: float, nbytes: float, peaks: DevicePeaks, dtype: str, median_ms: float | None, policy: str | None = None) -> Roofline:
    """Where a problem sits against ``peaks``: intensity, speed-of-light ms and achieved fraction."""
    peak_flops = peaks.flops_for(dtype, policy)
    sol_ms = max(flops / peak_flops, nbytes / peaks.bandwidth) * 1e3
    return Roofline(
        flops=flops,
        bytes=nbytes,
        arithmetic_intensity=flops / nbytes if nbytes > 0 else 0.0,
        peak_flops=peak_flops,
        peak_bandwidth=peaks.bandwidth,
        peak_source=peaks.source,
        sol_ms=sol_ms,
        achieved_fraction=sol_ms / median_ms if median_ms else None,
    )


# -- problem analysis -------------------------------------------------------------------


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
