"""The client's folders: ``out/<problem>/<model>/iter_<n>[_s<k>]/`` plus manifests and reports.

Per attempt: prompt.md, response.md, candidate.py, compile.json, verify.json, profile.json,
analysis.json, recommendation.md, hook.json and, written last, attempt.json. An attempt folder
without attempt.json is unfinished; ``--resume`` redoes exactly those.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kfoundry.clients.records import Attempt

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
ATTEMPT = "attempt.json"


def folder_name(iteration: int, sample: int | None) -> str:
    return f"iter_{iteration}" + (f"_s{sample}" if sample is not None else "")


def write(path: Path, content: str | BaseModel | dict[str, Any] | list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, BaseModel):
        text = content.model_dump_json(indent=2)
    elif isinstance(content, (dict, list)):
        text = json.dumps(content, indent=2, default=str)
    else:
        text = content
    # Write then rename, so an interrupted run never leaves a half-written attempt.json behind.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in ("kernel-foundry", "torch", "mcp", "anthropic", "triton"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


class RunStore:
    """One problem x model folder under the output root."""

    def __init__(self, root: Path, problem: str, model_slug: str) -> None:
        self.root = root
        self.problem_dir = root / problem
        self.path = self.problem_dir / model_slug

    def attempt_dir(self, iteration: int, sample: int | None) -> Path:
        return self.path / folder_name(iteration, sample)

    def start(self, resume: bool) -> list[Attempt]:
        """Finished attempts on disk when resuming; otherwise clear this run's old attempt folders."""
        self.path.mkdir(parents=True, exist_ok=True)
        if resume:
            return self.finished()
        for old in self.path.glob("iter_*"):
            if old.is_dir():
                shutil.rmtree(old)
        return []

    def finished(self) -> list[Attempt]:
        found = []
        for marker in self.path.glob(f"iter_*/{ATTEMPT}"):
            try:
                found.append(Attempt.model_validate_json(marker.read_text(encoding="utf-8")))
            except (ValidationError, ValueError):
                logger.warning("ignoring unreadable %s; that attempt will run again", marker)
        return sorted(found, key=lambda a: (a.iteration, a.sample or 0))

    def write(self, folder: str, name: str, content: str | BaseModel | dict[str, Any] | list[Any]) -> Path:
        return write(self.path / folder / name, content)

    def read_text(self, folder: str, name: str) -> str | None:
        target = self.path / folder / name
        return target.read_text(encoding="utf-8") if target.is_file() else None

    def read_model(self, folder: str, name: str, model: type[M]) -> M | None:
        text = self.read_text(folder, name)
        return model.model_validate_json(text) if text is not None else None

    def finish(self, attempt: Attempt) -> None:
        self.write(attempt.folder, ATTEMPT, attempt)

    def replay_commands(self, attempt: Attempt, backend: str, reference: Path) -> list[str]:
        """Shell lines that re-check this attempt with the CLI mirror of the tools."""
        candidate = self.path / attempt.folder / "candidate.py"
        if not candidate.is_file():
            return []
        common = f"--backend {backend} --reference {reference} --candidate {candidate}"
        lines = [f"kfoundry compile --backend {backend} --candidate {candidate}", f"kfoundry verify {common}"]
        if attempt.correct:
            lines.append(f"kfoundry profile {common}")
        return lines
