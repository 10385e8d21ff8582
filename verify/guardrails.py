"""Static rules over candidate source: required and banned regular expressions."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from kfoundry.backends.base import Backend
from kfoundry.schema import Finding


class Guardrails(BaseModel):
    """Pattern rules applied to the candidate source before it runs."""

    required: list[str] = Field(default_factory=list, description="Regexes the candidate must match (each one).")
    banned: list[str] = Field(default_factory=list, description="Regexes the candidate must not match.")
    backend_marker: bool = Field(default=True, description="Require the backend's marker (e.g. load_cpp( or @triton.jit).")

    @field_validator("required", "banned")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return patterns


def _line_of(source: str, match: re.Match[str]) -> int:
    return source.count("\n", 0, match.start()) + 1


def check(source: str, backend: Backend, rules: Guardrails) -> list[Finding]:
    findings: list[Finding] = []
    if rules.backend_marker and not any(re.search(p, source) for p in backend.required_patterns):
        findings.append(Finding(code="backend_marker", message=f"no {backend.name} kernel found: the candidate must use {backend.marker}"))
    for pattern in rules.required:
        if not re.search(pattern, source, re.M):
            findings.append(Finding(code="required_pattern", message=f"required pattern {pattern!r} not found"))
    for pattern in rules.banned:
        m = re.search(pattern, source, re.M)
        if m:
            findings.append(Finding(code="banned_pattern", message=f"banned pattern {pattern!r} at candidate.py:{_line_of(source, m)}"))
    return findings
