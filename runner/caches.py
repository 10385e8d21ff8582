"""Compiler caches (Triton, inductor, torch extensions) kept per token, never shared between tokens.

A worker compiles into a cache folder inside its own sandbox. Before a job the trusted side
lends it the caller's store (hard links where the file system allows, copies otherwise); after
the job it keeps what the worker added: plain files only, bounded in size and number. A
hostile candidate can therefore spoil only its own caller's later builds, never another
token's, and never the server's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path

from kfoundry import jail
from kfoundry.config import settings

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 << 20
MAX_KEPT_BYTES = 1 << 30
MAX_FILES = 20_000


def store_for(owner: str) -> Path:
    """The owner's cache store (named by a digest: token names never become paths)."""
    return settings().shared_cache_dir / hashlib.sha256(owner.encode()).hexdigest()[:24]


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def lend(store: Path, into: Path) -> int:
    """Fill a worker's (empty or warm) cache folder from ``store``; returns the files placed."""
    if not store.is_dir():
        return 0
    placed = 0
    for folder, dirs, files in os.walk(store):
        relative = Path(folder).relative_to(store)
        target_dir = into / relative
        if not target_dir.exists():
            target_dir.mkdir(parents=True, exist_ok=True)
            jail.hand_to_sandbox(target_dir)
        for name in files:
            target = target_dir / name
            if target.exists() or placed >= MAX_FILES:
                continue
            _place(Path(folder) / name, target)
            placed += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return placed


def keep(source: Path, store: Path) -> int:
    """Add to ``store`` the plain files a worker created in ``source``; returns how many were kept."""
    if not source.is_dir():
        return 0
    kept = kept_bytes = seen = 0
    for folder, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        relative = Path(folder).relative_to(source)
        for name in files:
            seen += 1
            if seen > MAX_FILES:
                logger.warning("cache harvest stopped at %d files", MAX_FILES)
                return kept
            path = Path(folder) / name
            try:
                info = os.lstat(path)
            except OSError:
                continue
            target = store / relative / name
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES or target.exists():
                continue
            if kept_bytes + info.st_size > MAX_KEPT_BYTES:
                return kept
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.parent / f".{name}.{os.getpid()}.part"
            try:
                _place(path, staged)
                os.replace(staged, target)
            except OSError:
                staged.unlink(missing_ok=True)
                continue
            kept += 1
            kept_bytes += info.st_size
    return kept
