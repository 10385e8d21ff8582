"""Bundled KernelBench-format problems, each with cpp, Triton, CUDA and Helion solutions (CuTe DSL and TileLang for some).

Each problem is a folder ``<name>/`` holding ``reference.py`` (KernelBench's ``Model`` /
``get_inputs`` / ``get_init_inputs``, at a size a CPU handles in milliseconds), ``reference_gpu.py``
(the same problem at a GPU size: hundreds of MB, where a GPU is bandwidth- or compute-bound rather
than launch-bound) and one candidate module per backend, named after the backend (``cpp.py``,
``triton.py``, ``cuda.py``, ``helion.py``, ``cute.py``, ``tilelang.py``), each defining ``ModelNew`` and correct at both sizes. The files are data: this
module reads them as text and never imports them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

_ROOT = Path(__file__).resolve().parent
REFERENCE = "reference"
#: the same problem at a size that keeps a GPU busy
REFERENCE_GPU = "reference_gpu"
#: Candidate files a problem folder may hold, by backend name.
BACKENDS: tuple[str, ...] = ("cpp", "triton", "cuda", "helion", "cute", "tilelang")

# name -> (title, description). Kept here rather than in reference.py so the references stay
# byte-for-byte in KernelBench's format.
_ABOUT: dict[str, tuple[str, str]] = {
    "elementwise": (
        "Scaled Swish",
        "y = x * sigmoid(x) * scale on a 256x512 fp32 tensor: one fused, memory-bound pass.",
    ),
    "softmax": (
        "Row softmax",
        "Softmax over the last dim of a 256x512 fp32 tensor: a row max, a row sum and a rescale, numerically stable.",
    ),
    "layernorm": (
        "LayerNorm with affine parameters",
        "nn.LayerNorm(512) on a 16x32x512 fp32 tensor; the learnable weight and bias live at ln.weight / ln.bias.",
    ),
    "matmul_epilogue": (
        "Linear + bias + ReLU",
        "relu(x @ W^T + b) for x 128x256 and an nn.Linear(256, 256) at linear.weight / linear.bias: a GEMM with a fused epilogue.",
    ),
    "reduction": (
        "Sum over a middle dimension",
        "torch.sum(x, dim=1, keepdim=True) on a 16x256x256 fp32 tensor: a strided reduction with contiguous inner lanes.",
    ),
    "rmsnorm_scale": (
        "RMSNorm with a learnable scale",
        "x * rsqrt(mean(x^2, -1) + eps) * weight on a 4x128x1024 fp32 tensor; the scale is the parameter `weight`.",
    ),
}


class ProblemInfo(BaseModel):
    name: str = Field(description="Folder name; pass it to source() and path().")
    title: str
    description: str
    solutions: list[str] = Field(description="Backends with a bundled solution (a correct ModelNew).")
    gpu_size: bool = Field(default=False, description="Whether part 'reference_gpu' (the problem at a GPU size) exists.")


def _names() -> list[str]:
    return sorted(p.name for p in _ROOT.iterdir() if (p / f"{REFERENCE}.py").is_file())


def problems() -> list[ProblemInfo]:
    """Every bundled problem, sorted by name."""
    found = []
    for name in _names():
        title, description = _ABOUT.get(name, (name, ""))
        solutions = [b for b in BACKENDS if (_ROOT / name / f"{b}.py").is_file()]
        found.append(ProblemInfo(name=name, title=title, description=description, solutions=solutions,
                                 gpu_size=(_ROOT / name / f"{REFERENCE_GPU}.py").is_file()))
    return found


def path(name: str, part: str = REFERENCE) -> Path:
    """Where ``part`` ("reference", "reference_gpu" or a backend name) of problem ``name`` lives.

    Raises:
        KeyError: no such problem, or the problem has no such part; the message lists what exists.
    """
    names = _names()
    if name not in names:
        raise KeyError(f"unknown problem {name!r}; known problems: {', '.join(names)}")
    parts = [REFERENCE, *(p for p in (REFERENCE_GPU, *BACKENDS) if (_ROOT / name / f"{p}.py").is_file())]
    if part not in parts:
        raise KeyError(f"problem {name!r} has no part {part!r}; it has: {', '.join(parts)}")
    return _ROOT / name / f"{part}.py"


def source(name: str, part: str = REFERENCE) -> str:
    """The text of ``part`` ("reference", "reference_gpu" or a backend name) of problem ``name``.

    Raises:
        KeyError: no such problem, or the problem has no such part; the message lists what exists.
    """
    return path(name, part).read_text(encoding="utf-8")
