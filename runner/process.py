"""The trusted side's handle on one worker process: spawn, talk (typed), freeze, kill, read its logs."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup, UNIXSocketStream

from kfoundry import jail
from kfoundry.backends import all_backends
from kfoundry.config import settings
from kfoundry.runner.handover import exchange_root
from kfoundry.runner.sandbox import Containment, Freezer, inner_pid, make_workdir, remove_workdir, thread_count, worker_env
from kfoundry.runner.wire import HEADER, MAX_FDS, MAX_FRAME, Ready, Wire, WireError, close_all, decode, device_refs, encode

logger = logging.getLogger(__name__)
_ids = itertools.count(1)
READY_TIMEOUT_S = 180.0
REAP_TIMEOUT_S = 10.0
#: how long a worker may take to stop once asked (threads in uninterruptible sleep, a busy driver)
FREEZE_TIMEOUT_S = 5.0


class WorkerGone(RuntimeError):
    """The worker closed its channel (exited, crashed or was killed)."""


def _backend_env(device: str, caches: Path) -> dict[str, str]:
    """What every backend needs in a worker's environment: its own variables and its compiler caches."""
    env: dict[str, str] = {}
    shared = caches
    for backend in all_backends():
        env.update(backend.cache_env(shared))
        env.update(backend.worker_env(device))
    return env


class LogSink:
    """Keeps the head and tail of what a worker writes, however much it writes."""

    def __init__(self, keep: int = 128_000) -> None:
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.keep:
                del self.tail[: len(self.tail) - self.keep]

    def text(self, limit: int) -> str:
        if self.total <= self.keep:
            return bytes(self.head[-limit:]).decode(errors="replace")
        skipped = self.total - len(self.head) - len(self.tail)
        if limit >= len(self.head) + len(self.tail):
            middle = f"\n[... {skipped} bytes not kept ...]\n".encode() if skipped else b""
            return bytes(self.head + middle + self.tail).decode(errors="replace")
        return bytes(self.tail[-limit:]).decode(errors="replace")


