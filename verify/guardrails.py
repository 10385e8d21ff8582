"""Static rules over candidate source: AST rules with per-rule severity, plus required/banned regexes.

Configuration, lowest precedence first: the rule defaults (``ast_rules.RULES``), the
backend's defaults (``Backend.rule_defaults``), the JSON file named by ``KFOUNDRY_GUARDRAILS``
(same fields as ``Guardrails``, plus an optional ``"backends": {"cpp": {...}}`` section), then
the tool arguments. ``rules`` also sets the severity of the worker's runtime checks
(e.g. ``{"torch_compute": "warn"}`` to allow library calls beside the kernel).

``check`` also takes the run's precision policy (``verify.precision``; strict when not
given): reduced-precision uses the policy allows are not findings.

``required``/``banned`` come from callers and run in the server process, so they run on RE2,
whose matching time is linear in the candidate's size times the pattern's compiled size,
never exponential. Python syntax RE2 leaves out (backreferences, look-around, ...) is
rejected when the request arrives, naming the pattern; so is a pattern that compiles too
large, and ``check`` refuses patterns whose total size times the candidate's exceeds
``MATCH_BUDGET``. The backends' own patterns are trusted and stay on ``re``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import re2
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from kfoundry.backends import REGISTRY, get_backend
from kfoundry.backends.base import Backend, Severity
from kfoundry.errors import BadRequest
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


#: most RE2 instructions one caller pattern may compile to (``\p{L}+`` is about 1200)
MAX_PROGRAM = 2000
#: most patterns in ``required``, and in ``banned``
MAX_PATTERNS = 64
#: most (RE2 instructions of all patterns) x (candidate bytes) one check matches: about a second
#: where RE2 must fall back to its NFA (some 8 ns per byte and instruction), milliseconds on its DFA
MATCH_BUDGET = 1 << 27

#: RE2's errors for Python syntax it leaves out on purpose: what the pattern uses, and what to do instead
_UNSUPPORTED = [(re.compile(error), what, instead) for error, what, instead in (
    (r"escape sequence: \\[1-9]|\(\?P$", "backreferences", "match the repeated text itself"),
    (r"\(\?<?[=!]", "look-around assertions", "match the surrounding text too, or ban the form you want to exclude"),
    (r"\(\?>", "atomic groups", "use a plain group"),
    (r"repetition operator: \S*\+$", "possessive quantifiers", "use the plain quantifier"),
    (r"\(\?\(", "conditional groups", "send one pattern per alternative"),
    (r"escape sequence: \\Z", "\\Z", "RE2 writes the end of the text as \\z"),
    (r"repetition size", "a repeat count above 1000", "use a smaller count"),
    (r"\(\?[#xauL]", "a (?x), (?a), (?u) or (?L) flag or a (?#...) comment", "remove it; RE2 takes the i, m and s flags"),
)]


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = 1 << 20  # per pattern: its program and its DFA cache (the module caches 128 patterns)
    options.never_capture = True
    options.log_errors = False
    return options


_OPTIONS = _options()


def _compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2, with ``^``/``$`` matching at line ends as ``re.M`` does."""
    return re2.compile(f"(?m){pattern}", _OPTIONS)


def _unsupported(pattern: str, error: re2.error) -> str:
    reason = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else str(error)
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex {pattern!r}: {exc}"
    for matches, what, instead in _UNSUPPORTED:
        if matches.search(reason):
            return f"pattern {pattern!r} uses {what}, not allowed here: patterns run on RE2 (linear time, no backtracking); {instead}"
    return f"pattern {pattern!r} is not supported by RE2, the linear-time engine patterns run on: {reason}"


def _linear(pattern: str) -> str:
    """``pattern``, once RE2 compiles it within ``MAX_PROGRAM`` instructions.

    Raises:
        ValueError: naming the pattern and what it uses that RE2 does not support, or its size.
    """
    try:
        size = _compiled(pattern).programsize
    except re2.error as exc:
        raise ValueError(_unsupported(pattern, exc)) from None
    if size > MAX_PROGRAM:
        raise ValueError(f"pattern {pattern!r} compiles to {size} RE2 instructions; the limit is {MAX_PROGRAM}: "
                         "use smaller repeat counts, fewer alternatives or narrower classes")
    return pattern


Regex = Annotated[str, AfterValidator(_linear)]
_SYNTAX = " RE2 syntax (as Python's re, without backreferences or look-around); ^ and $ match at line ends."


class Guardrails(BaseModel):
    """Pattern rules applied to the candidate source before it runs, and severities of every check."""

    required: list[Regex] = Field(
        default_factory=list, max_length=MAX_PATTERNS, description="Regexes the candidate must match (each one)." + _SYNTAX
    )
    banned: list[Regex] = Field(default_factory=list, max_length=MAX_PATTERNS, description="Regexes the candidate must not match." + _SYNTAX)
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
        description="Least share of forward's time in the candidate's own kernels: GPU profile, device time "
        "(library kernels of allow_torch_ops count as allowed); CPU verify, sampled CPU time (torch counts as allowed if allow_torch_ops is set).",
    )

    nsight_attribution: bool = Field(
        default=False,
        description="GPU profile: also run the candidate under Nsight Compute, which records one judged call's kernels from "
        "outside the sandbox, and hold that share to min_own_kernel_share (kernel_coverage); the candidate can neither "
        "rename its kernels nor reach that record. Adds one worker run (about 20 s). A run that cannot be made here "
        "(no ncu) is a kernel_coverage finding.",
    )

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
    merged = _merge_dicts(data, own)
    try:
        Guardrails.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors(include_url=False))
        raise ValueError(f"{CONFIG_ENV}={path}: {problems}") from None
    return merged


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


def _patterns(source: bytes, rules: Guardrails) -> list[Finding]:
    """Findings of ``rules.required``/``banned`` over ``source`` (UTF-8), once their cost is within ``MATCH_BUDGET``.

    Raises:
        BadRequest: the patterns' total RE2 size times the candidate's bytes exceeds the budget.
    """
    required = [(p, _compiled(p)) for p in rules.required]
    banned = [(p, _compiled(p)) for p in rules.banned]
    size = sum(r.programsize for _, r in required + banned)
    if size * len(source) > MATCH_BUDGET:
        raise BadRequest(
            f"guardrails: the required and banned patterns compile to {size} RE2 instructions, and matching them over a "
            f"{len(source)}-byte candidate exceeds the server's budget of {MATCH_BUDGET} instruction-bytes; "
            "send fewer or simpler patterns, or a smaller candidate"
        )
    findings = [Finding(code="required_pattern", message=f"required pattern {p!r} not found") for p, r in required if r.search(source) is None]
    for p, r in banned:
        m = r.search(source)
        if m is not None:
            line = source.count(b"\n", 0, m.start()) + 1
            findings.append(Finding(code="banned_pattern", message=f"banned pattern {p!r} at candidate.py:{line}"))
    return findings


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
        BadRequest: ``rules``' patterns would cost more than ``MATCH_BUDGET`` over ``source``.
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
    return findings + _patterns(source.encode("utf-8", errors="replace"), rules)
