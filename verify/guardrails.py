"""Static rules over candidate source: AST rules with per-rule severity, plus required/banned regexes.

Configuration, lowest precedence first: the rule defaults (``ast_rules.RULES``), the
backend's defaults (``Backend.rule_defaults``), the JSON file named by ``KFOUNDRY_GUARDRAILS``
(same fields as ``Guardrails``, plus an optional ``"backends": {"cpp": {...}}`` section), then
the tool arguments. ``rules`` also sets the severity of the worker's runtime checks
(e.g. ``{"torch_compute": "warn"}`` to allow library calls beside the kernel).

``check`` also takes the run's precision policy (``verify.precision``; strict when not
given): reduced-precision uses the policy allows are not findings.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from kfoundry.backends import REGISTRY, get_backend
from kfoundry.backends.base import Backend, Severity
from kfoundry.schema import Finding
from kfoundry.verify import ast_rules
from kfoundry.verify.precision_rules import KIND_NAMES

if TYPE_CHECKING:
    from kfoundry.verify.precision import Policy

CONFIG_ENV = "KFOUNDRY_GUARDRAILS"

#: runtime checks reported by the worker, with their default severity
RUNTIME_RULES: dict[str, Severity] = {
    "output_alias": "block",
    "thread_leak": "block",
    "process_leak": "block",
    "numerics_flags": "block",
    "monkeypatch_runtime": "block",
    "stale_memory": "block",
    "replay": "block",
    "constant_output": "block",
    "torch_compute": "block",
    "kernel_coverage": "block",
    "timed_output": "block",
    "late_work": "block",
}


class Guardrails(BaseModel):
    """Pattern rules applied to the candidate source before it runs, and severities of every check."""

    required: list[str] = Field(default_factory=list, description="Regexes the candidate must match (each one).")
    banned: list[str] = Field(default_factory=list, description="Regexes the candidate must not match.")
    backend_marker: bool = Field(default=True, description="Require the backend's marker (e.g. load_cpp( or @triton.jit).")
    rules: dict[str, Severity] = Field(
        default_factory=dict,
        description="Severity per rule id (block, warn or off), overriding the defaults. Static: "
        + ", ".join(ast_rules.RULES) + ". Runtime: " + ", ".join(RUNTIME_RULES) + ".",
    )
    allow_torch_ops: list[str] = Field(
        default_factory=list, description="aten op names (e.g. 'mm', 'addmm') the candidate's forward may call beside its kernel."
    )
    min_own_kernel_share: float = Field(
        default=0.5, ge=0, le=1,
        description="GPU profile: least share of device time in this backend's own kernels "
        "(library kernels of allow_torch_ops count as allowed).",
    )

    @field_validator("required", "banned")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return patterns

    @field_validator("rules")
    @classmethod
    def _known(cls, rules: dict[str, str]) -> dict[str, str]:
        unknown = [r for r in rules if r not in ast_rules.RULES and r not in RUNTIME_RULES]
        if unknown:
            raise ValueError(f"unknown rule id(s) {unknown}; known: {sorted([*ast_rules.RULES, *RUNTIME_RULES])}")
        return rules

    def severity(self, rule: str, backend: str | None = None) -> Severity:
        if rule in self.rules:
            return self.rules[rule]
        own = get_backend(backend).rule_defaults if backend in REGISTRY else {}
        if rule in own:
            return own[rule]
        if rule == "backend_marker" and not self.backend_marker:
            return "off"
        if rule in ast_rules.RULES:
            return ast_rules.RULES[rule].severity
        return RUNTIME_RULES.get(rule, "block")

    def finding(self, rule: str, message: str, backend: str | None = None) -> Finding | None:
        """A finding for ``rule`` at its configured severity; None when the rule is off."""
        level = self.severity(rule, backend)
        if level == "off":
            return None
        return Finding(code=rule, message=message, blocking=level == "block")


def _file_config(backend: str | None) -> dict[str, Any]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{CONFIG_ENV}={path}: cannot read the guardrails config: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_ENV}={path}: the config must be a JSON object")
    sections = data.pop("backends", {}) or {}
    own = sections.get(backend, {}) if backend else {}
    return _merge_dicts(data, own)


def _merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if key in ("required", "banned", "allow_torch_ops"):
            merged[key] = [*merged.get(key, []), *value]
        elif key == "rules":
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def effective(arguments: Guardrails | None, backend: str | None = None) -> Guardrails:
    """The config file's rules (if any) merged with the tool arguments' (arguments win)."""
    base = _file_config(backend)
    if arguments is None:
        return Guardrails.model_validate(base)
    given = arguments.model_dump(include=arguments.model_fields_set)
    return Guardrails.model_validate(_merge_dicts(base, given))


def _line_of(source: str, match: re.Match[str]) -> int:
    return source.count("\n", 0, match.start()) + 1


def _advice(kind: str) -> str:
    from kfoundry.verify.precision import POLICIES

    # The least relaxed policy that allows the kind is the one to suggest.
    fit = next((q.name for q in POLICIES.values() if q.allows_kind(kind)), None)
    if fit is None:
        return f"no precision policy allows {KIND_NAMES.get(kind, kind)}: compute in a wider type"
    return f"pass precision='{fit}' if that is intended"


def _precision_message(hit: ast_rules.Hit, p: Policy) -> str:
    if p.relaxed:
        return f"{hit.message}, below the declared precision '{p.name}'; {_advice(hit.kind)}"
    return f"{hit.message} but precision policy 'strict' allows no reduced precision; {_advice(hit.kind)}"


def check(source: str, backend: Backend, rules: Guardrails, precision: Policy | str | None = None) -> list[Finding]:
    """Static findings for ``source``; ``precision`` (a policy or its name, None for strict) decides
    which reduced-precision uses are allowed.

    Raises:
        ValueError: for an unknown precision policy name.
    """
    from kfoundry.verify.precision import policy  # imports torch: only where candidates are checked

    declared = policy(precision)
    findings: list[Finding] = []
    hits = ast_rules.scan(source, backend)
    if hits is None:
        # Does not parse: the worker reports the syntax error; only the regex marker can be checked here.
        if rules.backend_marker and not any(re.search(p, source) for p in backend.required_patterns):
            findings.append(Finding(code="backend_marker", message=f"no {backend.name} kernel found: the candidate must use {backend.marker}"))
        hits = []
    seen: set[tuple[str, int, str]] = set()
    for hit in hits:
        if hit.kind and declared.allows_kind(hit.kind) and hit.rule in ("precision_downcast", "precision_flags"):
            continue
        if (hit.rule, hit.line, hit.kind) in seen:
            continue
        seen.add((hit.rule, hit.line, hit.kind))
        where = f"candidate.py:{hit.line}: " if hit.line else ""
        if hit.rule == "backend_marker":
            message = f"{where}no {backend.name} kernel found: {hit.message}; the candidate must use {backend.marker}"
        elif hit.rule == "precision_downcast":
            message = f"{where}{_precision_message(hit, declared)}"
        else:
            message = f"{where}{hit.message} [{hit.rule}: {ast_rules.RULES[hit.rule].summary}]"
            if hit.kind:
                message += f"; {_advice(hit.kind)}"
        finding = rules.finding(hit.rule, message, backend.name)
        if finding is not None:
            findings.append(finding)
    for pattern in rules.required:
        if not re.search(pattern, source, re.M):
            findings.append(Finding(code="required_pattern", message=f"required pattern {pattern!r} not found"))
    for pattern in rules.banned:
        m = re.search(pattern, source, re.M)
        if m:
            findings.append(Finding(code="banned_pattern", message=f"banned pattern {pattern!r} at candidate.py:{_line_of(source, m)}"))
    return findings
