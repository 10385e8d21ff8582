"""Jinja2 prompt templates and per-backend one-shot examples.

``render(name, **context)`` fills one of ``TEMPLATES``. Each needs the variables in
``REQUIRED[name]`` (a missing one raises ``jinja2.UndefinedError``); all of them share

    reference                           the problem's KernelBench source (Model, get_inputs, get_init_inputs)
    backend, marker, notes              target backend name, its Backend.marker and Backend.notes
    oneshot_reference, oneshot_solution a worked pair for that backend: ``oneshot(backend)`` (from Backend.oneshot)

and accept the optional variables in ``OPTIONAL`` (device, atol/rtol, guardrails, extra, and
per-template extras such as the failure fields of ``fix``). Structured values may be the
``kfoundry.schema`` models or their dicts; enums render as their values.
"""

from __future__ import annotations

import ast
import re
from enum import Enum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined
from pydantic import BaseModel

from kfoundry.schema import ErrorDetail, Finding, MismatchDetail, ProblemAnalysis

if TYPE_CHECKING:
    from kfoundry.backends.base import Backend

_HERE = Path(__file__).resolve().parent
_TEMPLATE_DIR = _HERE / "templates"
_ONESHOT_DIR = _HERE / "oneshot"

_COMMON = ("reference", "backend", "marker", "notes", "oneshot_reference", "oneshot_solution")
REQUIRED: dict[str, tuple[str, ...]] = {
    "generate": _COMMON,
    "fix": (*_COMMON, "candidate", "state"),
    "optimize": (*_COMMON, "candidate", "digest", "recommendation"),
    "translate": (*_COMMON, "source_backend", "source_candidate"),
}
TEMPLATES: list[str] = list(REQUIRED)

#: Optional variables and the value a template sees when the caller leaves one out.
OPTIONAL: dict[str, Any] = {
    # every template
    "device": None,  # str: the device candidates run on, e.g. "NVIDIA H100 80GB HBM3"
    "atol": None,  # float: verification tolerances, shown when given
    "rtol": None,
    "guardrails": [],  # list[str]: extra rules enforced for this run
    "extra": None,  # str: caller's instructions, rendered last
    # generate
    "analysis": None,  # ProblemAnalysis: ops, shapes, FLOPs, bytes, speed of light
    # fix
    "attempt": None,  # int: how many fixes were tried already
    "diagnostics": [],  # list[str]: "file:line: severity: message"
    "error": None,  # ErrorDetail
    "mismatch": None,  # MismatchDetail
    "findings": [],  # list[Finding]
    # optimize
    "bottleneck": None,  # Bottleneck or str
    "evidence": [],  # list[str]
    "history": [],  # list[str]: one line per earlier optimization attempt and its outcome
    # translate
    "source_notes": None,  # str: the source backend's notes
}

_MODELS: dict[str, type[BaseModel]] = {"analysis": ProblemAnalysis, "error": ErrorDetail, "mismatch": MismatchDetail}
_BACKTICKS = re.compile(r"`{3,}")


def _require(value: Any) -> None:
    # Filters receive a missing variable as an Undefined object; str() on a StrictUndefined
    # raises the UndefinedError that names it, instead of a TypeError deep inside the filter.
    if isinstance(value, Undefined):
        str(value)


def _fenced(text: str, lang: str = "python") -> str:
    """A Markdown code block whose fence is longer than any backtick run inside ``text``."""
    _require(text)
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(text)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _si(value: float, unit: str = "") -> str:
    _require(value)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _shape(shape: list[int] | tuple[int, ...]) -> str:
    _require(shape)
    return str(tuple(shape))


def _tail(text: str, lines: int = 30) -> str:
    _require(text)
    # Tracebacks and logs matter most at the end; the head is usually harness frames.
    kept = text.rstrip().splitlines()
    return "\n".join(kept[-lines:])


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATE_DIR),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_plain,
    )
    env.filters.update(fenced=_fenced, si=_si, shape=_shape, tail=_tail)
    return env


def _coerce(key: str, value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if key in _MODELS and isinstance(value, dict):
        return _MODELS[key].model_validate(value)
    if key == "findings":
        return [Finding.model_validate(f) if isinstance(f, dict) else f for f in value]
    return value


def render(template: str, **context: Any) -> str:
    """Render prompt ``template`` ("generate", "fix", "optimize" or "translate"; ".j2" optional).

    Raises:
        KeyError: ``template`` is not one of ``TEMPLATES``.
        jinja2.UndefinedError: a variable in ``REQUIRED[template]`` is missing.
        pydantic.ValidationError: a structured value (analysis, error, mismatch, findings) is malformed.
    """
    name = template.removesuffix(".j2")
    if name not in REQUIRED:
        raise KeyError(f"unknown prompt template {template!r}; known templates: {', '.join(TEMPLATES)}")
    values = {**OPTIONAL, **{key: _coerce(key, value) for key, value in context.items()}}
    return _environment().get_template(f"{name}.j2").render(**values)


def failure_context(result: Any) -> dict[str, Any]:
    """The ``fix`` template's failure variables taken from a compile, verify or profile result.

    Gives state, diagnostics, error, mismatch and findings, plus atol/rtol when the result has them.
    """
    verify = getattr(result, "verify", None)
    mismatch = getattr(result, "mismatch", None) or getattr(verify, "mismatch", None)
    findings = [*getattr(result, "findings", []), *getattr(verify, "findings", [])]
    context: dict[str, Any] = {
        "state": result.state,
        "diagnostics": list(getattr(result, "diagnostics", []) or getattr(verify, "diagnostics", [])),
        "error": result.error or getattr(verify, "error", None),
        "mismatch": mismatch,
        "findings": findings,
    }
    # Only when measured, so a caller's own atol/rtol keyword does not collide with a None.
    for key in ("atol", "rtol"):
        value = getattr(result, key, None)
        if value is None:
            value = getattr(verify, key, None)
        if value is not None:
            context[key] = value
    return context


def oneshot_backends() -> list[str]:
    """Backends that have a one-shot example."""
    return sorted(p.stem for p in _ONESHOT_DIR.glob("*.py"))


def oneshot(backend: str | Backend) -> tuple[str, str]:
    """The one-shot example for ``backend`` as (reference source, solution source).

    A backend object names its own example file (``Backend.oneshot``); a name is looked up
    among the bundled ones. The file is parsed, never imported: its solution may need a
    toolchain this process does not have.

    Raises:
        KeyError: there is no one-shot example for ``backend``.
        ValueError: the example file lacks a REFERENCE or SOLUTION string constant.
    """
    if not isinstance(backend, str):
        return _oneshot_file(backend.oneshot)
    known = oneshot_backends()
    if backend not in known:
        raise KeyError(f"no one-shot example for backend {backend!r}; examples exist for: {', '.join(known)}")
    return _oneshot_file(_ONESHOT_DIR / f"{backend}.py")


@cache
def _oneshot_file(path: Path) -> tuple[str, str]:
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found[node.targets[0].id] = node.value.value
    missing = [name for name in ("REFERENCE", "SOLUTION") if name not in found]
    if missing:
        raise ValueError(f"{path} defines no string constant {' or '.join(missing)}")
    return found["REFERENCE"], found["SOLUTION"]
