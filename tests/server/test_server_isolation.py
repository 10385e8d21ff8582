"""Hostile candidates end as states, leave nothing behind, and the same client keeps being served."""

from __future__ import annotations

import time

import anyio
import candidates
import pytest
from mcp import Client
from mcp_support import assert_only_spares_remain, assert_still_serving, verify

from kfoundry.config import settings

pytestmark = pytest.mark.anyio

SLACK_S = 15.0  # worker start-up and teardown on a slow shared 2-core host


async def test_an_exception_in_forward_is_a_runtime_error_with_type_message_and_traceback(client: Client) -> None:
    data = await verify(client, candidates.RAISES)

    assert data["state"] == "runtime_error", data
    error = data["error"]
    assert error["type"] == "ValueError"
    assert "boom: the kernel lost its way" in error["message"]
    assert "candidate.py" in error["traceback_tail"] and "in forward" in error["traceback_tail"]
    await assert_still_serving(client)


async def test_a_segfaulting_candidate_is_a_runtime_error_and_the_server_keeps_serving(client: Client) -> None:
    data = await verify(client, candidates.SEGFAULT)

    assert data["state"] == "runtime_error", data
    assert "SIGSEGV" in data["error"]["message"]
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_a_candidate_calling_os_exit_3_is_a_runtime_error_naming_exit_code_3(client: Client) -> None:
    data = await verify(client, candidates.EXIT_3)

    assert data["state"] == "runtime_error", data
    assert "exit code 3" in data["error"]["message"]
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_a_candidate_calling_sys_exit_is_a_runtime_error(client: Client) -> None:
    data = await verify(client, candidates.SYS_EXIT)

    assert data["state"] == "runtime_error", data
    assert data["error"]["type"] == "SystemExit"
    await assert_still_serving(client)


async def test_an_infinite_loop_times_out_within_its_timeout_and_the_server_keeps_serving(client: Client) -> None:
    started = time.monotonic()
    data = await verify(client, candidates.INFINITE_LOOP, timeout_s=3, within=3 + SLACK_S)
    elapsed = time.monotonic() - started

    assert data["state"] == "timeout", data
    assert "within 3 s" in data["error"]["message"]
    assert elapsed >= 3
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_a_memory_blow_up_ends_as_memory_error_or_timeout_within_its_timeout(client: Client) -> None:
    timeout_s = 30
    data = await verify(client, candidates.MEMORY_HOG, timeout_s=timeout_s, within=timeout_s + SLACK_S)

    assert data["state"] in ("runtime_error", "timeout"), data
    if data["state"] == "runtime_error":
        assert data["error"]["type"] == "MemoryError"
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_a_fork_bomb_times_out_and_every_forked_process_is_killed(client: Client) -> None:
    data = await verify(client, candidates.FORK_BOMB, timeout_s=3, within=3 + SLACK_S)

    assert data["state"] in ("timeout", "runtime_error"), data
    log = settings().runs_dir / data["run_id"] / "candidate-worker" / "stdout.log"
    forked = {line for line in log.read_text().splitlines() if line.startswith("forked ")}
    assert len(forked) > 10, "the fork bomb never got going, so this test proves nothing"
    # the forked processes run the worker's module too: none may be left but the server's own spares
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_gigabytes_of_stdout_time_out_and_the_server_answers_the_next_call(client: Client) -> None:
    data = await verify(client, candidates.STDOUT_FLOOD, timeout_s=3, within=3 + SLACK_S)

    assert data["state"] == "timeout", data
    flood = [f for f in data["findings"] if f["code"] == "stdout"]
    assert flood and not flood[0]["blocking"]
    assert_only_spares_remain()
    await assert_still_serving(client)


async def test_a_candidate_without_the_backend_marker_is_rejected_before_it_runs(client: Client) -> None:
    data = await verify(client, candidates.NO_BACKEND_MARKER)

    assert data["state"] == "rejected", data
    assert [f["code"] for f in data["findings"]] == ["backend_marker"]
    assert "load_cpp" in data["findings"][0]["message"]
    await assert_still_serving(client)


async def test_a_tensor_subclass_output_is_rejected(client: Client) -> None:
    data = await verify(client, candidates.TENSOR_SUBCLASS_OUTPUT)

    assert data["state"] == "rejected", data
    assert "output_type" in [f["code"] for f in data["findings"]]
    await assert_still_serving(client)


async def test_a_non_tensor_output_is_rejected_naming_its_type(client: Client) -> None:
    data = await verify(client, candidates.NON_TENSOR_OUTPUT)

    assert data["state"] == "rejected", data
    finding = next(f for f in data["findings"] if f["code"] == "output_type")
    assert "ndarray" in finding["message"]
    await assert_still_serving(client)


async def test_a_candidate_that_mutates_its_input_in_place_is_rejected(client: Client) -> None:
    data = await verify(client, candidates.MUTATES_INPUT)

    assert data["state"] == "rejected", data
    assert [f["code"] for f in data["findings"]] == ["input_mutation"]
    await assert_still_serving(client)


async def test_hostile_and_correct_calls_in_flight_together_each_get_their_own_verdict(client: Client) -> None:
    verdicts: dict[str, str] = {}

    async def run(label: str, candidate: str, timeout_s: float) -> None:
        verdicts[label] = (await verify(client, candidate, timeout_s=timeout_s, within=3 * SLACK_S))["state"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "segfault", candidates.SEGFAULT, 120)
        tg.start_soon(run, "loop", candidates.INFINITE_LOOP, 3)
        tg.start_soon(run, "correct", candidates.CORRECT_CPP, 120)

    assert verdicts == {"segfault": "runtime_error", "loop": "timeout", "correct": "correct"}
    assert_only_spares_remain()
