"""Judge a candidate on one input family without the server: the candidate runs in a child process.

The server's verify only accepts the families its request schema lists; these tests exercise
the families and the strict numerics on their own. The candidate gets its own process because
what it loads can change process-wide state (a library built with -ffast-math turns on
flush-to-zero for every thread of the process that loads it), which must not reach the
reference computed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

from kfoundry.verify import precision as numerics
from kfoundry.verify.compare import Oracle, Verdict, judge
from kfoundry.verify.stress import STANDARD, stressed

_CHILD = """
import sys, types
import torch
data = torch.load(sys.argv[1])
module = types.ModuleType("candidate")
exec(compile(open(sys.argv[2]).read(), "candidate.py", "exec"), module.__dict__)
torch.manual_seed(data["init_seed"])
model = module.ModelNew(*data["init"])
with torch.no_grad():
    out = model(*data["inputs"])
torch.save(list(out) if isinstance(out, (list, tuple)) else [out], sys.argv[3])
"""


def _module(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)  # trusted test problem text
    return module


def run_candidate(candidate: str, init: list[Any], inputs: list[Any], workdir: Path, init_seed: int = 0) -> list[torch.Tensor]:
    """The candidate's outputs for ``inputs``, computed in a child Python process."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "candidate.py").write_text(candidate)
    torch.save({"init": init, "inputs": inputs, "init_seed": init_seed}, workdir / "in.pt")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(workdir / "in.pt"), str(workdir / "candidate.py"), str(workdir / "out.pt")],
        capture_output=True, text=True, timeout=180, env={**os.environ}, check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return torch.load(workdir / "out.pt")


def judge_family(reference: str, candidate: str, family: str, workdir: Path, seed: int = 1234) -> Verdict:
    """The strict verdict of one trial on ``family``'s inputs: the candidate against the reference and the float64 oracle."""
    problem = _module(reference, "reference")
    torch.manual_seed(0)
    init = list(problem.get_init_inputs())
    torch.manual_seed(0)
    model = problem.Model(*init).eval()
    torch.manual_seed(seed)
    inputs = stressed(list(problem.get_inputs()), family, seed) if family != STANDARD else list(problem.get_inputs())
    with torch.no_grad():
        expected = model(*inputs)
        oracle = numerics.oracle_model(model)(*numerics.oracle_inputs(inputs))
    got = run_candidate(candidate, init, [v.clone() if isinstance(v, torch.Tensor) else v for v in inputs], workdir)
    expected_list = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    oracle_list = list(oracle) if isinstance(oracle, (list, tuple)) else [oracle]
    return judge([expected_list], [[(g, True, "Tensor") for g in got]], None, None, Oracle(oracle={0: oracle_list}, fine=family == STANDARD))
