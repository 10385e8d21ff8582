"""`python -m kfoundry.cli verify` mirrors the verify tool: JSON on stdout, exit status from the state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kfoundry import examples

SOLUTION = examples.source("elementwise", "cpp")


def cli_verify(tmp_path: Path, candidate: str) -> subprocess.CompletedProcess[str]:
    reference_file = tmp_path / "reference.py"
    candidate_file = tmp_path / "candidate.py"
    reference_file.write_text(examples.source("elementwise"))
    candidate_file.write_text(candidate)
    command = [sys.executable, "-m", "kfoundry.cli", "verify", "--backend", "cpp", "--reference", str(reference_file), "--candidate", str(candidate_file), "--json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)


def test_cli_verify_prints_a_correct_json_result_and_exits_zero(tmp_path: Path) -> None:
    done = cli_verify(tmp_path, SOLUTION)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "correct"
    assert result["trials_passed"] == result["trials"] == 5


def test_cli_verify_of_a_mismatching_candidate_exits_non_zero(tmp_path: Path) -> None:
    doubled = SOLUTION.replace("float(self.scale_factor)", "2.0 * float(self.scale_factor)")
    assert doubled != SOLUTION

    done = cli_verify(tmp_path, doubled)

    assert done.returncode != 0
    result = json.loads(done.stdout)
    assert result["state"] == "mismatch"
    assert result["mismatch"]["reason"] == "values"
