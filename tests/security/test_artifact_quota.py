"""The run store stays bounded: runs expire, a caller past the artifact quota loses their own oldest runs, and one run never outgrows the quota."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfoundry import config
from kfoundry.artifacts import OWNER_FILE, acting_for, new_run, usage
from kfoundry.errors import BadRequest
from kfoundry.schema import ArtifactUsage

KB = 1000
QUOTA = 1 << 20  # KFOUNDRY_ARTIFACT_QUOTA_MB=1


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KFOUNDRY_HOME", str(tmp_path))
    monkeypatch.setenv("KFOUNDRY_ARTIFACT_QUOTA_MB", "1")
    monkeypatch.setenv("KFOUNDRY_ARTIFACT_TTL_HOURS", "24")
    config.settings.cache_clear()
    yield tmp_path
    config.settings.cache_clear()


def finished_run(owner: str, size: int) -> str:
    """A run ``owner`` made and filled with ``size`` bytes; its call is over (nothing holds the ``Run``)."""
    with acting_for(owner):
        run = new_run("verify")
        run.write("result.bin", b"x" * size)
    return run.id


def left_on_disk(home: Path, owner: str, run_id: str, age_hours: float) -> Path:
    """A run another process made ``age_hours`` ago."""
    path = home / "runs" / run_id
    path.mkdir(parents=True)
    (path / OWNER_FILE).write_text(owner)
    (path / "result.json").write_text("{}")
    then = time.time() - age_hours * 3600
    os.utime(path / OWNER_FILE, (then, then))
    return path


def existing(home: Path, run_ids: list[str]) -> list[str]:
    return [r for r in run_ids if (home / "runs" / r).is_dir()]


def test_a_caller_past_the_quota_loses_their_own_oldest_runs_and_never_another_callers(home: Path) -> None:
    bobs = [finished_run("bob", 400 * KB) for _ in range(2)]
    alices = [finished_run("alice", 400 * KB) for _ in range(3)]

    with acting_for("alice"):
        newest = new_run("profile").id

    assert existing(home, alices) == alices[1:]
    assert (home / "runs" / newest).is_dir()
    assert existing(home, bobs) == bobs
    with acting_for("alice"):
        assert usage().bytes <= QUOTA


def test_the_quota_sweep_keeps_going_until_the_caller_is_under_it(home: Path) -> None:
    alices = [finished_run("alice", 300 * KB) for _ in range(3)]
    big = finished_run("alice", 900 * KB)

    finished_run("alice", 10 * KB)

    assert existing(home, [*alices, big]) == [big]


def test_a_run_whose_call_is_still_in_flight_is_never_removed_for_the_quota(home: Path) -> None:
    with acting_for("alice"):
        in_flight = new_run("verify")
        in_flight.write("result.bin", b"x" * (400 * KB))
    older = [finished_run("alice", 400 * KB) for _ in range(2)]

    finished_run("alice", 10 * KB)

    assert in_flight.path.is_dir()
    assert existing(home, older) == older[1:]


def test_runs_older_than_the_time_to_live_are_removed_whoever_made_them(home: Path) -> None:
    stale_alice = left_on_disk(home, "alice", "verify-20200101T000000-aaaaaa", age_hours=25)
    stale_bob = left_on_disk(home, "bob", "profile-20200101T000000-bbbbbb", age_hours=200)
    fresh_bob = left_on_disk(home, "bob", "compile-20200101T000000-cccccc", age_hours=23)

    with acting_for("carol"):
        new_run("compile")

    assert not stale_alice.exists() and not stale_bob.exists()
    assert fresh_bob.is_dir()
    assert [p.name for p in (home / "runs").iterdir() if p.name.startswith(".")] == []


def test_a_write_that_would_take_one_run_past_the_quota_is_refused_and_leaves_nothing(home: Path) -> None:
    with acting_for("alice"):
        run = new_run("analyze")
        run.write("image-0.png", b"x" * (600 * KB))

        with pytest.raises(BadRequest, match="over the artifact quota of 1 MB"):
            run.write("image-1.png", b"x" * (600 * KB))
        with pytest.raises(BadRequest, match="over the artifact quota"):
            run.write("profile.txt", "y" * (QUOTA + 1))

    assert sorted(p.name for p in run.path.iterdir()) == ["image-0.png", OWNER_FILE]


def test_rewriting_a_file_counts_only_its_new_size(home: Path) -> None:
    with acting_for("alice"):
        run = new_run("verify")
        run.write("result.json", b"x" * (700 * KB))
        run.write("result.json", b"y" * (700 * KB))

        assert usage().bytes == 700 * KB + len("alice")


def test_usage_counts_a_callers_runs_and_bytes_including_files_written_beside_the_store(home: Path) -> None:
    first = finished_run("alice", 1000)
    finished_run("alice", 2345)
    finished_run("bob", 7)
    left_on_disk(home, "alice", "compile-20990101T000000-dddddd", age_hours=1)
    # A worker's logs are copied into the run folder directly, not through Run.write.
    logs = home / "runs" / first / "reference-worker"
    logs.mkdir()
    (logs / "stderr.log").write_bytes(b"z" * 500)

    with acting_for("alice"):
        assert usage() == ArtifactUsage(bytes=1000 + 2345 + 500 + 3 * len("alice") + len("{}"), runs=3)
    assert usage("bob") == ArtifactUsage(bytes=7 + len("bob"), runs=1)
    assert usage("nobody") == ArtifactUsage()


def test_a_file_rewritten_after_a_sweep_measured_its_run_is_counted_at_its_new_size(home: Path) -> None:
    with acting_for("alice"):
        run = new_run("verify")
        run.write("result.json", b"x" * 100)
        new_run("compile")  # its sweep measures the first run while it is in flight
        run.write("result.json", b"x" * (900 * KB))
        del run

        assert usage() == ArtifactUsage(bytes=900 * KB + 2 * len("alice"), runs=2)
