"""A server killed without cleaning up leaves folders; the next server sweeps exactly those."""

from __future__ import annotations

import os
from pathlib import Path

from kfoundry.runner.sandbox import sweep_leftovers


def _dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_folders_of_a_dead_server_are_swept_and_live_ones_are_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"w{_dead_pid()}-1-abc123"
    own = tmp_path / f"w{os.getpid()}-2-def456"
    live = tmp_path / "w1-3-fed654"  # pid 1 is always there
    unrelated = tmp_path / "build-xyz"
    for folder in (dead, own, live, unrelated):
        (folder / "peer").mkdir(parents=True)
        (folder / "peer" / "in-0-0.bin").write_bytes(b"x")

    removed = sweep_leftovers(tmp_path)

    assert removed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (own, live, unrelated))