async def _drain(stream: Any, sink: LogSink) -> None:
    try:
        async for chunk in stream:
            sink.feed(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return


class Worker:
    """One sandboxed process serving one job."""

    def __init__(self, device: str, task_group: TaskGroup, wrapper: list[str] | None = None) -> None:
        self.device = device
        self.task_group = task_group
        self.wrapper = list(wrapper or [])
        self.logs = {"stdout": LogSink(), "stderr": LogSink()}
        # the random part keeps a restarted server (same pid) clear of folders a killed one left behind
        self.name = f"w{os.getpid()}-{next(_ids)}-{secrets.token_hex(3)}"
        self.dir = make_workdir(self.name)
        # The worker writes what it shares into ``own/``; the trusted side links the other worker's files into
        # ``peer/`` and delivers builds into ``built/``. Only ``own/`` is the worker's: it cannot swap the
        # others for links to places the trusted side would then write into.
        self.exchange = exchange_root() / self.name
        self.exchange.mkdir(mode=0o755)
        for sub in ("own", "peer", "built"):
            (self.exchange / sub).mkdir(mode=0o755)
        self.sandboxed = jail.enabled()
        if self.sandboxed:
            jail.hand_to_sandbox(self.dir)
            jail.hand_to_sandbox(self.exchange / "own")
        self.cage = Containment(self.name)
        self.freezer = Freezer(self.name, self.cage)
        self.process: Process | None = None
        self.stream: UNIXSocketStream | None = None
        #: descriptors of device memory the worker exported, by name (the latest of each), to hand to its peer
        self.handles: dict[str, int] = {}
        self.pid = 0
        #: the worker's interpreter (the sandbox's bubblewrap processes sit between it and ``pid``)
        self.inner = 0
        #: processes of the worker before any job code ran: bubblewrap's and the interpreter
        self.own_processes: set[int] = set()
        self.killed_reason = ""
        self.threads_at_start = 0

    @property
    def caches(self) -> Path:
        """The worker's compiler caches, inside its sandbox; lent from and kept into its caller's store."""
        return self.dir / "cache"

    @property
    def local_device(self) -> str:
        """The device as the worker sees it: each GPU worker sees only its own GPU, as cuda:0."""
        return "cuda:0" if self.device.startswith("cuda") else "cpu"

    async def start(self) -> None:
        limits = settings()
        memory = limits.memory_limit_mb if self.device == "cpu" else 0
        caches = self.caches
        caches.mkdir()
        if self.sandboxed:
            jail.hand_to_sandbox(caches)
        extra_env = _backend_env(self.device, caches)
        # A home and temporary folder the worker may write (the scratch folder itself belongs to the trusted side):
        # torch.compile and friends write temporary files there.
        home = self.dir / "home"
        home.mkdir()
        if self.sandboxed:
            jail.hand_to_sandbox(home)
        extra_env.update(HOME=str(home), TMPDIR=str(home))
        if self.device.startswith("cuda"):
            extra_env["CUDA_VISIBLE_DEVICES"] = self.device.partition(":")[2] or "0"
        args = [
            "--dir", str(self.dir), "--device", self.local_device, "--memory-mb", str(memory),
            "--file-mb", str(limits.file_limit_mb), "--nproc", str(self.cage.nproc_limit()),
        ]
        # A wrapper (ncu) starts the worker as its own child and need not pass descriptors
        # on, so wrapped workers dial back over a socket file instead of inheriting one.
        listener = None
        theirs: socket.socket | None = None
        if self.wrapper:
            path = self.dir / "channel.sock"
            listener = await anyio.create_unix_listener(path)
            if self.sandboxed:
                jail.hand_to_sandbox(path)  # connecting takes write permission on the socket file
            args += ["--connect", str(path)]
            pass_fds: tuple[int, ...] = ()
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            args += ["--fd", str(theirs.fileno())]
            pass_fds = (theirs.fileno(),)
        wrapper = self.wrapper
        cmd = [sys.executable, "-m", "kfoundry.runner.entry", *args]
        if self.sandboxed:
            # A wrapper (ncu) stays outside the sandbox, as the trusted user, so what it records is out of the
            # candidate's reach; it talks to the code it injected over loopback, so both share a network namespace
            # made for them alone, holding nothing else.
            sandbox = jail.Jail(scratch=self.dir, writable=[self.exchange], gpu=self.device.startswith("cuda"),
                                drops_itself=True, own_network=not wrapper)
            cmd = sandbox.command([*cmd, "--drop"])
            cmd = jail.private_network([*wrapper, *cmd]) if wrapper else cmd
        else:
            cmd = [*wrapper, *cmd]
        self.process = await anyio.open_process(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.dir,
            env=worker_env(self.dir, extra_env, caches), start_new_session=True, pass_fds=pass_fds,
        )
        self.task_group.start_soon(_drain, self.process.stdout, self.logs["stdout"])
        self.task_group.start_soon(_drain, self.process.stderr, self.logs["stderr"])
        self.pid = self.process.pid
        self.cage.adopt(self.pid)
        self.freezer.adopt(self.pid)
        if listener is not None:
            try:
                self.stream = await self._dialled_back(listener)
            finally:
                await listener.aclose()
        else:
            assert theirs is not None
            theirs.close()
            self.stream = await UNIXSocketStream.from_socket(ours)
        with anyio.fail_after(READY_TIMEOUT_S):
            hello = await self.recv()
        if not isinstance(hello, Ready):
            raise WorkerGone(f"worker said {type(hello).__name__} instead of ready")
        self.inner = inner_pid(self.pid, hello.pid) if self.sandboxed else self.pid
        self.own_processes = set(self.freezer.members())
        self.threads_at_start = thread_count(self.inner)

    async def _dialled_back(self, listener: Any) -> UNIXSocketStream:
        """The wrapped worker's connection, or WorkerGone as soon as the wrapper exits without one."""
        assert self.process is not None
        accepted: list[UNIXSocketStream] = []
        with anyio.fail_after(READY_TIMEOUT_S):
            async with anyio.create_task_group() as group:

                async def accept() -> None:
                    accepted.append(await listener.accept())
                    group.cancel_scope.cancel()

                group.start_soon(accept)
                await self.process.wait()
                group.cancel_scope.cancel()
        if not accepted:
            raise WorkerGone(f"the wrapper exited ({await self.exit_status(0)}) before its worker dialled back: {self.log_tail('stderr', 600)}")
        return accepted[0]

    async def send(self, message: Wire, fds: list[int] | None = None) -> None:
        """Send ``message``; ``fds`` (one per device tensor it names) ride on its header."""
        assert self.stream is not None
        frame = encode(message, len(fds or []))
        try:
            if fds:
                await self.stream.send_fds(frame[: HEADER.size], fds)
                frame = frame[HEADER.size:]
            await self.stream.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise WorkerGone(str(exc)) from exc

    async def _exactly(self, n: int, fds: list[int] | None = None) -> bytes:
        assert self.stream is not None
        buf = bytearray()
        while len(buf) < n:
            if fds is not None:
                chunk, got = await self.stream.receive_fds(n - len(buf), MAX_FDS)
                fds += got
            else:
                chunk = await self.stream.receive(n - len(buf))
            if not chunk:
                raise anyio.EndOfStream
            buf += chunk
        return bytes(buf)

    async def recv(self) -> Wire:
        """Next message from the worker; it is untrusted input, so sizes, types and descriptors are checked."""
        fds: list[int] = []
        try:
            length, count = HEADER.unpack(await self._exactly(HEADER.size, fds))
            if length > MAX_FRAME:
                close_all(fds)
                raise WireError(f"worker sent a {length}-byte frame, over the {MAX_FRAME}-byte limit")
            body = await self._exactly(length)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            close_all(fds)
            raise WorkerGone("worker closed its channel") from exc
        try:
            message = decode(body)
        except WireError:
            close_all(fds)
            raise
        refs = device_refs(message)
        if count != len(fds) or len(refs) != len(fds):
            close_all(fds)
            raise WireError(f"worker announced {count} descriptors for {len(refs)} device tensors and sent {len(fds)}")
        for ref, fd in zip(refs, fds, strict=True):
            old = self.handles.pop(str((ref.cuda or {}).get("name")), None)
            if old is not None:
                close_all([old])
            self.handles[str((ref.cuda or {}).get("name"))] = fd
        return message

    def handles_for(self, message: Wire) -> list[int]:
        """This worker's descriptors for the device tensors ``message`` (bound for its peer) names."""
        try:
            return [self.handles[str((ref.cuda or {}).get("name"))] for ref in device_refs(message)]
        except KeyError as exc:
            raise WireError(f"the worker never sent device memory named {exc.args[0]!r}") from None

    async def freeze(self) -> None:
        """Stop every process of the worker and wait until they are stopped.

        Raises:
            WireError: the worker could not be stopped in time (it is then killed by the caller).
        """
        self.freezer.freeze()
        with anyio.move_on_after(FREEZE_TIMEOUT_S):
            while not self.freezer.settled():
                await anyio.sleep(0.0002)
            return
        raise WireError(f"the worker did not stop within {FREEZE_TIMEOUT_S:g} s of being frozen")

    def thaw(self) -> None:
        self.freezer.thaw()

    def threads_now(self) -> int:
        return thread_count(self.inner)

    def other_processes(self) -> int:
        """Processes of this worker besides its own (children, daemons it started): none should outlive a call."""
        return len(set(self.freezer.members()) - self.own_processes)

    async def exit_status(self, wait_s: float = 2.0) -> str:
        """Describe how the process ended ('exit code 3', 'signal 11 (SIGSEGV)')."""
        if self.process is None:
            return "never started"
        code = self.process.returncode
        if code is None:
            with anyio.move_on_after(wait_s):
                code = await self.process.wait()
        if code is None:
            return "still running"
        # bubblewrap, the sandbox's first process, reports a child killed by a signal as 128 + its number
        signum = -code if code < 0 else code - 128 if self.sandboxed and 128 < code < 128 + 65 else 0
        if signum:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = "unknown"
            return f"killed by signal {signum} ({name})"
        return f"exit code {code}"

    def log_tail(self, which: str = "stderr", limit: int = 4000) -> str:
        return self.logs[which].text(limit)

    def log_size(self, which: str = "stdout") -> int:
        return self.logs[which].total

    async def exited(self, within_s: float) -> bool:
        """Wait up to ``within_s`` for the process to end by itself; True when it did."""
        if self.process is None:
            return True
        with anyio.move_on_after(within_s):
            await self.process.wait()
        return self.process.returncode is not None

    async def kill(self) -> None:
        """Kill the worker and everything it started, and wait until they are gone; idempotent."""
        self.freezer.thaw()  # a stopped process dies on SIGKILL too, but its sweep must see it go
        if self.pid:
            # Killed processes linger until the kernel reaps them; a fork bomb can still be
            # forking while the sweep runs, so sweep until nothing is left (bounded).
            with anyio.move_on_after(REAP_TIMEOUT_S):
                while self.cage.kill_all(self.pid):
                    await anyio.sleep(0.01)
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None
        close_all(list(self.handles.values()))
        self.handles.clear()
        if self.process is not None and self.process.returncode is None:
            with anyio.move_on_after(5):
                await self.process.wait()

    async def dispose(self, keep: Path | None = None) -> None:
        """Kill, copy logs to ``keep`` (artifacts) and remove the scratch directory."""
        await self.kill()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for which in ("stdout", "stderr"):
                (keep / f"{which}.log").write_text(self.log_tail(which, 1 << 20))
        with anyio.move_on_after(REAP_TIMEOUT_S):
            while not self.cage.release():
                await anyio.sleep(0.02)
        with anyio.move_on_after(REAP_TIMEOUT_S):
            while not self.freezer.release():
                await anyio.sleep(0.02)
        remove_workdir(self.dir)
        remove_workdir(self.exchange)
