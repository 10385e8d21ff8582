"""`python -m kfoundry.cli verify` mirrors the verify tool: JSON on stdout, exit status from the state.

The tool subcommands' options are the request models' fields, parsed into the same models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from kfoundry import examples
from kfoundry.cli import MCP_ONLY, TOOL_COMMANDS, _parser, main, parse_request
from kfoundry.tools.requests import AnalyzeRequest, ProfileRequest
from kfoundry.verify.guardrails import Guardrails

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


def problem_files(tmp_path: Path) -> list[str]:
    reference_file, candidate_file = tmp_path / "reference.py", tmp_path / "candidate.py"
    reference_file.write_text(examples.source("elementwise"))
    candidate_file.write_text(SOLUTION)
    return ["--backend", "cpp", "--reference", str(reference_file), "--candidate", str(candidate_file)]


@pytest.mark.parametrize(("command", "request_model"), [(c, model) for c, (_, model) in TOOL_COMMANDS.items()])
def test_every_request_field_is_an_option_of_its_cli_command(command: str, request_model: type[BaseModel], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])

    usage = capsys.readouterr().out
    expected = {"profile": ["--run-id", "--text"]} if command == "analyze" else {}
    for name in request_model.model_fields:
        if name not in MCP_ONLY:
            for option in expected.get(name, ["--" + name.replace("_", "-")]):
                assert option in usage, (command, option)


def test_cli_options_parse_into_the_request_and_omitted_ones_keep_the_models_defaults(tmp_path: Path) -> None:
    guardrails_file = tmp_path / "guardrails.json"
    guardrails_file.write_text(json.dumps({"banned": ["torch\\.mm"]}))
    argv = ["profile", *problem_files(tmp_path), "--reps", "7", "--stress", "tiny", "--guardrails", str(guardrails_file), "--cuda-graph"]

    request = parse_request(_parser().parse_args(argv), ProfileRequest)

    expected = ProfileRequest(
        backend="cpp", reference=examples.source("elementwise"), candidate=SOLUTION, reps=7, stress=["tiny"],
        guardrails=Guardrails(banned=["torch\\.mm"]), cuda_graph=True,
    )
    assert request == expected
    assert (request.trials, request.warmup, request.precision) == (3, 3, "strict")


def test_cli_analyze_takes_a_run_id_as_the_profile_argument() -> None:
    args = _parser().parse_args(["analyze", "--run-id", "profile-20261121T101500-a1b2c3"])
    args.profile = args.run_id

    assert parse_request(args, AnalyzeRequest) == AnalyzeRequest(profile="profile-20261121T101500-a1b2c3")


def test_cli_rejects_an_out_of_range_option_naming_the_field_and_its_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", *problem_files(tmp_path), "--trials", "0", "--precision", "strict"])

    error = capsys.readouterr().err
    assert code == 1
    assert "trials: Input should be greater than or equal to 1 (got 0)" in error
    assert "errors.pydantic.dev" not in error and "VerifyRequest" not in error
