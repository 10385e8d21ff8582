"""Every attempt's inputs, outputs and logs, kept on disk under ``runs/<run_id>/``.

Each run records who made it in its ``owner`` file. Inside ``acting_for(name)`` new runs belong
to ``name``, and only ``name``'s runs can be listed or opened: another caller's run reads exactly
as a missing one. ``LOCAL``, the box's own user (stdio, the CLI), makes runs as "local" and
opens every run.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kfoundry.config import settings
from kfoundry.errors import BadRequest

RUN_ID = re.compile(r"^[a-z_]+-\d{8}T\d{6}-[0-9a-f]{6}$")
OWNER_FILE = "owner"
LOCAL = "local"

_acting_for: ContextVar[str] = ContextVar("kfoundry_run_owner", default=LOCAL)


@contextmanager
def acting_for(owner: str) -> Iterator[None]:
    """Make runs as ``owner`` and see only ``owner``'s runs until the block ends."""
    token = _acting_for.set(owner)
    try:
        yield
    finally:
        _acting_for.reset(token)


def current_owner() -> str:
    return _acting_for.get()


def owner_of(path: Path) -> str:
    """Who made the run at ``path``; runs from before owners were recorded belong to ``LOCAL``."""
    try:
        return (path / OWNER_FILE).read_text().strip() or LOCAL
    except FileNotFoundError:
        return LOCAL


def _visible(path: Path) -> bool:
    viewer = current_owner()
    return viewer == LOCAL or owner_of(path) == viewer


class Run:
    """One tool call's artifact folder."""

    def __init__(self, run_id: str, path: Path) -> None:
        self.id = run_id
        self.path = path

    def write(self, name: str, content: str | bytes | BaseModel | dict[str, Any]) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, BaseModel):
            target.write_text(content.model_dump_json(indent=2))
        elif isinstance(content, dict):
            target.write_text(json.dumps(content, indent=2, default=str))
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return target


def new_run(tool: str) -> Run:
    """A fresh run folder, owned by the current caller (see ``acting_for``)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_id = f"{tool}-{stamp}-{secrets.token_hex(3)}"
    path = settings().runs_dir / run_id
    path.mkdir(parents=True)
    run = Run(run_id, path)
    run.write(OWNER_FILE, current_owner())
    return run


def open_run(run_id: str) -> Run:
    """An existing run of the current caller's.

    Raises:
        BadRequest: ``run_id`` is malformed, unknown, or another caller's (those two read alike).
    """
    if not RUN_ID.match(run_id):
        raise BadRequest(f"{run_id!r} is not a run id (they look like 'profile-20261121T101500-a1b2c3')")
    path = settings().runs_dir / run_id
    if not path.is_dir() or not _visible(path):
        raise BadRequest(f"no run {run_id!r} of yours on this server; pass the run_id one of your calls returned")
    return Run(run_id, path)


def list_runs(limit: int = 50) -> list[str]:
    """The current caller's newest run ids, newest first."""
    root = settings().runs_dir
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if p.is_dir() and RUN_ID.match(p.name)), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in islice(filter(_visible, runs), limit)]
