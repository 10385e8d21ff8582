"""Untrusted code reaches nothing outside its own job: not the server, not another caller's job, not the project.

Each test is one attack from a security review, run as alice through a real server (``kfoundry serve``
over HTTP, or over stdio where the attack aims at stdio). The attacks that read assert three things:

- the attack ran to its end (its report says ``probe-finished``), so "nothing leaked" is not vacuous;
- what alice got back (the tool result and every artifact of her run) holds none of the planted secrets:
  the server's tokens, a ``KFOUNDRY_TEST_SECRET`` in its environment, another run's candidate, id and
  seeds, another job's files, the project's own files;
- the server still answers and bob's job, running beside the attack or started after it, ends ``correct``.

The others assert what their attack must not achieve (a forged verdict, a dead server, a changed file,
a process that outlives its job) and the same for bob. Attacks that only read share one server; those
that write or kill get their own.

Servers run in their own pid namespace with their own /proc and /dev/shm, behind bubblewrap's reaper
(pid 1). That changes nothing for the product's sandbox, which is nested inside; it bounds the damage on
a host where that sandbox fails: an attack that kills or scribbles on every process it can see then
reaches this test's server (and fails the test), never the machine running the tests. The one exception
is the server the last test SIGKILLs, which keeps the host's pids: a pid namespace would take its workers
down with it, which is what that test checks the product does by itself (its candidate only spins).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from attacks import (
    ATTACKER_GUARDRAILS,
    FINISHED,
    SCRIBBLES_ON_ITS_OWN_FDS,
    SECRET_PREFIX,
    calls_the_server,
    forges_json_rpc,
    hangs_beside_a_child,
    holds_secret,
    hostile_reference,
    kills_everything,
    marked,
    overwrites_runs_and_caches,
    reads_every_process,
    reads_files,
    starts_a_daemon,
    walks,
)
from candidates import CORRECT_CPP, PRELUDE_CORRECT, REFERENCE
from http_support import (
    STOP_WITHIN_S,
    TOKENS,
    Server,
    alive,
    connect,
    free_port,
    healthy,
    serve_command,
    server_env,
    verify,
    verify_arguments,
    wait_exit,
)
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.message import SessionMessage
from mcp.types import CallToolResult

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = [REPO / "pyproject.toml", REPO / "README.md", REPO / "tests" / "http" / "http_support.py"]
#: how long bob's job keeps its secret files and runs beside an attack
HOLD_S = 30.0
#: how long processes of a finished job (or of a killed server) may take to be gone
GONE_WITHIN_S = 20.0
CALL_WITHIN_S = 180.0


def planted(name: str) -> str:
    return f"{SECRET_PREFIX}-{name}-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Planted:
    """A server whose tokens and environment carry secrets an attack must not get."""

    server: Server
    env_secret: str
    sandbox_root: Path

    def secrets(self) -> dict[str, str]:
        return {"alice's token": self.server.tokens["alice"], "bob's token": self.server.tokens["bob"], "KFOUNDRY_TEST_SECRET": self.env_secret}


@dataclass(frozen=True)
class BobsRun:
    run_id: str
    marker: str
    seeds: list[str]

    def secrets(self) -> dict[str, str]:
        return {"bob's marker": self.marker, "bob's run id": self.run_id, **{f"bob's seed {s}": s for s in self.seeds}}


# -- servers in their own pid namespace ---------------------------------------------------------


def contained(command: list[str], own_pids: bool = True) -> list[str]:
    """``command`` with a /dev/shm of its own and, with ``own_pids``, in a new pid namespace with its own /proc.

    There the command is pid 2: bubblewrap's reaper is pid 1, which kill(-1) spares; the command is not.
    The private /dev/shm keeps what workers leave there (they name it after the server's pid, 2 in every
    such namespace) from meeting another server's, and goes away with the server.
    """
    identity = ["--cap-add", "ALL"] if os.geteuid() == 0 else ["--unshare-user", "--uid", str(os.geteuid()), "--gid", str(os.getegid())]
    pids = ["--unshare-pid", "--proc", "/proc"] if own_pids else []
    return ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/dev/shm", *pids, "--die-with-parent", *identity, "--", *command]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ..., starttime at 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[tuple[int, str]]:
    """Every live process under ``root``, as (pid, start time) so a reused pid is not taken for it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (fields := _stat(pid)) is not None:
            found.append((pid, fields[19]))
        todo.extend(children.get(pid, []))
    return found


