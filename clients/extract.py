"""Pull the candidate module out of a model's reply."""

from __future__ import annotations

import ast
import re

_OPEN = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+.-]*)[^\n`]*$")
_MODEL_CLASS = re.compile(r"^class\s+(ModelNew|NewModel)\b", re.M)
_PYTHON = {"python", "py", "python3", ""}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block as (language, body), in order; an unclosed last block runs to the end."""
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opened = _OPEN.match(lines[i].strip())
        if not opened:
            i += 1
            continue
        fence, lang = opened["fence"], opened["lang"].lower()
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i])
            i += 1
        blocks.append((lang, "\n".join(body).strip("\n") + "\n"))
        i += 1
    return blocks


def extract_candidate(text: str) -> str | None:
    """The module to try: the last python block defining ModelNew (or NewModel), else None.

    A reply with no fences at all counts when it is itself a module defining ModelNew that parses.
    """
    blocks = code_blocks(text)
    for lang, body in reversed(blocks):
        if lang in _PYTHON and _MODEL_CLASS.search(body):
            return body
    if not blocks and _MODEL_CLASS.search(text):
        try:
            ast.parse(text)
        except SyntaxError:
            return None
        return text.strip("\n") + "\n"
    return None
