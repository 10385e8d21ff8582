"""Every attempt's inputs, outputs and logs, kept on disk under ``runs/<run_id>/``.

Each run records who made it in its ``owner`` file. Inside ``acting_for(name)`` new runs belong
to ``name``, and only ``name``'s runs can be listed or opened: another caller's run reads exactly
as a missing one. ``LOCAL``, the box's own user (stdio, the CLI), makes runs as "local" and
opens every run.

The store is bounded. ``new_run`` removes runs older than ``artifact_ttl_hours`` (any owner's,
checked at most once a minute) and then the creating owner's oldest runs until that owner is
back under ``artifact_quota_mb``; another owner's runs are never touched for it. ``Run.write``
refuses content that would take one run past the quota. Runs this process still holds a
``Run`` for (tool calls in flight) are never removed, so an owner can stand above the quota by
the runs in flight until their next ``new_run``.

Sizes are the files' byte counts (``st_size``). A ledger in memory keeps each run's owner,
creation time and size, so a sweep costs one ``stat`` per run of the creating owner: a run is
measured again only when its folder changed (its mtime) or it is in flight. Runs other
processes make are picked up when the folder is listed: at each expiry sweep and by ``usage``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kfoundry.config import settings
from kfoundry.errors import BadRequest
from kfoundry.schema import ArtifactUsage

RUN_ID = re.compile(r"^[a-z_]+-\d{8}T\d{6}-[0-9a-f]{6}$")
OWNER_FILE = "owner"
LOCAL = "local"
#: seconds between expiry sweeps (and listings of the runs folder for runs made elsewhere)
SWEEP_EVERY_S = 60.0
#: prefix a run's folder is renamed to before it is deleted, so it is never seen half-removed
_REMOVING = ".removing-"

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


def _quota_bytes() -> int:
    return settings().artifact_quota_mb << 20


def _tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks not followed; files vanishing meanwhile skipped)."""
    total, pending = 0, [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


def _encode(content: str | bytes | BaseModel | dict[str, Any]) -> bytes:
    if isinstance(content, BaseModel):
        return content.model_dump_json(indent=2).encode()
    if isinstance(content, dict):
        return json.dumps(content, indent=2, default=str).encode()
    if isinstance(content, bytes):
        return content
    return content.encode()


class Run:
    """One tool call's artifact folder."""

    def __init__(self, run_id: str, path: Path) -> None:
        self.id = run_id
        self.path = path

    def write(self, name: str, content: str | bytes | BaseModel | dict[str, Any]) -> Path:
        """Write ``name`` inside the run.

        Raises:
            BadRequest: the run would hold more than the artifact quota, or it was removed
                (expired, or past its owner's quota, by another process).
        """
        target = self.path / name
        data = _encode(content)
        # Recreating a removed run's folder would make an ownerless run, which reads as LOCAL's.
        if not self.path.is_dir():
            raise BadRequest(f"run {self.id} was removed (expired or over its owner's artifact quota); call the tool again")
        try:
            replaced = target.stat().st_size
        except FileNotFoundError:
            replaced = 0
        size = _tree_bytes(self.path) - replaced + len(data)
        quota = _quota_bytes()
        if size > quota:
            raise BadRequest(
                f"{name} ({len(data)} bytes) would take run {self.id} to {size} bytes, over the artifact quota of "
                f"{settings().artifact_quota_mb} MB per caller; ask for less output"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        _ledger().wrote(self)
        return target


@dataclass
class _Entry:
    owner: str
    created: float
    #: bytes when last measured, and the folder's mtime then (None: measure before use)
    bytes: int = 0
    mtime_ns: int | None = None


class _Ledger:
    """Owner, creation time and size of every run under ``root``, kept in step with the disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: dict[str, _Entry] = {}
        #: monotonic time of the last expiry sweep
        self.swept_at: float | None = None
        self.lock = threading.Lock()
        #: runs some code in this process still holds (in-flight calls): never removed
        self.live: weakref.WeakSet[Run] = weakref.WeakSet()

    # -- keeping in step --------------------------------------------------------------------
    def _discover(self, run_id: str) -> None:
        path = self.root / run_id
        try:
            created = (path / OWNER_FILE).stat().st_mtime
        except FileNotFoundError:
            try:
                created = path.stat().st_mtime
            except FileNotFoundError:
                return
        self.entries[run_id] = _Entry(owner=owner_of(path), created=created)

    def _listing(self) -> None:
        """Add runs made elsewhere, forget runs removed elsewhere, finish interrupted removals."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        on_disk = set()
        for name in names:
            if name.startswith(_REMOVING):
                shutil.rmtree(self.root / name, ignore_errors=True)
            elif RUN_ID.match(name):
                on_disk.add(name)
                if name not in self.entries:
                    self._discover(name)
        for gone in self.entries.keys() - on_disk:
            del self.entries[gone]

    def _live_ids(self) -> set[str]:
        return {run.id for run in self.live}

    def _measure(self, run_id: str, entry: _Entry, live: set[str]) -> bool:
        """Bring ``entry``'s size up to date; False when the run is gone."""
        path = self.root / run_id
        try:
            mtime_ns = path.stat().st_mtime_ns
        except FileNotFoundError:
            del self.entries[run_id]
            return False
        if entry.mtime_ns != mtime_ns or run_id in live:
            entry.bytes, entry.mtime_ns = _tree_bytes(path), mtime_ns
        return True

    def _owned(self, owner: str, live: set[str]) -> list[tuple[str, _Entry]]:
        """``owner``'s runs, measured, oldest first."""
        mine = [(run_id, e) for run_id, e in self.entries.items() if e.owner == owner]
        return sorted(((r, e) for r, e in mine if self._measure(r, e, live)), key=lambda item: item[1].created)

    def _unlink(self, run_id: str) -> Path | None:
        """Take the run out of sight (one rename); the caller deletes the returned folder."""
        del self.entries[run_id]
        hidden = self.root / f"{_REMOVING}{run_id}-{secrets.token_hex(3)}"
        try:
            os.rename(self.root / run_id, hidden)
        except FileNotFoundError:
            return None
        return hidden

    # -- the operations -------------------------------------------------------------------
    def created(self, run: Run, owner: str) -> None:
        """Record ``run`` and sweep: expired runs (now and then), then ``owner``'s oldest past the quota."""
        with self.lock:
            self.entries[run.id] = _Entry(owner=owner, created=time.time())
            live = self._live_ids()
            doomed = self._expired(live) + self._over_quota(owner, live)
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)

    def _expired(self, live: set[str]) -> list[Path]:
        now = time.monotonic()
        if self.swept_at is not None and now - self.swept_at < SWEEP_EVERY_S:
            return []
        self.swept_at = now
        self._listing()
        oldest = time.time() - settings().artifact_ttl_hours * 3600
        stale = [r for r, e in self.entries.items() if e.created < oldest and r not in live]
        return [p for p in map(self._unlink, stale) if p is not None]

    def _over_quota(self, owner: str, live: set[str]) -> list[Path]:
        runs = self._owned(owner, live)
        excess = sum(e.bytes for _, e in runs) - _quota_bytes()
        doomed = []
        for run_id, entry in runs:
            if excess <= 0:
                break
            if run_id in live:
                continue
            excess -= entry.bytes
            doomed.append(self._unlink(run_id))
        return [p for p in doomed if p is not None]

    def opened(self, run: Run) -> None:
        with self.lock:
            self.live.add(run)

    def wrote(self, run: Run) -> None:
        # Rewriting a file leaves the folder's mtime as it was: measure again once the call is over.
        with self.lock:
            entry = self.entries.get(run.id)
            if entry is not None:
                entry.mtime_ns = None

    def usage(self, owner: str) -> ArtifactUsage:
        # Asked for rarely (the backends report), so it can afford a listing to be exact.
        with self.lock:
            self._listing()
            runs = self._owned(owner, self._live_ids())
        return ArtifactUsage(bytes=sum(e.bytes for _, e in runs), runs=len(runs))


_ledgers: dict[Path, _Ledger] = {}
_ledgers_lock = threading.Lock()


def _ledger() -> _Ledger:
    """The ledger of the current runs folder (tests point ``KFOUNDRY_HOME`` elsewhere between cases)."""
    root = settings().runs_dir
    with _ledgers_lock:
        ledger = _ledgers.get(root)
        if ledger is None:
            _ledgers.clear()
            ledger = _ledgers[root] = _Ledger(root)
        return ledger


def new_run(tool: str) -> Run:
    """A fresh run folder, owned by the current caller (see ``acting_for``).

    Making it sweeps the store: see the module's docstring.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_id = f"{tool}-{stamp}-{secrets.token_hex(3)}"
    path = settings().runs_dir / run_id
    run, ledger, owner = Run(run_id, path), _ledger(), current_owner()
    # In flight before it exists, so no sweep running meanwhile can take it.
    ledger.opened(run)
    path.mkdir(parents=True)
    (path / OWNER_FILE).write_text(owner)
    ledger.created(run, owner)
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
    run = Run(run_id, path)
    _ledger().opened(run)
    return run


def usage(owner: str | None = None) -> ArtifactUsage:
    """Bytes and number of runs ``owner`` (default: the current caller) keeps now."""
    return _ledger().usage(current_owner() if owner is None else owner)


def list_runs(limit: int = 50) -> list[str]:
    """The current caller's newest run ids, newest first."""
    root = settings().runs_dir
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if p.is_dir() and RUN_ID.match(p.name)), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in islice(filter(_visible, runs), limit)]