def still_there(processes: list[tuple[int, str]]) -> list[int]:
    return [pid for pid, start in processes if (fields := _stat(pid)) is not None and fields[19] == start and alive(pid)]


def with_mark(mark: str) -> list[int]:
    """Live processes with ``mark`` on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_all(pids: list[int]) -> None:
    """Clean-up after a failed check: these processes were started by this test's jobs."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


async def start_contained(home: Path, env: dict[str, str], tokens: dict[str, str], cwd: Path | None = None, own_pids: bool = True) -> Server:
    """``kfoundry serve --transport http`` inside ``contained`` (started from ``cwd``); waits (bounded) until /healthz answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "server.log"
    with log.open("wb") as sink:
        command = contained(serve_command(port), own_pids)
        proc = await anyio.open_process(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    return await healthy(Server(proc, f"http://127.0.0.1:{port}", home, log, dict(tokens)), stop_contained)


def inside(server: Server) -> list[int]:
    """The server process itself under bubblewrap."""
    return [pid for pid, _ in descendants(server.proc.pid) if b"kfoundry.cli" in _cmdline(pid)]


async def stop_contained(server: Server) -> None:
    """SIGTERM to the server inside (bubblewrap does not pass signals on), then the namespace goes with bubblewrap."""
    for pid in inside(server):
        os.kill(pid, signal.SIGTERM)
    try:
        await wait_exit(server.proc, STOP_WITHIN_S)
    except TimeoutError:
        server.proc.kill()
        with anyio.CancelScope(shield=True):
            await server.proc.wait()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def planted_env(home: Path, tokens: dict[str, str], env_secret: str, sandbox_root: Path) -> dict[str, str]:
    return server_env(home, tokens, KFOUNDRY_TEST_SECRET=env_secret, KFOUNDRY_SANDBOX_ROOT=str(sandbox_root))


@contextmanager
def sandbox_root() -> Iterator[Path]:
    """A KFOUNDRY_SANDBOX_ROOT of one server's own: world-traversable, as the sandbox user must reach its scratch through it."""
    root = Path(tempfile.mkdtemp(prefix="kfoundry-reach-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def planted_server(base: Path, cwd: Path | None = None) -> AsyncIterator[Planted]:
    tokens = {"alice": planted("alice"), "bob": planted("bob")}
    env_secret = planted("env")
    with sandbox_root() as root:
        server = await start_contained(base / "home", planted_env(base / "home", tokens, env_secret, root), tokens, cwd)
        try:
            yield Planted(server, env_secret, root)
        finally:
            await stop_contained(server)


@pytest.fixture(scope="module")
async def shared(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Planted]:
    """One planted server for the attacks that only read; attacks that write or kill get their own."""
    async with planted_server(tmp_path_factory.mktemp("reach")) as running:
        yield running


@pytest.fixture
async def fresh(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Planted]:
    async with planted_server(tmp_path) as running:
        yield running


async def make_bobs_run(server: Server) -> BobsRun:
    marker = planted("bob")
    async with connect(server, "bob") as bob:
        data = await verify(bob, marked(marker), within=CALL_WITHIN_S)
    assert data["state"] == "correct", data
    job = json.loads((server.home / "runs" / data["run_id"] / "job.json").read_text())
    return BobsRun(data["run_id"], marker, [str(seed) for seed, _ in job.get("trial_seeds", [])])


@pytest.fixture(scope="module")
async def bobs_run(shared: Planted) -> BobsRun:
    """A finished run of bob's on the shared server: his candidate (and its kernel) carry his marker."""
    return await make_bobs_run(shared.server)


# -- what came back -----------------------------------------------------------------------------


def came_back(result: Mapping[str, Any] | str, home: Path) -> str:
    """The result as the client got it, and every artifact of its run."""
    parts = [result if isinstance(result, str) else json.dumps(result)]
    run_id = None if isinstance(result, str) else result.get("run_id")
    run = home / "runs" / str(run_id)
    if run_id and run.is_dir():
        parts += [f"--- {p.relative_to(run)}\n{p.read_text(errors='replace')}" for p in sorted(run.rglob("*")) if p.is_file()]
    return "\n".join(parts)


def leaked(planted_secrets: Mapping[str, str], text: str) -> list[str]:
    return [name for name, value in planted_secrets.items() if value in text]


def report(text: str) -> str:
    """The attack's own lines, for the failure message."""
    lines = [line for line in text.splitlines() if re.match(r"(found|read|saw|no |cannot|refused|connected|SIGKILL|kill|changed|forged)", line)]
    return "\n".join(dict.fromkeys(lines))[-4000:]


def assert_nothing_leaked(result: Mapping[str, Any] | str, home: Path, planted_secrets: Mapping[str, str]) -> None:
    text = came_back(result, home)
    assert FINISHED in text, f"the attack did not run to its end:\n{text[-3000:]}"
    assert leaked(planted_secrets, text) == [], report(text)


async def attack(server: Server, candidate: str, **extra: Any) -> dict[str, Any]:
    async with connect(server, "alice") as alice:
        return await verify(alice, candidate, within=CALL_WITHIN_S, guardrails=ATTACKER_GUARDRAILS, **extra)


async def answers(server: Server) -> bool:
    try:
        with anyio.fail_after(10):
            return bool((await server.health())["devices"])
    except (httpx2.TransportError, TimeoutError):
        return False


async def assert_bob_still_served(server: Server) -> None:
    assert await answers(server), f"the server stopped answering /healthz:\n{server.log_tail()}"
    async with connect(server, "bob") as bob:
        data = await verify(bob, CORRECT_CPP, within=CALL_WITHIN_S)
    assert data["state"] == "correct", data


@dataclass
class Beside:
    alice: dict[str, Any] | BaseException
    bob: dict[str, Any] | BaseException
    #: bob's job was still running when alice's result came back
    overlapped: bool


async def attack_beside_bob(server: Server, candidate: str, marker: str) -> Beside:
    """Bob's job plants ``marker`` and holds; once his candidate runs, alice's attack runs. Failures are kept, not raised."""
    outcome: dict[str, Any] = {}
    running = anyio.Event()

    async def progress(fraction: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("trial"):
            running.set()

    async def bobs() -> None:
        try:
            async with connect(server, "bob") as bob:
                outcome["bob"] = await verify(bob, holds_secret(marker, HOLD_S), within=CALL_WITHIN_S, progress=progress, guardrails=ATTACKER_GUARDRAILS)
        except Exception as exc:  # noqa: BLE001 - kept for the assertion
            outcome["bob"] = exc
        running.set()

    async with anyio.create_task_group() as group:
        group.start_soon(bobs)
        with anyio.fail_after(CALL_WITHIN_S):
            await running.wait()
        try:
            outcome["alice"] = await attack(server, candidate)
        except Exception as exc:  # noqa: BLE001 - kept for the assertion
            outcome["alice"] = exc
        overlapped = "bob" not in outcome
    return Beside(outcome["alice"], outcome["bob"], overlapped)


# -- reading ------------------------------------------------------------------------------------


async def test_a_candidate_reading_every_process_environ_and_cmdline_gets_no_token_or_server_secret(shared: Planted) -> None:
    result = await attack(shared.server, reads_every_process())

    assert_nothing_leaked(result, shared.server.home, shared.secrets())
    await assert_bob_still_served(shared.server)


async def test_a_candidate_walking_the_sandbox_root_tmp_and_dev_shm_finds_nothing_of_bobs_running_job(shared: Planted) -> None:
    marker = planted("bob-scratch")
    roots = [str(shared.sandbox_root), f"/tmp/kfoundry-{os.geteuid()}", "/dev/shm", "/tmp", "/var/tmp"]

    beside = await attack_beside_bob(shared.server, walks(*roots), marker)

    assert isinstance(beside.alice, dict), beside.alice
    assert beside.overlapped, "bob's job ended before the attack did: nothing was there to find"
    assert_nothing_leaked(beside.alice, shared.server.home, {"bob's marker": marker})
    assert isinstance(beside.bob, dict) and beside.bob["state"] == "correct", beside.bob


async def test_a_candidate_walking_the_artifact_store_gets_no_other_run(shared: Planted, bobs_run: BobsRun) -> None:
    result = await attack(shared.server, walks(str(shared.server.home / "runs"), show=True))

    assert_nothing_leaked(result, shared.server.home, bobs_run.secrets())
    await assert_bob_still_served(shared.server)


async def test_a_server_started_from_the_folder_holding_its_home_shows_candidates_nothing_of_it(tmp_path: Path) -> None:
    """``python -m kfoundry.cli serve`` puts its working directory on sys.path: run from $HOME it holds ~/.cache/kfoundry."""
    tmp_path.chmod(0o755)  # as a home folder often is
    async with planted_server(tmp_path, cwd=tmp_path) as fresh:
        bobs = await make_bobs_run(fresh.server)

        result = await attack(fresh.server, walks(str(tmp_path), show=True))

        assert_nothing_leaked(result, fresh.server.home, {**fresh.secrets(), **bobs.secrets()})
        await assert_bob_still_served(fresh.server)


async def test_a_candidate_walking_the_build_caches_gets_no_other_callers_kernel(shared: Planted, bobs_run: BobsRun) -> None:
    home = shared.server.home
    result = await attack(shared.server, walks(str(home / "cache"), str(home / "worker-cache"), str(home / "scratch")))

    assert_nothing_leaked(result, home, {"bob's marker": bobs_run.marker})
    await assert_bob_still_served(shared.server)


async def test_a_candidate_cannot_read_the_project_tree(shared: Planted) -> None:
    digests = {f"{p.name} (sha256)": hashlib.sha256(p.read_bytes()).hexdigest() for p in PROJECT_FILES}

    result = await attack(shared.server, reads_files(*map(str, PROJECT_FILES)))

    assert_nothing_leaked(result, shared.server.home, digests)
    await assert_bob_still_served(shared.server)


@pytest.mark.parametrize("tool", ["verify", "translate_reference"])
async def test_a_hostile_reference_gets_no_secret_no_other_run_and_no_project_file(shared: Planted, bobs_run: BobsRun, tool: str) -> None:
    """Reference code is the caller's too: it runs where the candidate does, and reads what the candidate reads."""
    reference = hostile_reference(str(shared.server.home), list(map(str, PROJECT_FILES)))
    arguments = verify_arguments(CORRECT_CPP, reference=reference, guardrails=ATTACKER_GUARDRAILS)
    if tool == "translate_reference":
        arguments = {"reference": reference, "target_backend": "cpp"}
    digests = {f"{p.name} (sha256)": hashlib.sha256(p.read_bytes()).hexdigest() for p in PROJECT_FILES}

    async with connect(shared.server, "alice") as alice:
        with anyio.fail_after(CALL_WITHIN_S):
            result = await alice.call_tool(tool, arguments)
    answer: dict[str, Any] | str = result.structured_content or " ".join(getattr(b, "text", "") for b in result.content)

    assert_nothing_leaked(answer, shared.server.home, {**shared.secrets(), **bobs_run.secrets(), **digests})
    await assert_bob_still_served(shared.server)


# -- reaching the server ------------------------------------------------------------------------


async def test_a_candidate_calling_the_servers_port_on_loopback_gets_no_reply(shared: Planted) -> None:
    port = int(shared.server.url.rsplit(":", 1)[1])

    result = await attack(shared.server, calls_the_server(port))

    text = came_back(result, shared.server.home)
    assert FINISHED in text, text[-3000:]
    assert "HTTP/1." not in text, report(text)
    await assert_bob_still_served(shared.server)


async def test_a_candidate_killing_every_process_it_can_see_leaves_the_server_and_bobs_running_job_alive(fresh: Planted) -> None:
    beside = await attack_beside_bob(fresh.server, kills_everything(), planted("bob-kill"))

    assert await answers(fresh.server), f"the server died:\n{fresh.server.log_tail()}"
    assert isinstance(beside.bob, dict) and beside.bob["state"] == "correct", beside.bob
    assert isinstance(beside.alice, dict), beside.alice
    assert beside.overlapped, "bob's job ended before the attack did"
    assert FINISHED in came_back(beside.alice, fresh.server.home)
    await assert_bob_still_served(fresh.server)


async def test_a_candidate_cannot_overwrite_another_callers_result_or_the_build_cache(fresh: Planted) -> None:
    home = fresh.server.home
    bobs = await make_bobs_run(fresh.server)
    bobs_files = {p: p.read_bytes() for p in (home / "runs" / bobs.run_id).rglob("*") if p.is_file()}
    cached = {p: p.read_bytes() for p in (home / "cache").rglob("*") if p.is_file()}
    mark = f"kfforge-{secrets.token_hex(12)}"

    result = await attack(fresh.server, overwrites_runs_and_caches(str(home), mark))

    alices_run = home / "runs" / result["run_id"]
    assert FINISHED in came_back(result, home)
    assert {p for p in (home / "runs" / bobs.run_id).rglob("*") if p.is_file()} == set(bobs_files)
    assert [p for p, content in bobs_files.items() if p.read_bytes() != content] == []
    assert [p for p, content in cached.items() if not p.is_file() or p.read_bytes() != content] == []
    forged = [p for p in home.rglob("*") if alices_run not in p.parents and (mark in p.name or (p.is_file() and mark.encode() in p.read_bytes()))]
    assert forged == []
    async with connect(fresh.server, "bob") as bob:
        again = await verify(bob, marked(bobs.marker), within=CALL_WITHIN_S)
        with anyio.fail_after(30):
            stored = await bob.read_resource(f"kfoundry://runs/{bobs.run_id}/result.json")
    assert again["state"] == "correct", again
    assert json.loads(stored.contents[0].text)["run_id"] == bobs.run_id


# -- the candidate's own channel ----------------------------------------------------------------


async def test_a_candidate_writing_garbage_into_its_own_descriptors_is_rejected_or_a_runtime_error_never_correct(shared: Planted) -> None:
    result = await attack(shared.server, SCRIBBLES_ON_ITS_OWN_FDS)

    assert re.search(r"scribbling on \[\d", came_back(result, shared.server.home)), "the candidate found no descriptor to write to"
    assert result["state"] in ("rejected", "runtime_error"), result
    assert (result["error"] or {}).get("message") or result["findings"], result
    await assert_bob_still_served(shared.server)


@asynccontextmanager
async def tapped(params: StdioServerParameters, heard: list[str]) -> AsyncIterator[Any]:
    """A stdio transport that records every message the client receives before handing it on."""
    async with stdio_client(params) as (read, write), anyio.create_task_group() as group:
        relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage | Exception](64)

        async def relay() -> None:
            async with relay_in:
                async for item in read:
                    heard.append(item.message.model_dump_json() if isinstance(item, SessionMessage) else repr(item))
                    try:
                        await relay_in.send(item)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return

        group.start_soon(relay)
        yield relay_out, write
        group.cancel_scope.cancel()


async def call_or_failure(client: Client, arguments: dict[str, Any]) -> CallToolResult | Exception:
    try:
        return await client.call_tool("verify", arguments)
    except Exception as exc:  # noqa: BLE001 - a forged answer can make the call fail: kept for the assertions
        return exc


async def test_a_candidate_forging_json_rpc_into_every_pipe_cannot_speak_for_the_stdio_server(tmp_path: Path) -> None:
    home, mark = tmp_path / "home", f"kfforge-{secrets.token_hex(12)}"
    command = contained([sys.executable, "-m", "kfoundry.cli", "serve"])
    heard: list[str] = []
    honest = {"backend": "cpp", "reference": REFERENCE, "candidate": PRELUDE_CORRECT, "trials": 1, "timeout_s": 120}

    with sandbox_root() as root, anyio.fail_after(3 * CALL_WITHIN_S):
        env = server_env(home, None, KFOUNDRY_TEST_SECRET=planted("env"), KFOUNDRY_SANDBOX_ROOT=str(root))
        params = StdioServerParameters(command=command[0], args=command[1:], env=env)
        async with Client(tapped(params, heard)) as local:
            template = await local.call_tool("verify", honest)
            assert template.structured_content is not None and template.structured_content["state"] == "correct", template.content
            attacked = {**honest, "candidate": forges_json_rpc(mark, template.structured_content), "guardrails": ATTACKER_GUARDRAILS}
            forged = await call_or_failure(local, attacked)
            after = await call_or_failure(local, honest)

    assert [message[:300] for message in heard if mark in message] == []
    assert isinstance(forged, CallToolResult) and forged.structured_content is not None, forged
    assert forged.structured_content["state"] != "correct", forged.structured_content
    assert FINISHED in came_back(forged.structured_content, home)
    assert isinstance(after, CallToolResult) and after.structured_content is not None, after
    assert after.structured_content["state"] == "correct", after.structured_content


# -- leftovers ----------------------------------------------------------------------------------


async def test_a_daemon_started_by_a_candidate_is_gone_soon_after_its_job_ends(shared: Planted) -> None:
    mark = f"kfdaemon-{secrets.token_hex(12)}"
    try:
        result = await attack(shared.server, starts_a_daemon(mark))
        assert "daemon-up" in came_back(result, shared.server.home), "the daemon never ran"
        with anyio.move_on_after(GONE_WITHIN_S):
            while with_mark(mark):
                await anyio.sleep(0.1)
        assert with_mark(mark) == [], f"the daemon outlived its job by {GONE_WITHIN_S:g} s"
    finally:
        kill_all(with_mark(mark))
    await assert_bob_still_served(shared.server)


async def test_a_hung_worker_stops_spinning_soon_after_its_server_is_killed(tmp_path: Path) -> None:
    mark = f"kfhang-{secrets.token_hex(12)}"
    with sandbox_root() as root:
        env = server_env(tmp_path / "home", KFOUNDRY_SANDBOX_ROOT=str(root))
        server = await start_contained(tmp_path / "home", env, TOKENS, own_pids=False)
        await hung_worker_stops(server, mark)


async def hung_worker_stops(server: Server, mark: str) -> None:
    """Bob's candidate hangs beside a marked child; the server is SIGKILLed; every process it had is gone in time."""
    job: list[tuple[int, str]] = []
    try:
        async with anyio.create_task_group() as group:

            async def hang() -> None:
                try:
                    async with connect(server, "bob", terminate_on_close=False) as bob:
                        await bob.call_tool("verify", verify_arguments(hangs_beside_a_child(mark), guardrails=ATTACKER_GUARDRAILS))
                except Exception:  # noqa: BLE001 - the server is killed under this call: any ending will do
                    pass

            group.start_soon(hang)
            with anyio.fail_after(CALL_WITHIN_S):
                while not with_mark(mark):
                    await anyio.sleep(0.1)
            job = descendants(server.proc.pid)
            kill_all(inside(server))
            await wait_exit(server.proc, STOP_WITHIN_S)
            with anyio.move_on_after(GONE_WITHIN_S):
                while still_there(job) or with_mark(mark):
                    await anyio.sleep(0.1)
            group.cancel_scope.cancel()
        survivors = [_cmdline(pid)[:120] for pid in still_there(job)]
        assert survivors == [], f"{len(survivors)} of the server's {len(job)} processes outlived it by {GONE_WITHIN_S:g} s"
        assert with_mark(mark) == []
    finally:
        kill_all(still_there(job) + with_mark(mark))
        await stop_contained(server)
