"""KForge's prompt editing and auxiliary code injection, for all iterations or chosen ones.

``FILE[:ITERS]`` names a file (or, for aux code, a folder) and the iterations it applies to:
``3``, ``1,4-6``, ``5-`` (5 onward) or ``all`` (the default). Overrides and appends are Jinja2
text rendered with the prompt's own variables (``reference``, ``candidate``, ``recommendation``,
failure fields...) plus ``prompt``, the prompt the template would have produced; a missing
variable renders empty.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment
from pydantic import BaseModel, Field

_ITERS = re.compile(r"^(all|\d+(-\d*)?(,\d+(-\d*)?)*)$")
_LANG = {".py": "python", ".cpp": "cpp", ".cc": "cpp", ".c": "c", ".h": "cpp", ".hpp": "cpp", ".cu": "cuda", ".cuh": "cuda", ".metal": "metal"}
MAX_AUX_FILE = 200_000
MAX_AUX_TOTAL = 1_000_000


class IterationSet(BaseModel):
    """1-based iterations; no ranges means every iteration. A range's end None means open-ended."""

    ranges: list[tuple[int, int | None]] = Field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> IterationSet:
        if text is None or text == "all":
            return cls()
        if not _ITERS.match(text):
            raise ValueError(f"bad iteration list {text!r}: write e.g. 3, 1,4-6, 5- or all")
        ranges: list[tuple[int, int | None]] = []
        for part in text.split(","):
            low, dash, high = part.partition("-")
            ranges.append((int(low), int(high) if high else (None if dash else int(low))))
        return cls(ranges=ranges)

    def __contains__(self, iteration: object) -> bool:
        if not self.ranges:
            return True
        return isinstance(iteration, int) and any(low <= iteration and (high is None or iteration <= high) for low, high in self.ranges)

    def describe(self) -> str:
        if not self.ranges:
            return "all"
        return ",".join(str(low) if high == low else f"{low}-{'' if high is None else high}" for low, high in self.ranges)


def split_spec(spec: str) -> tuple[Path, IterationSet]:
    """``FILE[:ITERS]`` -> (path, iterations); a colon whose tail is no iteration list stays in the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and _ITERS.match(tail):
        return Path(head), IterationSet.parse(tail)
    return Path(spec), IterationSet()


class PromptEdit(BaseModel):
    kind: Literal["override", "append"]
    path: Path
    text: str
    iterations: IterationSet

    @classmethod
    def load(cls, kind: Literal["override", "append"], spec: str) -> PromptEdit:
        """Raises FileNotFoundError when the file is missing."""
        path, iterations = split_spec(spec)
        return cls(kind=kind, path=path, text=path.read_text(encoding="utf-8"), iterations=iterations)


class AuxFile(BaseModel):
    name: str
    text: str


class AuxCode(BaseModel):
    path: Path
    iterations: IterationSet
    files: list[AuxFile]

    @classmethod
    def load(cls, spec: str) -> AuxCode:
        """A file, or every text file under a folder (hidden and cache folders skipped).

        Raises:
            FileNotFoundError: nothing at that path.
            ValueError: a file is not text, or the files are too large for a prompt.
        """
        path, iterations = split_spec(spec)
        if path.is_file():
            found = [(path.name, path)]
        elif path.is_dir():
            found = [
                (str(p.relative_to(path)), p) for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts)
            ]
        else:
            raise FileNotFoundError(f"auxiliary code {path} does not exist")
        files, total = [], 0
        for name, file in found:
            data = file.read_bytes()
            if b"\0" in data or len(data) > MAX_AUX_FILE:
                continue  # binaries and huge files would only crowd the prompt out
            total += len(data)
            if total > MAX_AUX_TOTAL:
                raise ValueError(f"auxiliary code under {path} is over {MAX_AUX_TOTAL} bytes; point at fewer files")
            files.append(AuxFile(name=name, text=data.decode("utf-8", errors="replace")))
        return cls(path=path, iterations=iterations, files=files)


@cache
def _environment() -> Environment:
    return Environment(autoescape=False, keep_trailing_newline=True)


def _fenced(text: str, lang: str) -> str:
    longest = max((len(m.group()) for m in re.finditer(r"`{3,}", text)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


class PromptEdits(BaseModel):
    """Every edit of a run; ``apply`` gives the prompt for one iteration."""

    edits: list[PromptEdit] = Field(default_factory=list)
    aux: list[AuxCode] = Field(default_factory=list)

    def apply(self, iteration: int, prompt: str, context: dict[str, Any]) -> str:
        values = {**context, "prompt": prompt, "iteration": iteration}
        for edit in self.edits:
            if edit.kind == "override" and iteration in edit.iterations:
                prompt = _environment().from_string(edit.text).render(values)
        for edit in self.edits:
            if edit.kind == "append" and iteration in edit.iterations:
                prompt = prompt.rstrip("\n") + "\n\n" + _environment().from_string(edit.text).render(values).strip("\n") + "\n"
        files = [f for aux in self.aux if iteration in aux.iterations for f in aux.files]
        if files:
            parts = ["## Auxiliary code", "Provided for reference: helpers, earlier implementations or related kernels you may reuse or adapt."]
            for f in files:
                parts.append(f"### {f.name}\n{_fenced(f.text, _LANG.get(Path(f.name).suffix, 'text'))}")
            prompt = prompt.rstrip("\n") + "\n\n" + "\n\n".join(parts) + "\n"
        return prompt
