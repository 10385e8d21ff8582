"""Candidate modules for the MCP-level tests, as the source strings a client would send.

All of them target the bundled ``elementwise`` problem (``y = x * sigmoid(x) * scale`` on a
256x512 fp32 tensor, ``Model(scale_factor)``). Every hostile candidate carries a real
``load_cpp`` kernel, so it passes the cpp backend's marker check and reaches the worker.
"""

from __future__ import annotations

from textwrap import dedent, indent

from kfoundry import examples

REFERENCE = examples.source("elementwise")
CORRECT_CPP = examples.source("elementwise", "cpp")
CORRECT_TRITON = examples.source("elementwise", "triton")
NEWMODEL_CPP = CORRECT_CPP.replace("class ModelNew(", "class NewModel(")
ROWS, COLS = 256, 512

_PRELUDE = '''\
import os
import sys

import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>
extern "C" void swish_scale(const float* x, float* y, int64_t n, float scale) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i])) * scale;
}
""")


def swish(x, scale):
    x = x.contiguous()
    y = torch.empty_like(x)
    _lib.swish_scale(x, y, x.numel(), float(scale))
    return y
'''


def _candidate(forward_body: str, extra: str = "") -> str:
    """The prelude's kernel wrapped in a ModelNew whose forward runs ``forward_body``."""
    body = indent(dedent(forward_body).strip(), " " * 8)
    return (
        f"{_PRELUDE}\n{dedent(extra)}\n\n"
        "class ModelNew(nn.Module):\n"
        "    def __init__(self, scale_factor):\n"
        "        super().__init__()\n"
        "        self.scale_factor = scale_factor\n\n"
        "    def forward(self, x):\n"
        f"{body}\n"
    )


# -- correct through the prelude's own kernel ---------------------------------------------
PRELUDE_CORRECT = _candidate("return swish(x, self.scale_factor)")

KERNELBENCH_LOAD_INLINE = '''\
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = """
#include <torch/extension.h>
#include <cmath>

torch::Tensor swish_scale(torch::Tensor x, double scale) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const float* xp = xc.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const float s = static_cast<float>(scale);
    for (int64_t i = 0; i < xc.numel(); ++i) yp[i] = xp[i] / (1.0f + std::exp(-xp[i])) * s;
    return y;
}
"""

swish_ext = load_inline(name="kfoundry_test_swish", cpp_sources=cpp_source, functions=["swish_scale"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return swish_ext.swish_scale(x, float(self.scale_factor))
'''

# -- compile-time failures ----------------------------------------------------------------
CPP_SYNTAX_ERROR = '''\
import torch
import torch.nn as nn
from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>
extern "C" void twice(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * undeclared_factor;
}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        y = torch.empty_like(x)
        _lib.twice(x, y, x.numel())
        return y
'''
CPP_ERROR_LINE = CPP_SYNTAX_ERROR.splitlines().index("    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * undeclared_factor;") + 1

PYTHON_SYNTAX_ERROR = PRELUDE_CORRECT.replace("    def forward(self, x):", "    def forward(self, x)")
PYTHON_ERROR_LINE = PYTHON_SYNTAX_ERROR.splitlines().index("    def forward(self, x)") + 1

NO_MODELNEW = PRELUDE_CORRECT.replace("class ModelNew(", "class FasterSwish(")

# -- mismatches ---------------------------------------------------------------------------
WRONG_VALUES = _candidate(
    """
    y = swish(x, self.scale_factor)
    y.view(-1)[5:10] += 0.5
    return y
    """
)
WRONG_SHAPE = _candidate("return swish(x, self.scale_factor)[:, :-1]")
WRONG_DTYPE = _candidate("return swish(x, self.scale_factor).double()")
NAN_OUTPUT = _candidate(
    """
    y = swish(x, self.scale_factor)
    y[3, 7] = float("nan")
    return y
    """
)

# -- runtime errors and hostile processes -------------------------------------------------
RAISES = _candidate('raise ValueError("boom: the kernel lost its way")')
SEGFAULT = _candidate(
    """
    import ctypes
    ctypes.string_at(0)
    return swish(x, self.scale_factor)
    """
)
EXIT_3 = _candidate(
    """
    os._exit(3)
    return swish(x, self.scale_factor)
    """
)
SYS_EXIT = _candidate(
    """
    sys.exit()
    return swish(x, self.scale_factor)
    """
)
INFINITE_LOOP = _candidate(
    """
    while True:
        pass
    """
)
MEMORY_HOG = _candidate(
    """
    hoard = []
    while True:
        hoard.append(bytes(256 << 20))
    """
)


FORK_BOMB = _candidate(
    """
    os.write(1, f"forked {os.getpid()}\\n".encode())
    while True:
        try:
            if os.fork() == 0:
                os.write(1, f"forked {os.getpid()}\\n".encode())
        except OSError:
            pass
    """
)
"""Forks until the sandbox's process cap; every process writes its pid to stdout (kept in the run's logs) first."""


STDOUT_FLOOD = _candidate(
    """
    chunk = "x" * (1 << 20)
    while True:
        sys.stdout.write(chunk)
    """
)

# -- rejected -----------------------------------------------------------------------------
NO_BACKEND_MARKER = """\
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return x * torch.sigmoid(x) * self.scale_factor
"""
TENSOR_SUBCLASS_OUTPUT = _candidate(
    "return swish(x, self.scale_factor).as_subclass(Sneaky)",
    extra="""
    class Sneaky(torch.Tensor):
        pass
    """,
)
NON_TENSOR_OUTPUT = _candidate("return swish(x, self.scale_factor).numpy()")
MUTATES_INPUT = _candidate(
    """
    y = swish(x, self.scale_factor)
    x.zero_()
    return y
    """
)
