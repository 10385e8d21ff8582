"""A call the client cancels stops its job, and its run says it was cancelled."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import candidates
import pytest
from mcp import Client
from mcp_support import assert_only_spares_remain, assert_still_serving

from kfoundry.config import settings

pytestmark = pytest.mark.anyio


def cancelled_records(before: set[Path]) -> list[Path]:
    return [record for record in settings().runs_dir.glob("verify-*/cancelled.json") if record.parent not in before]


async def test_a_cancelled_verify_leaves_a_cancelled_record_and_no_result_in_its_run(client: Client) -> None:
    before = set(settings().runs_dir.glob("verify-*"))
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("trial"):
            running.set()

    arguments = {"backend": "cpp", "reference": candidates.REFERENCE, "candidate": candidates.INFINITE_LOOP, "trials": 1, "timeout_s": 300}
    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(partial(client.call_tool, "verify", arguments, progress_callback=on_progress))
            await running.wait()
            group.cancel_scope.cancel()
        while not (records := cancelled_records(before)):
            await anyio.sleep(0.05)

    record = json.loads(records[0].read_text())
    assert (record["state"], record["tool"]) == ("cancelled", "verify")
    assert 0 < record["after_s"] < 120
    assert not (records[0].parent / "result.json").exists()
    assert_only_spares_remain()
    await assert_still_serving(client)
