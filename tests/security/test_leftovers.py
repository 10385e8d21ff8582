"""A server killed without cleaning up leaves folders; the next server sweeps exactly those."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

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


def _freezer_parent() -> Path | None:
    from kfoundry.runner.sandbox import _freezer_parent as parent

    return parent()


@pytest.mark.skipif(_freezer_parent() is None, reason="no cgroup-v1 freezer this process may write to (needs root and /sys/fs/cgroup/freezer)")
def test_a_worker_left_frozen_by_a_killed_server_is_thawed_killed_and_its_cgroup_removed() -> None:
    parent = _freezer_parent()
    assert parent is not None
    group = parent / f"w{_dead_pid()}-1-frozen"
    group.mkdir()
    worker = subprocess.Popen(["sleep", "600"])
    try:
        (group / "cgroup.procs").write_text(str(worker.pid))
        (group / "freezer.state").write_text("FROZEN")
        # A frozen process ignores even SIGKILL until thawed: without the sweep it would stay for good.
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=0.5)

        sweep_leftovers(parent)

        assert worker.wait(timeout=30) == -signal.SIGKILL
        assert not group.exists()
    finally:
        if group.exists():
            (group / "freezer.state").write_text("THAWED")
            worker.kill()
            worker.wait(timeout=30)
            group.rmdir()
