"""`backends` over MCP on a CPU-only host with TRITON_INTERPRET=1."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp_support import ok

from kfoundry import config
from kfoundry.artifacts import LOCAL, acting_for, new_run, usage
from kfoundry.jail import describe
from kfoundry.runner.wire import MAX_FRAME
from kfoundry.schema import ArtifactUsage
from kfoundry.tools.backends import limits

pytestmark = pytest.mark.anyio


async def test_cpp_is_available_triton_runs_interpreted_and_cpp_is_best(client: Client) -> None:
    data = await ok(client, "backends", {})

    by_name = {b["name"]: b for b in data["backends"]}
    assert by_name["cpp"]["available"] is True
    assert by_name["cpp"]["version"]
    assert by_name["triton"]["available"] is True
    assert by_name["triton"]["interpreted"] is True
    assert "interpreter" in by_name["triton"]["reason"]
    assert data["best"] == "cpp"
    assert data["devices"] == ["cpu"]


async def test_the_report_lists_the_limits_in_force_and_how_untrusted_code_is_isolated(client: Client) -> None:
    data = await ok(client, "backends", {})

    s = config.settings()
    assert data["limits"] == {
        "worker_memory_mb": s.memory_limit_mb, "file_mb": s.file_limit_mb, "processes": s.max_processes,
        "payload_bytes": s.max_payload_bytes, "frame_bytes": MAX_FRAME, "build_memory_mb": s.build_memory_mb,
        "build_cpu_s": s.build_cpu_s, "artifact_quota_mb": s.artifact_quota_mb, "artifact_ttl_hours": s.artifact_ttl_hours,
        "artifacts": usage(LOCAL).model_dump(),
    }
    assert data["sandbox"] == describe()


def test_the_limits_count_only_the_callers_own_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFOUNDRY_HOME", str(tmp_path))
    config.settings.cache_clear()
    try:
        with acting_for("alice"):
            new_run("verify").write("result.json", b"x" * 1000)
        with acting_for("bob"):
            new_run("compile").write("result.json", b"x" * 50)

        with acting_for("alice"):
            assert limits().artifacts == ArtifactUsage(bytes=1000 + len("alice"), runs=1)
    finally:
        config.settings.cache_clear()
