"""Device admission: shared capacity, exclusive timing, fairness across callers, positions."""

from __future__ import annotations

import anyio
import pytest

from kfoundry.runner.scheduler import DeviceQueue

pytestmark = pytest.mark.anyio


async def test_shared_jobs_run_together_up_to_capacity() -> None:
    queue = DeviceQueue(capacity=2)
    entered: list[str] = []
    release = anyio.Event()

    async def job(name: str) -> None:
        async with queue.hold(exclusive=False):
            entered.append(name)
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in "abc":
                tg.start_soon(job, name)
            await anyio.wait_all_tasks_blocked()
            assert sorted(entered) == ["a", "b"] and queue.depth() == 1
            release.set()
    assert sorted(entered) == ["a", "b", "c"]


async def test_an_exclusive_job_waits_for_running_jobs_and_blocks_later_ones() -> None:
    queue = DeviceQueue(capacity=4)
    log: list[str] = []
    first_done = anyio.Event()
    exclusive_done = anyio.Event()

    async def shared(name: str, until: anyio.Event) -> None:
        async with queue.hold(exclusive=False):
            log.append(f"{name}+")
            await until.wait()
            log.append(f"{name}-")

    async def exclusive() -> None:
        async with queue.hold(exclusive=True):
            log.append("x+")
            await exclusive_done.wait()
            log.append("x-")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(shared, "a", first_done)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(exclusive)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(shared, "b", anyio.Event())  # queued behind the exclusive job
            await anyio.wait_all_tasks_blocked()
            assert log == ["a+"]
            first_done.set()
            await anyio.wait_all_tasks_blocked()
            assert log == ["a+", "a-", "x+"]
            exclusive_done.set()
            await anyio.wait_all_tasks_blocked()
            assert log[-2:] == ["x-", "b+"]
            tg.cancel_scope.cancel()


async def test_waiting_jobs_are_served_round_robin_across_owners() -> None:
    queue = DeviceQueue(capacity=1)
    order: list[str] = []
    gate = anyio.Event()

    async def job(owner: str, name: str) -> None:
        async with queue.hold(exclusive=False, owner=owner):
            order.append(name)
            if name == "blocker":
                await gate.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(job, "z", "blocker")
            await anyio.wait_all_tasks_blocked()
            for name in ("a1", "a2", "a3"):
                tg.start_soon(job, "alice", name)
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(job, "bob", "b1")
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert order == ["blocker", "a1", "b1", "a2", "a3"]


async def test_queued_jobs_hear_their_position() -> None:
    queue = DeviceQueue(capacity=1)
    heard: list[int] = []
    gate = anyio.Event()

    async def blocker() -> None:
        async with queue.hold(exclusive=False):
            await gate.wait()

    async def on_position(n: int) -> None:
        heard.append(n)

    async def waiter() -> None:
        async with queue.hold(exclusive=False, on_position=on_position):
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocker)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(blocker)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert heard[0] == 2 and heard[-1] == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    queue = DeviceQueue(capacity=1)
    gate = anyio.Event()

    async def blocker() -> None:
        async with queue.hold(exclusive=False):
            await gate.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocker)
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.05):
                async with queue.hold(exclusive=True):
                    pytest.fail("admitted while the device was busy")
            assert queue.depth() == 0
            gate.set()
    async with queue.hold(exclusive=True):
        assert queue.exclusive


async def test_background_work_waits_for_a_timing_job() -> None:
    queue = DeviceQueue(capacity=2)
    log: list[str] = []
    gate = anyio.Event()

    async def timing() -> None:
        async with queue.hold(exclusive=True):
            log.append("timing")
            await gate.wait()
            log.append("timing done")

    async def spare() -> None:
        async with queue.background():
            log.append("spare")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(timing)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(spare)
            await anyio.wait_all_tasks_blocked()
            assert log == ["timing"]
            gate.set()
    assert log == ["timing", "timing done", "spare"]


async def test_a_per_owner_cap_lets_other_owners_through() -> None:
    queue = DeviceQueue(capacity=3, per_owner=1)
    running: list[str] = []
    gate = anyio.Event()

    async def job(owner: str, name: str) -> None:
        async with queue.hold(exclusive=False, owner=owner):
            running.append(name)
            await gate.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(job, "alice", "a1")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(job, "alice", "a2")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(job, "bob", "b1")
            await anyio.wait_all_tasks_blocked()
            assert running == ["a1", "b1"]
            gate.set()
    assert running == ["a1", "b1", "a2"]


async def test_a_timing_job_is_admitted_during_background_work_but_quiesces_before_timing() -> None:
    queue = DeviceQueue(capacity=2)
    log: list[str] = []
    spare_done = anyio.Event()

    async def spare() -> None:
        async with queue.background():
            log.append("spare starts")
            await spare_done.wait()
            log.append("spare ready")

    async def timing() -> None:
        async with queue.hold(exclusive=True):
            log.append("admitted")
            await queue.quiesce()
            log.append("timing")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(spare)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(timing)
            await anyio.wait_all_tasks_blocked()
            assert log == ["spare starts", "admitted"]
            spare_done.set()
    assert log == ["spare starts", "admitted", "spare ready", "timing"]
