"""What both worker roles share: importing user source, turning its failures into states."""

from __future__ import annotations

import importlib.util
import linecache
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kfoundry.schema import ErrorDetail, State

_COMPILE_ERRORS = ("CompilationError", "BuildError", "CompileTimeAssertionFailure", "UnsupportedLanguageConstruct")


class JobFailed(Exception):
    """Ends the job with a state; raised by the worker's own code, never by user code."""

    def __init__(self, state: State, error: ErrorDetail, diagnostics: list[str] | None = None) -> None:
        super().__init__(error.message)
        self.state = state
        self.error = error
        self.diagnostics = diagnostics or []


def _tail(exc: BaseException, limit: int = 12) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "\n".join("".join(lines).rstrip().splitlines()[-limit:])


def error_detail(exc: BaseException, stage: str) -> ErrorDetail:
    return ErrorDetail(type=type(exc).__name__, message=str(exc)[:4000], traceback_tail=_tail(exc), stage=stage)


def is_compile_error(exc: BaseException) -> bool:
    if type(exc).__name__ in _COMPILE_ERRORS or isinstance(exc, (SyntaxError, ImportError)):
        return True
    return isinstance(exc, RuntimeError) and "Error building extension" in str(exc)


def diagnostics(exc: BaseException, filename: str) -> list[str]:
    if isinstance(exc, SyntaxError):
        return [f"{Path(exc.filename or filename).name}:{exc.lineno}: error: {exc.msg}"]
    return [str(d) for d in getattr(exc, "diagnostics", [])]


def failure(exc: BaseException, stage: str, *, candidate: bool, filename: str = "candidate.py") -> JobFailed:
    """User code raised during ``stage``: a compilation failure when it looks like one, else a runtime error."""
    state = State.compilation_failure if candidate and is_compile_error(exc) else State.runtime_error
    return JobFailed(state, error_detail(exc, stage), diagnostics(exc, filename) if candidate else [])


def import_source(source: str, filename: str, module_name: str, workdir: Path) -> ModuleType:
    """Import source from a real file: Triton's @jit reads the function source back through inspect."""
    path = workdir / filename
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def import_text(source: str, filename: str, module_name: str) -> ModuleType:
    """Import source without writing it anywhere: nothing another process could find is left on disk.

    Tracebacks still show its lines (they are registered with ``linecache``).
    """
    module = ModuleType(module_name)
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    sys.modules[module_name] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the problem is the user's own trusted-role code
    return module


def as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_matching(theirs: dict[str, torch.Tensor], target: torch.nn.Module) -> None:
    """KernelBench's convention: parameters and buffers with the same name, shape and dtype are copied."""
    mine = target.state_dict()
    shared = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape and mine[k].dtype == v.dtype}
    if shared:
        target.load_state_dict(shared, strict=False)
