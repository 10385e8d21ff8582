"""A profiler wrapping a worker (ncu) runs outside the worker's sandbox, sharing with it only a network namespace made for the two."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from kfoundry import jail
from kfoundry.config import settings
from kfoundry.runner.process import Worker

pytestmark = pytest.mark.anyio

# Stands in for ncu: records who and where it runs, into a folder of the trusted side, then starts the worker.
RECORDER = (
    "import json,os,sys\n"
    "json.dump({'uid': os.geteuid(), 'net': os.readlink('/proc/self/ns/net'), 'pid': os.readlink('/proc/self/ns/pid')}, open(sys.argv[1], 'w'))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])"
)
needs_sandbox = pytest.mark.skipif(not jail.enabled() or bool(jail.private_network_reason()),
                                   reason=f"needs bubblewrap and a private network namespace: {jail.reason() or jail.private_network_reason()}")


@needs_sandbox
async def test_a_wrapper_runs_as_the_trusted_user_outside_the_sandbox_and_its_worker_shares_only_its_private_network(tmp_path: Path) -> None:
    record = tmp_path / "wrapper.json"
    async with anyio.create_task_group() as group:
        worker = Worker("cpu", group, wrapper=[sys.executable, "-S", "-I", "-c", RECORDER, str(record)])
        try:
            with anyio.fail_after(120):
                await worker.start()
            inner_net = os.readlink(f"/proc/{worker.inner}/ns/net")
            inner_pid_ns = os.readlink(f"/proc/{worker.inner}/ns/pid")
            inner_uid = os.stat(f"/proc/{worker.inner}").st_uid
        finally:
            await worker.kill()
    seen = json.loads(record.read_text())
    assert seen["uid"] == os.geteuid()
    assert seen["pid"] == os.readlink("/proc/self/ns/pid")
    assert seen["net"] != os.readlink("/proc/self/ns/net")
    assert inner_net == seen["net"]
    assert inner_pid_ns != seen["pid"]
    assert inner_uid == (settings().sandbox_uid if os.geteuid() == 0 else os.geteuid())


@needs_sandbox
def test_a_private_network_reaches_its_own_loopback_and_not_the_hosts() -> None:
    import socket
    import subprocess

    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = host.getsockname()[1]
    probe = (
        "import socket\n"
        "own = socket.socket(); own.bind(('127.0.0.1', 0)); own.listen()\n"
        "c = socket.socket(); c.connect(own.getsockname()); print('own ok')\n"
        f"h = socket.socket()\n"
        f"try:\n    h.connect(('127.0.0.1', {port})); print('host reached')\n"
        "except OSError as e:\n    print('host refused', e.errno)\n"
    )
    try:
        done = subprocess.run(jail.private_network([sys.executable, "-S", "-I", "-c", probe]), capture_output=True, text=True, timeout=60)
    finally:
        host.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["own ok", "host refused 111"]


# Stands in for ncu's last step: its report is written only after the worker it wraps has exited.
LATE_REPORTER = (
    "import subprocess,sys,time\n"
    "open(sys.argv[1], 'w').write('started\\n')\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "time.sleep(1)\n"
    "open(sys.argv[1], 'a').write(f'worker exited {code}\\n')\n"
    "sys.exit(code)"
)


@needs_sandbox
async def test_a_wrappers_report_written_after_its_worker_exits_is_complete_when_the_session_returns(tmp_path: Path) -> None:
    from kfoundry import examples
    from kfoundry.runner.pool import WorkerPool
    from kfoundry.runner.session import Ending, Plan, Session

    record = tmp_path / "report.txt"
    async with WorkerPool(spares=0) as pool:
        wrapped = await pool.acquire("cpu", wrapper=[sys.executable, "-S", "-I", "-c", LATE_REPORTER, str(record)])
        reference = await pool.acquire("cpu")
        session = Session(backend="cpp", device="cpu", precision="strict", problem=examples.source("elementwise"),
                          candidate=examples.source("elementwise", "cpp"), reference_worker=reference, candidate_worker=wrapped)
        with anyio.fail_after(240):
            report = await session.run(Plan(trials=[(1, "standard")]), 200)
        await pool.release(wrapped)
        await pool.release(reference)
    assert report.ending is Ending.done, report.error
    assert record.read_text() == "started\nworker exited 0\n"
