"""SYCL backend (Intel GPUs): ``load_inline(sycl_sources=...)`` candidates, compiled with ``icpx -fsycl`` where it exists.

PyTorch's XPU builds accept SYCL kernels through ``torch.utils.cpp_extension.load_inline(name,
cpp_sources, sycl_sources=..., functions=[...])``. Without an Intel GPU, ``compile_only`` compiles
the ``sycl_sources`` with ``icpx -fsycl -fsyntax-only`` in the sandbox when icpx is on PATH; the
compiler ships with Intel's oneAPI (apt repository or installer), not with Debian or PyPI, which
carry only its runtime libraries (``intel-sycl-rt``, ``dpcpp-cpp-rt``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

from kfoundry.backends import device_units
from kfoundry.backends.cuda_sources import CudaUnit
from kfoundry.backends.foreign import ForeignBackend
from kfoundry.backends.nvcc import _torch_build_facts


class SyclBackend(ForeignBackend):
    name: ClassVar[str] = "sycl"
    compiler: ClassVar[str] = "icpx"
    install: ClassVar[str] = "Intel oneAPI DPC++/C++ compiler; Debian and PyPI carry only its runtime"
    device_words: ClassVar[str] = "Intel GPU (XPU)"
    specs: ClassVar[tuple[device_units.UnitSpec, ...]] = (
        device_units.UnitSpec("load_inline", 6, "sycl_sources", prefix="#include <torch/types.h>\n#include <sycl/sycl.hpp>\n"),
    )
    suffix: ClassVar[str] = ".sycl"
    build_call: ClassVar[str] = "load_inline"
    precision_patterns: ClassVar[device_units.Patterns] = [(re.compile(p), kind, what) for p, kind, what in (
        (r"\bsycl::half\b|\bsycl::vec\s*<\s*sycl::half\b", "fp16", "SYCL half type"),
        (r"\b(?:sycl::ext::oneapi::)?bfloat16\b", "bf16", "SYCL bfloat16 type"),
        (r"\bsycl::native::\w+|\bsycl::half_precision::\w+", "fast_math", "SYCL approximate math function"),
        (r"-fp-model=fast\b", "fast_math", "fast-math flag"),
    )]
    required_patterns: ClassVar[tuple[str, ...]] = (r"\bload_inline\s*\([\s\S]*?\bsycl_sources\b",)
    marker: ClassVar[str] = "SYCL kernels (queue.parallel_for over a sycl::nd_range) built with torch.utils.cpp_extension.load_inline(sycl_sources=...)"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "sycl.py"
    notes: ClassVar[str] = (
        "Write SYCL 2020 C++ in sycl_sources: a host function taking torch::Tensor that gets the queue with "
        "c10::xpu::getCurrentXPUStream().queue(), submits q.parallel_for(sycl::nd_range<1>(global, local), [=](sycl::nd_item<1> it) {...}) "
        "on tensor data_ptr<float>() pointers, and returns the output; declare it in cpp_sources and list it in functions=[...]. "
        "Intel GPUs run sub-groups of 16 or 32 work-items: use work-group sizes that are multiples of 32, sycl::reduce_over_group "
        "and sub-group shuffles for reductions, sycl::local_accessor for shared tiles, and accumulate in fp32. Strict precision "
        "means no sycl::half/bfloat16 and no -ffast-math (icpx defaults to -fp-model=fast: pass -fp-model=precise in extra_sycl_cflags). "
        "verify and profile need an Intel GPU with PyTorch XPU; compile needs icpx."
    )

    def _builds(self, call: ast.Call, parts: list[str]) -> bool:
        # a load_inline without sycl_sources is a cpp, cuda or hip candidate's
        return parts[-1] == "load_inline" and any(k.arg == "sycl_sources" for k in call.keywords)

    def command(self, exe: str, unit: CudaUnit, src: str, out: str) -> list[str] | str:
        includes, std, _ = _torch_build_facts()
        if not includes:
            return "torch is not importable here, so <torch/types.h> (which load_inline prepends) cannot be found"
        return [exe, "-fsycl", "-fsyntax-only", f"-std={std}", "-fp-model=precise", *[f"-I{d}" for d in includes], src]
