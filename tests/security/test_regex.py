"""Caller-supplied guardrail patterns cannot stall the server: they run on RE2, in linear time.

A backtracking engine (Python's ``re``) takes about 2^n steps for ``(a+)+$`` against n letters
'a' and a '!' (28 letters took 23 s); the inputs below are thousands of times longer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from kfoundry.backends import get_backend
from kfoundry.errors import BadRequest
from kfoundry.tools.requests import VerifyRequest, explain
from kfoundry.verify.guardrails import MATCH_BUDGET, Guardrails, check, effective

#: far beyond what backtracking finishes (hours at 40 letters), far below RE2's linear cost
BOUND_S = 10.0
CATASTROPHIC = [r"(a+)+$", r"^(a|a)*$", r"(a*)*b", r"(\w+\s?)+$"]


def _codes(source: str, rules: Guardrails) -> list[str]:
    return [f.code for f in check(source, get_backend("cpp"), rules)]


def _rejection(guardrails: dict) -> str:
    with pytest.raises(ValidationError) as raised:
        VerifyRequest.model_validate({"backend": "cpp", "reference": "class Model: ...", "candidate": "class ModelNew: ...", "guardrails": guardrails})
    return explain(raised.value, VerifyRequest)


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_catastrophic_pattern_over_a_long_run_of_letters_is_checked_within_the_bound(pattern: str) -> None:
    source = "a" * 200_000 + "!"
    rules = Guardrails(required=[pattern], banned=[pattern])
    _codes("x = 1\n", Guardrails())  # imports torch outside the timed call

    start = time.perf_counter()
    codes = _codes(source, rules)
    elapsed = time.perf_counter() - start

    assert elapsed < BOUND_S, f"{pattern!r} took {elapsed:.1f} s"
    assert "required_pattern" in codes and "banned_pattern" not in codes


@pytest.mark.parametrize(("guardrails", "where", "says"), [
    ({"banned": [r"(a)\1"]}, "guardrails.banned[0]", "uses backreferences, not allowed here"),
    ({"banned": ["ok", r"(?P<x>a)(?P=x)"]}, "guardrails.banned[1]", "uses backreferences"),
    ({"required": [r"load_cpp(?!\s*#)"]}, "guardrails.required[0]", "uses look-around assertions"),
    ({"required": [r"(?<=x)y"]}, "guardrails.required[0]", "uses look-around assertions"),
    ({"banned": [r"(?>a+)b"]}, "guardrails.banned[0]", "uses atomic groups"),
    ({"banned": [r"a++b"]}, "guardrails.banned[0]", "uses possessive quantifiers"),
    ({"banned": [r"end\Z"]}, "guardrails.banned[0]", r"RE2 writes the end of the text as \z"),
    ({"banned": [r"x{5000}"]}, "guardrails.banned[0]", "a repeat count above 1000"),
    ({"banned": [r"[ab]{999}[cd]{999}"]}, "guardrails.banned[0]", "RE2 instructions; the limit is"),
    ({"banned": ["("]}, "guardrails.banned[0]", "invalid regex '('"),
])
def test_a_pattern_the_linear_engine_cannot_run_is_rejected_on_arrival_naming_the_field(guardrails: dict, where: str, says: str) -> None:
    message = _rejection(guardrails)

    assert f"invalid argument {where}: " in message and says in message, message
    assert "Value error" not in message


def test_more_patterns_than_the_limit_are_rejected_on_arrival() -> None:
    message = _rejection({"banned": [f"word{i}" for i in range(1000)]})

    assert "guardrails.banned" in message and "at most 64" in message, message


def test_a_pattern_in_the_config_file_that_needs_backtracking_is_an_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "guardrails.json"
    config.write_text(json.dumps({"backends": {"cpp": {"banned": [r"(omp)\s+\1"]}}}))
    monkeypatch.setenv("KFOUNDRY_GUARDRAILS", str(config))

    with pytest.raises(ValueError, match=r"guardrails.json: banned\.0: pattern .* uses backreferences"):
        effective(None, "cpp")
    assert effective(None, "triton").banned == []


def test_patterns_too_costly_for_the_candidate_size_are_a_bad_request_naming_the_budget() -> None:
    rules = Guardrails(banned=[r"[ab]*a[ab]{999}c"])
    source = "x = 1\n" + "#" * (MATCH_BUDGET // 1000) + "\n"

    with pytest.raises(BadRequest, match=r"guardrails: .* RE2 instructions.* exceeds the server's budget"):
        check(source, get_backend("cpp"), rules)


def test_ordinary_required_and_banned_patterns_still_match_with_lines_counted_past_non_ascii_text() -> None:
    source = '# é ü 日本\nimport torch\n\n#pragma omp   parallel for\n'
    rules = Guardrails(required=[r"^import torch$", r"(?i)CUBLAS"], banned=[r"omp\s+parallel", r"\bthreading\b"])

    findings = check(source, get_backend("cpp"), rules)

    assert [(f.code, f.message) for f in findings if f.code.endswith("_pattern")] == [
        ("required_pattern", "required pattern '(?i)CUBLAS' not found"),
        ("banned_pattern", r"banned pattern 'omp\\s+parallel' at candidate.py:4"),
    ]
