"""Names built at run time are caught by their structure, not by the string they spell."""

from __future__ import annotations

import pytest

from kfoundry.verify import ast_rules


def _rules(source: str) -> set[str]:
    return {h.rule for h in ast_rules.scan(source, "cpp") or []}


@pytest.mark.parametrize("line", [
    'f = getattr(builtins, "op" + "en")',
    'f = getattr(__builtins__, "".join(["o", "pen"]))',
    'f = getattr(os, name)',
    'f = getattr(sys, chr(109) + "odules")',
    'setattr(torch, "all" + "close", lambda *a, **k: True)',
    'm = __import__("o" + "s")',
    'm = importlib.import_module(name)',
    'f = getattr(__import__("os"), name)',
    'eval("1 + 1")',
    'exec(code)',
    'g = globals()[name]',
    'd = builtins.__dict__',
])
def test_a_name_computed_at_run_time_on_a_module_or_builtins_is_a_dynamic_name_hit(line: str) -> None:
    source = f"import builtins\nimport importlib\nimport os\nimport sys\nimport torch\nname = 'x'\ncode = ''\n{line}\n"

    hits = [h for h in ast_rules.scan(source, "cpp") or [] if h.rule == "dynamic_name"]

    assert hits and hits[0].line == 8 and hits[0].message


@pytest.mark.parametrize("line", [
    'fn = getattr(self_lib, "kernel_" + dtype)',
    'ok = getattr(torch, "float32")',
    'n = hasattr(builtins, "open")',
    'm = importlib.import_module("math")',
])
def test_computed_names_on_the_candidates_own_objects_and_literal_names_are_not_dynamic_name_hits(line: str) -> None:
    source = f"import builtins\nimport importlib\nimport torch\nself_lib = object()\ndtype = 'f32'\n{line}\n"

    assert "dynamic_name" not in _rules(source)


def test_dynamic_name_is_a_blocking_rule_by_default() -> None:
    assert ast_rules.RULES["dynamic_name"].severity == "block"
