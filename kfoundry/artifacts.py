"""Every attempt's inputs, outputs and logs, kept on disk under ``runs/<run_id>/``."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kfoundry.config import settings
from kfoundry.errors import BadRequest

RUN_ID = re.compile(r"^[a-z_]+-\d{8}T\d{6}-[0-9a-f]{6}$")


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
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_id = f"{tool}-{stamp}-{secrets.token_hex(3)}"
    path = settings().runs_dir / run_id
    path.mkdir(parents=True)
    return Run(run_id, path)


def open_run(run_id: str) -> Run:
    """An existing run. Raises BadRequest for ids that are malformed or unknown."""
    if not RUN_ID.match(run_id):
        raise BadRequest(f"{run_id!r} is not a run id (they look like 'profile-20261121T101500-a1b2c3')")
    path = settings().runs_dir / run_id
    if not path.is_dir():
        raise BadRequest(f"no run {run_id!r} on this server; pass the run_id a profile call returned")
    return Run(run_id, path)


def list_runs(limit: int = 50) -> list[str]:
    root = settings().runs_dir
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if p.is_dir() and RUN_ID.match(p.name)), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in runs[:limit]]
