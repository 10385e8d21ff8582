"""The contract every backend module satisfies.

A backend is consulted in two places. In the trusted server it answers ``probe``
(cheaply: no heavy imports) and supplies static facts (guardrail patterns, prompt
context, how to recognise its kernels in a trace). Inside a sandboxed worker it
prepares the process before candidate code is imported and reports what it built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from kfoundry.schema import KernelStats, ToolchainInfo


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]
    #: Regexes a candidate must match (at least one each) to count as this backend's code.
    required_patterns: ClassVar[tuple[str, ...]]
    #: Human sentence for an agent: what the candidate must contain.
    marker: ClassVar[str]
    #: Path of the one-shot example (a complete candidate) shown in prompts.
    oneshot: ClassVar[Path]
    #: Backend-specific advice rendered into prompts.
    notes: ClassVar[str]

    def probe(self) -> ToolchainInfo:
        """Report whether the toolchain and a device are present, without importing heavy modules."""
        ...

    def worker_env(self, device: str) -> dict[str, str]:
        """Environment variables the worker needs before candidate code is imported."""
        ...

    def is_own_kernel(self, name: str) -> bool:
        """True when a profiler event name belongs to code this backend compiled."""
        ...

    # -- inside the worker only -------------------------------------------------
    def prepare_worker(self) -> None:
        """Patch or preload what the backend needs before candidate code is imported."""
        ...

    def instrument(self) -> AbstractContextManager[None]:
        """Wrap this backend's kernel launches in profiler ranges named like ``is_own_kernel`` expects."""
        ...

    def built_kernels(self) -> Iterator[KernelStats]:
        """Kernels this process built or loaded so far, with whatever stats the toolchain gives."""
        ...
