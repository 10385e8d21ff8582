"""``scripted:FILE``: replays a JSON file of responses in order, one list per agent role. For tests and demos.

The file is either a list (every role reads it) or an object with ``generation`` and ``analysis``
lists. An item is a string (the reply), or an object:

    {"text": "..."}                                   the reply
    {"say": "why", "example": "elementwise/cpp",      a bundled solution in a ```python block, after
     "edits": [["old", "new"], ...]}                  exact-text edits (each must apply), with a sentence first
    {"error": "connection reset"}                     no reply: the call raises ModelError

A relative FILE is looked up in the working directory, then among the bundled stories.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kfoundry import examples
from kfoundry.clients.providers import ModelError, ModelOptions, ModelReply, ModelRequest, Role

_BACKTICKS = re.compile(r"`{3,}")
STORIES = Path(__file__).resolve().parent.parent / "stories"


def story_path(name: str) -> Path:
    """Where script ``name`` lives. Raises FileNotFoundError listing the bundled stories."""
    for candidate in (Path(name), STORIES / name, STORIES / f"{name}.json"):
        if candidate.is_file():
            return candidate
    bundled = ", ".join(sorted(p.name for p in STORIES.glob("*.json")))
    raise FileNotFoundError(f"no script {name!r} here or among the bundled stories ({bundled})")


def _fence(code: str) -> str:
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(code)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}python\n{code.rstrip()}\n{fence}"


def render_item(item: Any, where: str) -> str:
    """The reply text an item stands for. Raises ModelError for an ``error`` item, ValueError when malformed."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item is a string or an object, not {type(item).__name__}")
    if "error" in item:
        raise ModelError(str(item["error"]))
    if "text" in item:
        return str(item["text"])
    if "example" not in item:
        raise ValueError(f"{where}: an object item needs 'text', 'example' or 'error'")
    name, _, part = str(item["example"]).partition("/")
    code = examples.source(name, part or "cpp")
    for old, new in item.get("edits", []):
        if old not in code:
            raise ValueError(f"{where}: edit target {old!r} is not in {item['example']}")
        code = code.replace(old, new, 1)
    say = str(item.get("say", "")).strip()
    return (f"{say}\n\n" if say else "") + _fence(code)


class ScriptedModel:
    def __init__(self, name: str, role: Role, options: ModelOptions | None = None, items: list[Any] | None = None) -> None:
        self.spec = f"scripted:{name}"
        self.role = role
        if items is None:
            path = story_path(name)
            data = json.loads(path.read_text(encoding="utf-8"))
            items = data if isinstance(data, list) else data.get(role, [])
            if not isinstance(items, list):
                raise ValueError(f"{path}: '{role}' must be a list of responses")
        self.items = items
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelReply:
        index = len(self.requests)
        self.requests.append(request)
        if index >= len(self.items):
            raise ModelError(f"{self.spec}: the script has only {len(self.items)} {self.role} responses")
        text = render_item(self.items[index], f"{self.spec} {self.role}[{index}]")
        return ModelReply(text=text, model=self.spec, stop_reason="end_turn")

    async def aclose(self) -> None:
        return None
