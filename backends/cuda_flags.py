"""Compiler options a candidate may ask for: NVRTC options for ``load_cuda``, ``extra_cuda_cflags`` for ``load_inline``.

Code-generation choices only, never paths, plugins or output locations. ``check_flags`` guards
NVRTC builds (``kfoundry.backends.cuda_build``); nvcc compile-only (``kfoundry.backends.nvcc``)
refuses the same options, and ``kfoundry.backends.cuda_sources`` sorts a candidate's options by it.
"""

from __future__ import annotations

import re

#: Flags a candidate may ask for (NVRTC options for load_cuda, extra_cuda_cflags for load_inline):
#: code-generation choices only, never paths, plugins or output locations.
_FLAG_OK = re.compile(
    r"^(-O[0-3]|-D\w+(=[\w.+-]*)?|-U\w+|--?use_fast_math|--?(ftz|prec-div|prec-sqrt|fmad)=(true|false)"
    r"|--?std=c\+\+(11|14|17|20)|-lineinfo|--generate-line-info|--?maxrregcount=\d+|--?extra-device-vectorization"
    r"|--?expt-relaxed-constexpr|--?expt-extended-lambda|--extended-lambda|-dopt=(on|off)|-w|--disable-warnings"
    r"|-diag-suppress=[\d,]+|--diag-suppress=[\d,]+|-Xptxas=-O[0-3]|--ptxas-options=-v|-Xptxas=-v"
    r"|--?(arch|gpu-architecture)=(sm|compute)_\d{2,3}[af]?)$"
)


class FlagError(ValueError):
    """A compiler option outside the allowed set."""


_ALLOWED_HINT = (
    "use -O*, -D*, --use_fast_math, --fmad=, --ftz=, --prec-div=, --prec-sqrt=, -std=c++17/20, -lineinfo, "
    "-maxrregcount= or -arch=sm_XX (no paths)"
)


def check_flags(flags: list[str]) -> list[str]:
    for flag in flags:
        if not _FLAG_OK.match(flag):
            raise FlagError(f"CUDA compiler option {flag!r} is not allowed; {_ALLOWED_HINT}")
    return flags
