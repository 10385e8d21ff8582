"""Device peaks and the roofline against them (no torch: the server prices results it did not measure).

Every choice errs towards *higher* peaks (a lower, safer bound on time): dense datasheet numbers,
fp32 problems priced at TF32 tensor-core rate unless the policy forbids it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kfoundry.schema import Roofline

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
    """Where a problem sits against ``peaks``: intensity, speed-of-light ms and achieved fraction.

    The speed of light must never reject an honest kernel, so under strict fp32 it allows for
    compensated 3xTF32 (fp32-accurate: three TF32 products on the tensor cores, a third of TF32's
    rate), which strict accepts when its error matches fp32's; ``peak_flops`` stays the FMA peak a
    plain fp32 kernel can reach, which is what the analysis measures kernels against.
    """
    peak_flops = peaks.flops_for(dtype, policy)
    fastest = max(peak_flops, peaks.tf32 / 3) if policy == "fp32" and _precision(dtype) == "fp32" else peak_flops
    sol_ms = max(flops / fastest, nbytes / peaks.bandwidth) * 1e3
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
