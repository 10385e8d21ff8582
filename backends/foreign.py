"""What the SYCL and Metal backends share: a device this project's hosts lack, and a compiler that may be present.

Each names its compiler, the build call its candidates make and the command that checks a source.
``probe`` says which of compiler and device is missing; ``compile_only`` compiles the candidate's
sources with that command in the sandbox (``kfoundry.backends.device_units``) where the compiler
exists, and otherwise answers ``unsupported`` with the reason. Workers do nothing for them: their
device is never present where this server runs jobs.
"""

from __future__ import annotations

import abc
import ast
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from kfoundry.backends import device_units, embedded
from kfoundry.backends.base import BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.backends.cuda_sources import CANDIDATE_FILE, CudaUnit
from kfoundry.schema import Bottleneck, Diagnostic, KernelStats, ToolchainInfo


class ForeignBackend(abc.ABC):
    name: ClassVar[str]
    #: the compiler executable looked up on PATH
    compiler: ClassVar[str]
    #: how to install it, for the reason an agent reads
    install: ClassVar[str]
    #: the device it needs, in words
    device_words: ClassVar[str]
    specs: ClassVar[tuple[device_units.UnitSpec, ...]]
    suffix: ClassVar[str]
    build_call: ClassVar[str]
    #: arguments after the compiler that make it print its version
    version_args: ClassVar[tuple[str, ...]] = ("--version",)
    #: the language's own reduced-precision spellings, beyond the C/CUDA ones the shared scan knows
    precision_patterns: ClassVar[device_units.Patterns] = ()
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    @abc.abstractmethod
    def command(self, exe: str, unit: CudaUnit, src: str, out: str) -> list[str] | str:
        """The compiler's argument list that checks ``src`` into ``out``, or why this unit cannot be checked here."""

    def probe(self) -> ToolchainInfo:
        exe = shutil.which(self.compiler)
        if exe is None:
            return ToolchainInfo(name=self.name, available=False, marker=self.marker,  # type: ignore[attr-defined]
                                 reason=f"no {self.device_words} and no {self.compiler} on PATH ({self.install}); "
                                 "translate_reference still writes prompts for it")
        return ToolchainInfo(name=self.name, available=False, compile_only=True, version=self.version(exe), marker=self.marker,  # type: ignore[attr-defined]
                             reason=f"no {self.device_words}: compile works ({self.compiler}), verify/profile need the device")

    def version(self, exe: str) -> str:
        """The compiler's first line of ``--version`` output, or its path when it prints nothing usable."""
        try:
            run = subprocess.run([exe, *self.version_args], capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return exe
        lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
        return lines[0][:200] if run.returncode == 0 and lines else exe

    def worker_env(self, device: str) -> dict[str, str]:
        return {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        return {}

    def is_own_kernel(self, name: str) -> bool:
        return name.startswith(f"{self.name}::")

    def _builds(self, call: ast.Call, parts: list[str]) -> bool:
        return parts[-1] == self.build_call

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return embedded.marker_hits(tree, resolve, self._builds)

    def precision_dtype(self, name: str) -> str | None:
        return None

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        if not embedded.build_calls(tree, resolve, self._builds):
            return []
        return embedded.kernel_precision(tree, resolve, self._builds) + device_units.string_hits(tree, self.precision_patterns)

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        return None

    def build(self, request: BuildRequest) -> BuildUnsupported:
        return BuildUnsupported.because(self.name, f"its candidates build where the {self.device_words} is")

    def compile_only(self, candidate: str, *, timeout_s: float = 300.0) -> CompileOnlyOutcome:
        exe = shutil.which(self.compiler)
        if exe is None:
            return CompileOnlyOutcome.because(self.name, f"{self.compiler} is not on PATH here ({self.install})")
        units, diags = device_units.extract(candidate, self.specs)
        if not units:
            if not any(d.severity == "error" for d in diags):
                diags.append(Diagnostic(file=CANDIDATE_FILE, message=f"no {self.name} source found in a string passed to {self.build_call}(...)"))
            return CompileOnlyOutcome(ok=False, diagnostics=[str(d) for d in diags])
        ok = True
        for done in device_units.compile_units(
            units, suffix=self.suffix, command=lambda u, s, o: self.command(exe, u, s, o), output="kernel.o", env={},
            label=self.compiler, timeout_s=timeout_s,
        ):
            diags += done.diagnostics
            ok = ok and done.ok
        return CompileOnlyOutcome(ok=ok, diagnostics=[str(d) for d in diags])

    def warm(self, device: str) -> None:
        """Nothing to preload: this server never runs these candidates."""

    def prepare_worker(self) -> None:
        """Nothing to patch: this server never runs these candidates."""

    @contextmanager
    def instrument(self) -> Iterator[None]:
        yield

    def built_kernels(self) -> Iterator[KernelStats]:
        yield from ()


