"""What each tool takes: one pydantic model per tool, the only place its arguments are declared.

The MCP tool signatures (``server/app.py``) and the CLI options (``kfoundry/cli.py``) are
derived from these fields, and the tool functions receive the validated model. Checks that
need no host state live here as field types, bounds and validators; the engine checks only
what depends on the host (is the backend available, does the run exist).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from kfoundry.backends import names
from kfoundry.config import settings
from kfoundry.verify.guardrails import Guardrails

Baseline = Literal["eager", "compile"]
#: the names of ``verify.precision.POLICIES`` (kept literal here: that module imports torch)
PrecisionName = Literal["strict", "tf32", "bf16", "fp16"]
#: ``verify.stress.FAMILIES``
StressFamily = Literal["signed", "large", "tiny", "wide", "special"]

MAX_TIMEOUT_S = 3600.0
MAX_IMAGES = 8
SOURCE_BACKEND = "pytorch"

#: error types raised by the validators below; their messages already say what was sent
_OWN_ERRORS = {"unknown_backend", "source_text", "not_base64", "missing_source"}


def _backend(value: str, info: ValidationInfo) -> str:
    name = value.strip().lower()
    if name not in names() and not (info.field_name == "source_backend" and name == SOURCE_BACKEND):
        also = f"'{SOURCE_BACKEND}' (translate the reference) or " if info.field_name == "source_backend" else ""
        raise PydanticCustomError(
            "unknown_backend", "unknown backend {name}; send {also}one of: {known}. Call `backends` for which run on this host",
            {"name": repr(value), "also": also, "known": ", ".join(names())},
        )
    return name


def _source(what: str) -> AfterValidator:
    """Non-empty text under the payload limit, without NUL bytes; ``what`` says what to send."""

    def check(value: str, info: ValidationInfo) -> str:
        field, limit = info.field_name, settings().max_payload_bytes
        size = len(value.encode("utf-8", errors="replace"))
        if not value.strip():
            problem = "{field} is empty; send {what}"
        elif size > limit:
            problem = "{field} is {size} bytes; the limit is {limit} bytes. Send only the source text, without data blobs"
        elif "\x00" in value:
            problem = "{field} contains NUL bytes; send plain text"
        else:
            return value
        raise PydanticCustomError("source_text", problem, {"field": field, "what": what, "size": size, "limit": limit})

    return AfterValidator(check)


def _unique(values: list[Any] | None) -> list[Any] | None:
    return None if values is None else list(dict.fromkeys(values))


def _base64(value: str, info: ValidationInfo) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError("not_base64", "not base64 data ({reason}); send the PNG bytes base64-encoded", {"reason": str(exc)}) from exc
    return value


_REFERENCE = "the KernelBench problem source: class Model(nn.Module), get_inputs(), get_init_inputs()"
_CANDIDATE = "the full Python module source defining class ModelNew"

BackendName = Annotated[
    str, AfterValidator(_backend),
    # The names are listed once, in compile's description: repeated in every schema they cost the listing ~60 bytes each.
    Field(description="Kernel backend, as named by `backends` (which also says which run here), e.g. 'triton'."),
]
Reference = Annotated[
    str, _source(_REFERENCE),
    Field(description="KernelBench problem source: class Model(nn.Module), get_inputs(), get_init_inputs()."),
]
Candidate = Annotated[
    str, _source(_CANDIDATE),
    Field(description="Full module source: class ModelNew with Model's __init__ arguments, whose forward computes Model's "
                      "outputs with the backend's kernels."),
]
Trials = Annotated[int, Field(ge=1, le=100)]
Tolerance = Annotated[float | None, Field(ge=0, lt=1e6)]
Timeout = Annotated[
    float | None,
    Field(gt=0, le=MAX_TIMEOUT_S, description="Seconds before the job is killed (state 'timeout'); omit for the default."),
]
Precision = Annotated[
    PrecisionName,
    Field(description="'strict': the problem's dtypes, no TF32, atol/rtol decide. 'tf32'/'bf16'/'fp16': may compute at that "
                      "precision, judged against a float64 oracle (2x an honest run's error), timed against both policies."),
]
Stress = Annotated[
    list[StressFamily] | None, AfterValidator(_unique),
    Field(description="Extra trials on 'signed', 'large' (x 2^16), 'tiny' (x 2^-20), 'wide' (always run) or 'special' (NaN, "
                      "inf, -0.0, subnormals) inputs; a family the reference fails on is dropped, and said so."),
]
Rules = Annotated[
    Guardrails | None,
    Field(description="Extra rules: `required`/`banned` regexes, `rules` {rule id: 'block'|'warn'|'off'} (ids: "
                      "kfoundry://schemas/verify), `allow_torch_ops`, `min_own_kernel_share`. Omit for the server's."),
]
ATOL = "Absolute tolerance; omit for the dtype's default (1e-4 fp32, 1e-2 fp16/bf16)."
RTOL = "Relative tolerance; omit for the dtype's default (as atol)."


class CompileRequest(BaseModel):
    """``compile``: build a candidate without running it."""

    backend: BackendName
    candidate: Candidate
    reference: Annotated[str, _source(_REFERENCE)] | None = Field(
        default=None,
        description="Optional problem source: kernels built on first launch (Triton on a GPU) are launched once on its "
                    "inputs to report their registers, spills and shared memory.",
    )
    timeout_s: Timeout = None


class VerifyRequest(BaseModel):
    """``verify``: check a candidate against the reference on fresh secret-seeded inputs."""

    backend: BackendName
    reference: Reference
    candidate: Candidate
    trials: Trials = Field(default=5, description="Trials with fresh secret-seeded inputs (1 to 100).")
    atol: Tolerance = Field(default=None, description=ATOL)
    rtol: Tolerance = Field(default=None, description=RTOL)
    guardrails: Rules = None
    timeout_s: Timeout = None
    precision: Precision = "strict"
    stress: Stress = None


class ProfileRequest(BaseModel):
    """``profile``: re-verify, then time the candidate against the baselines."""

    backend: BackendName
    reference: Reference
    candidate: Candidate
    baselines: Annotated[list[Baseline] | None, AfterValidator(_unique)] = Field(
        default=None, description="Baselines to time the candidate against: 'eager', 'compile' (torch.compile); omit for both.",
    )
    hardware_counters: bool = Field(default=False, description="Collect Nsight Compute counters (NVIDIA GPUs only).")
    reps: int | None = Field(default=None, ge=1, le=1000, description="Timed calls per contender (1 to 1000); omit to plan from ~0.1 s of the reference's own time per call (10 to 200 calls on a GPU, 10 to 50 on the CPU).")
    warmup: int = Field(default=3, ge=0, le=100, description="Untimed warm-up calls per contender (0 to 100).")
    trials: Trials = Field(default=3, description="Correctness trials run before timing (1 to 100).")
    atol: Tolerance = Field(default=None, description=ATOL)
    rtol: Tolerance = Field(default=None, description=RTOL)
    guardrails: Rules = None
    cuda_graph: bool = Field(default=False, description="Time by CUDA-graph replay (for launch-bound kernels; GPU only).")
    timeout_s: Timeout = None
    precision: Precision = "strict"
    stress: Stress = None


class AnalyzeRequest(BaseModel):
    """``analyze_profile``: one recommendation from a profile run or raw profiler text."""

    profile: Annotated[str, _source("the run_id a `profile` call returned, or raw profiler text")] = Field(
        description="A run_id returned by `profile` (preferred), or raw profiler text (a torch.profiler key_averages table, "
                    "an Nsight Compute CSV).",
    )
    candidate: Annotated[str, _source(_CANDIDATE)] | None = Field(
        default=None, description="The candidate source, for source-level advice (taken from the run when `profile` is a run_id).",
    )
    images: list[Annotated[str, AfterValidator(_base64)]] | None = Field(
        default=None, max_length=MAX_IMAGES,
        description=f"Optional screenshots of profiler views, base64-encoded PNG (at most {MAX_IMAGES}); recorded with the run.",
    )


class TranslateRequest(BaseModel):
    """``translate_reference``: problem analysis and a generation (or translation) prompt."""

    reference: Reference
    target_backend: BackendName = Field(description="Backend to write the kernel for, as named by `backends`.")
    source_backend: Annotated[str, AfterValidator(_backend)] = Field(
        default=SOURCE_BACKEND,
        description=f"'{SOURCE_BACKEND}' (default: translate the reference) or the backend whose kernel is given in source_code.",
    )
    source_code: Annotated[str, _source("the source backend's candidate module")] | None = Field(
        default=None, description="An existing candidate for source_backend to translate from; required unless source_backend is 'pytorch'.",
    )
    sample: bool = Field(
        default=False, description="Also ask your own model (MCP sampling) to write the candidate; ignored when the client cannot sample.",
    )
    timeout_s: Timeout = None

    @model_validator(mode="after")
    def _source_given(self) -> TranslateRequest:
        if self.source_backend != SOURCE_BACKEND and self.source_code is None:
            raise PydanticCustomError(
                "missing_source", "source_code is required when source_backend is {backend}: send that backend's candidate module",
                {"backend": repr(self.source_backend)},
            )
        return self


def explain(error: ValidationError, request: type[BaseModel] | None = None) -> str:
    """The errors as an agent can act on them: each field, what it allows, what was sent, what it takes.

    ``request`` supplies the field descriptions; pydantic's own text (model names, error codes,
    documentation links) is left out.
    """
    problems = error.errors(include_url=False)
    lines = []
    for problem in problems:
        where = _where(problem["loc"])
        kind, message = problem["type"], problem["msg"].removeprefix("Value error, ")
        field = request.model_fields.get(str(problem["loc"][0])) if request is not None and problem["loc"] else None
        wants = f" Expected: {field.description}" if field is not None and field.description and kind not in _OWN_ERRORS else ""
        if kind == "missing":
            message = "required but missing"
        elif kind not in _OWN_ERRORS:
            message += f" (got {_shown(problem['input'])})"
        lines.append(f"{where + ': ' if where else ''}{message.rstrip('.')}.{wants}")
    if len(lines) == 1:
        return f"invalid argument {lines[0]}"
    return "\n- ".join(["invalid arguments; fix and call again:", *lines])


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) > 60:
        return f"a string of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__} ({text[:40]}...)"
