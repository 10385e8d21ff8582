"""Metal backend (Apple GPUs): Metal Shading Language kernels through ``torch.mps.compile_shader``.

A candidate passes MSL source to ``torch.mps.compile_shader(src)`` and calls its kernels as
``lib.kernel(tensors..., threads=n, group_size=g)`` on MPS tensors. ``compile_only`` compiles the
source with ``xcrun -sdk macosx metal -c`` in the sandbox where Xcode's command-line tools exist
(macOS only); elsewhere it says so. verify and profile need an Apple-silicon Mac with PyTorch MPS.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from kfoundry.backends import device_units
from kfoundry.backends.cuda_sources import CudaUnit
from kfoundry.backends.foreign import ForeignBackend


class MetalBackend(ForeignBackend):
    name: ClassVar[str] = "metal"
    compiler: ClassVar[str] = "xcrun"
    install: ClassVar[str] = "Xcode command-line tools, macOS only"
    device_words: ClassVar[str] = "Apple GPU (MPS)"
    specs: ClassVar[tuple[device_units.UnitSpec, ...]] = (device_units.UnitSpec("compile_shader", 0, "source"),)
    version_args: ClassVar[tuple[str, ...]] = ("-sdk", "macosx", "metal", "--version")
    suffix: ClassVar[str] = ".metal"
    build_call: ClassVar[str] = "compile_shader"
    # MSL spells its 16-bit types as plain words; in a shader they cannot be variable names
    precision_patterns: ClassVar[device_units.Patterns] = [(re.compile(p), kind, what) for p, kind, what in (
        (r"\bhalf[234]?(?:x[234])?\b", "fp16", "Metal half type"),
        (r"\bbfloat[234]?\b", "bf16", "Metal bfloat type"),
        (r"\bfast::\w+", "fast_math", "Metal fast:: math function"),
    )]
    required_patterns: ClassVar[tuple[str, ...]] = (r"\bcompile_shader\s*\(", r"\bkernel\s+void\b")
    marker: ClassVar[str] = "Metal Shading Language `kernel void` functions compiled with torch.mps.compile_shader(...) and launched as lib.name(..., threads=n)"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "metal.py"
    notes: ClassVar[str] = (
        "Write Metal Shading Language: `kernel void f(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], "
        "constant uint& n [[buffer(2)]], uint i [[thread_position_in_grid]])`, compiled once at import with "
        "lib = torch.mps.compile_shader(SRC) and launched as lib.f(x, y, n, threads=n, group_size=256); tensors bind in argument "
        "order, Python ints and floats as constant scalars. Apple GPUs run 32-wide SIMD groups: use threadgroup sizes that are "
        "multiples of 32, simd_sum/simd_max and threadgroup memory for reductions, and guard the tail (the grid is exactly "
        "`threads`). MSL has no double: accumulate in float. Strict precision means no half/bfloat and no fast:: math "
        "(use precise:: or metal::precise). verify and profile need an Apple-silicon Mac with PyTorch MPS; compile needs xcrun metal."
    )

    def command(self, exe: str, unit: CudaUnit, src: str, out: str) -> list[str] | str:
        return [exe, "-sdk", "macosx", "metal", "-c", "-fno-fast-math", src, "-o", out]
