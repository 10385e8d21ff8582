"""The contract every backend module satisfies, and the records that cross it.

A backend is consulted in three places. In the trusted server it answers ``probe``
(cheaply: no heavy imports), supplies static facts (guardrail scans, precision
spellings, prompt context, how to recognise its kernels in a trace, advice from the
candidate's source) and performs the builds its workers ask for. Inside a sandboxed
worker it prepares the process before candidate code is imported and reports what it
built. Where the toolchain exists without its device, ``compile_only`` checks a
candidate without running it.

Code outside ``kfoundry.backends`` asks these questions of whichever backend it holds
and never compares backend names.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from kfoundry.schema import Bottleneck, Diagnostic, KernelStats, ToolchainInfo

Severity = Literal["block", "warn", "off"]

#: A name or attribute chain as its dotted path, import aliases expanded (``tl.dot`` -> ["triton", "language", "dot"]).
Resolve = Callable[[ast.AST], list[str]]

#: Reduced-precision kinds a scan reports, and how messages name them; precision policies allow kinds by these keys.
KIND_NAMES: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16", "fp8": "float8", "tf32": "TF32", "fast_math": "fast-math"}


@dataclass(frozen=True)
class SourceHit:
    """Something a static scan found in candidate.py."""

    line: int
    message: str
    #: a key of ``KIND_NAMES`` for precision hits; "" otherwise
    kind: str = ""


class BuildRequest(BaseModel):
    """A worker's request for a build the trusted side performs on its behalf."""

    message: dict[str, Any] = Field(description="The worker's message as received: untrusted, validated by the backend.")
    candidate: str = Field(default="", description="The job's candidate source, so diagnostics point at candidate.py lines.")

    def refusal(self, backend: str, op: str) -> BuildUnsupported | None:
        """A refusal when the worker asked for something other than ``op``, the build ``backend`` answers.

        The trusted side hands a request to the job's backend, whichever build the candidate
        asked for; a cpp job's load_cuda must not reach g++.
        """
        asked = self.message.get("op", op)
        if asked == op:
            return None
        return BuildUnsupported.because(backend, f"it answers {op!r} requests, and this one is {asked!r}")


class TrustedBuild(BaseModel):
    """What a trusted-side build produced; each backend's outcome adds the fields of its artefact."""

    #: fields holding paths of built files; the trusted side copies each into the asking worker's sandbox
    artefact_fields: ClassVar[tuple[str, ...]] = ()

    ok: bool
    key: str = Field(description="Content hash the artefact is cached under; empty when nothing was built.")
    cached: bool = False
    seconds: float = 0.0
    diagnostics: list[Diagnostic] = Field(default_factory=list)
    log: str = ""


class BuildUnsupported(TrustedBuild):
    """The backend cannot perform the requested build on the trusted side; ``reason`` (also the one diagnostic) says why."""

    reason: str

    @classmethod
    def because(cls, backend: str, reason: str) -> BuildUnsupported:
        message = f"the {backend} backend cannot perform this build: {reason}"
        return cls(ok=False, key="", reason=reason, diagnostics=[Diagnostic(file="candidate.py", message=message)], log=message)


@dataclass(frozen=True)
class CompileOnlyOutcome:
    """A compile-only check of a candidate (toolchain present, device absent; the candidate never runs)."""

    ok: bool
    kernels: list[KernelStats] = field(default_factory=list)
    #: "file:line: severity: message" lines
    diagnostics: list[str] = field(default_factory=list)
    #: why this backend cannot check without its device; "" when it can
    unsupported: str = ""

    def __iter__(self) -> Iterator[Any]:
        # Callers written before this record existed unpack ``kernels, diagnostics, ok``.
        return iter((self.kernels, self.diagnostics, self.ok))

    @classmethod
    def because(cls, backend: str, reason: str) -> CompileOnlyOutcome:
        return cls(ok=False, diagnostics=[f"candidate.py: error: the {backend} backend has no compile-only mode: {reason}"], unsupported=reason)


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]
    #: Regexes a candidate must match (at least one each) to count as this backend's code; used when it does not parse.
    required_patterns: ClassVar[tuple[str, ...]]
    #: Human sentence for an agent: what the candidate must contain.
    marker: ClassVar[str]
    #: Path of the one-shot example (a complete candidate) shown in prompts.
    oneshot: ClassVar[Path]
    #: Backend-specific advice rendered into prompts.
    notes: ClassVar[str]
    #: Guardrail rules whose default severity differs for this backend (rule id -> severity).
    rule_defaults: ClassVar[Mapping[str, Severity]]

    def probe(self) -> ToolchainInfo:
        """Report whether the toolchain and a device are present, without importing heavy modules."""
        ...

    def worker_env(self, device: str) -> dict[str, str]:
        """Environment variables the worker needs before candidate code is imported."""
        ...

    def cache_env(self, shared: Path) -> dict[str, str]:
        """Environment variables pointing this backend's compiler caches into ``shared`` (kept across workers)."""
        ...

    def is_own_kernel(self, name: str) -> bool:
        """True when a profiler event name belongs to code this backend compiled."""
        ...

    # -- static scans of candidate.py (trusted side) -----------------------------------------------
    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        """Why the candidate does not build and use this backend's kernel; empty when it does."""
        ...

    def precision_dtype(self, name: str) -> str | None:
        """The reduced-precision kind of a dtype spelled ``name`` (dotted, aliases expanded) in this backend's Python DSL."""
        ...

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        """Reduced-precision uses written in this backend's own spellings (DSL calls, kernel source it compiles).

        Asked of every backend for every candidate, since any candidate may use any backend's
        code; a backend whose code the candidate does not use finds nothing.
        """
        ...

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        """One source-level change suggested by what the candidate's code lacks, for a ``regime``-bound profile."""
        ...

    # -- trusted side --------------------------------------------------------------------------------
    def build(self, request: BuildRequest) -> TrustedBuild:
        """Perform the build this backend's worker asked for; a bad request is a failed outcome, never an exception."""
        ...

    def compile_only(self, candidate: str, *, timeout_s: float) -> CompileOnlyOutcome:
        """Check ``candidate`` with the toolchain alone (no device, candidate not executed)."""
        ...

    # -- inside the worker only -------------------------------------------------
    def warm(self, device: str) -> None:
        """Import what this backend's jobs need, so a spare worker pays for it before a job arrives."""
        ...

    def prepare_worker(self) -> None:
        """Patch or preload what the backend needs before candidate code is imported."""
        ...

    def instrument(self) -> AbstractContextManager[None]:
        """Wrap this backend's kernel launches in profiler ranges named like ``is_own_kernel`` expects."""
        ...

    def built_kernels(self) -> Iterator[KernelStats]:
        """Kernels this process built or loaded so far, with whatever stats the toolchain gives."""
        ...


class TrustedSide(Protocol):
    """How code inside a worker asks the trusted side to run a toolchain on its behalf."""

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        """Send ``{"op": ..., ...}`` (a backend's build request) and return the outcome the trusted side sent back."""
        ...


_trusted: TrustedSide | None = None


def attach_trusted_side(side: TrustedSide | None) -> None:
    """Called by the worker process once, before candidate code runs (the runner owns the channel)."""
    global _trusted
    _trusted = side


def trusted_side() -> TrustedSide | None:
    """The trusted side when running inside a worker, else ``None`` (builds then run in this process)."""
    return _trusted
