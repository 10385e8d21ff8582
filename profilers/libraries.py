"""Which profiler rows and GPU kernel symbols are library or framework code, from the name alone.

Two strengths. ``is_library_kernel`` judges, on the trusted side, kernels a profiler outside
the sandbox recorded: whatever the candidate's process claims, a kernel shipped by cuBLAS,
cuDNN, PyTorch (ATen, Inductor) or another vendor library is not the candidate's own. Its
patterns are anchored on names those libraries give their kernels; a user kernel is caught
only if it copies one (a Triton function called ``nvjet_x``), which its verdict message names.
``looks_own`` only guesses, for a pasted profiler table with no backend to ask, and may call
a user kernel named ``gemm...`` library work: it decides nothing.
"""

from __future__ import annotations

import re

_LIBRARY = re.compile(
    r"""^(?:void\s+)?(?:
        (?:at|c10|cub|thrust|cutlass|cudnn|cublas\w*|cusparse|cufft|curand|nccl|flash|pytorch_flash|fmha|xformers|magma|transformer_engine|torch)::
      | (?:sm\d+|ampere|volta|turing|hopper|blackwell|maxwell)_\w*?(?:gemm|conv|xmma|dgrad|wgrad|fprop)
      | nvjet_ | xmma_ | cutlass_\d+_ | cublas | cudnn | cask_
      | (?:gemv2[NT]_kernel\w*|gemvNSP|gemmk1_kernel|gemmSN_\w*|splitKreduce_kernel|dot_kernel|reduce_1Block_kernel|scal_kernel|axpy_kernel|gemv_kernel\w*)<
      | triton_(?:poi|red|per|tem|for|mm|bmm)_
    )""",
    re.X,
)
# cuBLAS's SASS kernels end in their library's name ("..._execute_kernel__5x_cublas")
_LIBRARY_SUFFIX = re.compile(r"_kernel__\d+x_cublas\w*$")
# The guess for pasted tables: also host-side rows (aten:: ops, CUDA runtime calls, copies) and anything named gemm.
_LOOKS_LIBRARY = re.compile(
    r"^(aten::|at::|void at::|c10|cuda[A-Z]|cudnn|cublas|cutlass::Kernel|sm\d+_|ampere_|volta_|turing_|hopper_|"
    r"Memcpy|Memset|triton_(poi|red|per|tem)_|Torch-Compiled|CompiledFunction|gemm|void gemm|void cutlass)"
)
#: two names of one kernel from different profilers agree at least this far (templated names run long)
_COMPARED = 96


def is_library_kernel(name: str, known: frozenset[str] = frozenset()) -> bool:
    """True for a vendor-library or framework kernel, or one whose name starts like one in ``known`` (see ``name_key``)."""
    bare = name.strip()
    return bool(_LIBRARY.match(bare) or _LIBRARY_SUFFIX.search(bare.split("(")[0]) or name_key(bare) in known)


def name_key(name: str) -> str:
    """The part of a kernel name two profilers (torch.profiler's CUPTI records, Nsight Compute) print alike."""
    return name.strip()[:_COMPARED]


def looks_own(name: str) -> bool:
    """Best guess, without a backend to ask, whether a profiler row is user-written code."""
    return _LOOKS_LIBRARY.match(name.strip()) is None and name != "other"
