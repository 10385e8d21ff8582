"""One run of a compiler on untrusted source, in a fresh sandbox: ``run_tool``.

The trusted side writes the sources into a private work directory under the sandbox root, runs
the tool there inside bubblewrap (``kfoundry.jail``) as the sandbox user, under the build caps of
``settings()`` (address space ``build_memory_mb``, CPU time ``build_cpu_s``) and a cap on every file
it writes, reads the outputs it asked for back, and removes the directory. The tool sees the
system, the toolchains and its work directory; the server's files, its home and ``/etc`` beyond
what the loader needs do not exist for it, so an ``#include`` of them says "No such file".

At the wall-clock limit the whole process tree is killed: bubblewrap starts in its own session,
its process group gets SIGKILL, and its pid namespace takes every process inside with it; the
answer waits until none is left. Without bubblewrap (``KFOUNDRY_UNSAFE_NO_SANDBOX=1``) the tool
runs unconfined but keeps the caps, the session kill, the scrubbed environment and the work dir.
"""

from __future__ import annotations

import enum
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kfoundry import jail
from kfoundry.config import settings

#: largest file the tool may write (RLIMIT_FSIZE) and largest output read back
MAX_FILE_MB = 512
#: bytes of stdout and of stderr kept (the first ones and the last ``_TAIL``); the rest is counted and dropped
LOG_LIMIT = 1 << 20
_TAIL = 64 << 10
#: how long a finished tool's pipes may stay open (a straggler holding them) before the sweep
_DRAIN_GRACE_S = 1.0
#: how long the sweep waits for killed processes to be gone
_SWEEP_S = 2.0
_KEEP_ENV = ("PATH", "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH")
_NAME = re.compile(r"^[\w+-][\w.+-]*$")
#: a tool's own report of a cap (compiler drivers name the signal that stopped their subprocess)
_OUT_OF_MEMORY = re.compile(r"out of memory|memory exhausted|bad_alloc|MemoryError|memory allocation fail|cannot allocate memory", re.I)
_CPU = re.compile(r"CPU time limit exceeded")
_FILE_SIZE = re.compile(r"File size limit exceeded|File too large")
#: a located diagnostic quotes the source, so it cannot tell a cap was hit
_LOCATED = re.compile(r"^\s*[^\s:(]+(?::\d+:|\(\d+\):)")


class ToolStatus(str, enum.Enum):
    ok = "ok"
    #: exited non-zero (a compile error) or could not start
    failed = "failed"
    #: wall-clock limit: the whole process tree was killed
    timeout = "timeout"
    #: ran into the address-space cap (build_memory_mb)
    killed_memory = "killed_memory"
    #: ran into the CPU-time cap (build_cpu_s)
    killed_cpu = "killed_cpu"
    #: wrote a file past MAX_FILE_MB
    killed_file_size = "killed_file_size"


@dataclass
class ToolResult:
    """What one sandboxed tool run left: its status, its output streams and the files asked for."""

    status: ToolStatus
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    #: files named in ``outputs`` that the tool left in its work directory (regular files only)
    outputs: dict[str, bytes] = field(default_factory=dict)
    #: why, in one sentence, for anything but ``ok`` and a plain ``failed``
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is ToolStatus.ok

    @property
    def log(self) -> str:
        return self.stdout + self.stderr


def run_tool(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes],
    outputs: Sequence[str] = (),
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    label: str = "",
) -> ToolResult:
    """Run ``argv`` in a fresh work directory holding ``files``; return its result and the ``outputs`` it left.

    ``argv`` names files by their bare names (the work directory is the current directory, and
    its path is also ``$HOME`` and ``$TMPDIR``). ``env`` adds to the scrubbed environment (PATH,
    CUDA_HOME, CUDA_PATH, LD_LIBRARY_PATH, LANG=C). ``label`` names the tool in messages
    (default: ``argv[0]``'s base name). The answer comes within ``timeout_s`` plus about two seconds.

    Raises:
        SandboxUnavailable: no usable bubblewrap and no ``KFOUNDRY_UNSAFE_NO_SANDBOX=1``.
        ValueError: a file name is not a bare name.

    Example:
        >>> run = run_tool(["g++", "-c", "k.cpp"], files={"k.cpp": "int f() { return 1; }"}, outputs=["k.o"], timeout_s=30)
        >>> run.status, sorted(run.outputs)
        (<ToolStatus.ok: 'ok'>, ['k.o'])
    """
    for name in [*files, *outputs]:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a bare file name")
    sandboxed = jail.enabled()
    work = Path(tempfile.mkdtemp(prefix="build-", dir=jail.sandbox_root()))
    try:
        for name, content in files.items():
            (work / name).write_bytes(content.encode() if isinstance(content, str) else content)
        if sandboxed:
            jail.hand_to_sandbox(work)
        result = _run(_command(list(argv), work, sandboxed), work, _environment(work, env), timeout_s, label or Path(argv[0]).name)
        result.outputs = {name: data for name in outputs if (data := _read_output(work / name)) is not None}
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _command(argv: list[str], work: Path, sandboxed: bool) -> list[str]:
    limits = settings()
    if sandboxed:
        # the jail's shim sets the caps before it drops to the sandbox user
        return jail.Jail(scratch=work, memory_mb=limits.build_memory_mb, cpu_s=limits.build_cpu_s, file_mb=MAX_FILE_MB).command(argv)
    return jail.capped(argv, limits.build_memory_mb, limits.build_cpu_s, MAX_FILE_MB)


def _environment(work: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({"LANG": "C", "LC_ALL": "C", "HOME": str(work), "TMPDIR": str(work)})
    env.update(extra or {})
    return env


class _Capped:
    """The first bytes of a stream and its last ``_TAIL`` (where drivers say what stopped them), ``LOG_LIMIT`` in all."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = LOG_LIMIT - _TAIL - len(self.head)
        self.head += chunk[:room]
        self.tail += chunk[max(room, 0):]
        if len(self.tail) > _TAIL:
            self.dropped += len(self.tail) - _TAIL
            del self.tail[:-_TAIL]

    def text(self) -> str:
        cut = f"\n[{self.dropped} bytes not kept]\n" if self.dropped else ""
        return (self.head.decode(errors="replace") + cut + self.tail.decode(errors="replace"))


def _run(cmd: list[str], work: Path, env: dict[str, str], timeout_s: float, label: str) -> ToolResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        return ToolResult(ToolStatus.failed, None, "", "", 0.0, message=f"{label} could not be started: {exc}")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out, err, timed_out = _drain(proc, start + timeout_s)
    finally:
        _sweep(proc.pid)
        proc.stdout.close()
        proc.stderr.close()
        returncode = proc.wait()
    log = out.text() + err.text()
    status, message = _classify(returncode, log, timed_out, label, timeout_s)
    return ToolResult(status, None if timed_out else returncode, out.text(), err.text(), time.monotonic() - start, message=message)


def _drain(proc: subprocess.Popen[bytes], deadline: float) -> tuple[_Capped, _Capped, bool]:
    """Read both pipes until the tool exited and they closed (or a straggler held them a while); True at the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capped(), _Capped()
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return out, err, True
            if exited_at is None and _exited(proc.pid):
                exited_at = now
            if exited_at is not None and (not selector.get_map() or now - exited_at > _DRAIN_GRACE_S):
                return out, err, False
            if not selector.get_map():
                time.sleep(min(deadline - now, 0.005))
                continue
            for key, _ in selector.select(min(deadline - now, 0.05)):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    sinks[key.fd].feed(chunk)
                else:
                    selector.unregister(key.fd)


def _exited(pid: int) -> bool:
    """Whether the child exited, leaving it unreaped (its pid, the session's id, cannot be reused yet)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _sweep(session: int) -> None:
    """SIGKILL every process of the tool's session (its group first) and wait, bounded, until none is left."""
    try:
        os.killpg(session, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    until = time.monotonic() + _SWEEP_S
    while (left := _session_members(session)) and time.monotonic() < until:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def _session_members(session: int) -> list[int]:
    """Live processes of ``session`` other than its leader (the caller reaps that one)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == session:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "comm)": state ppid pgrp session
        if len(fields) > 3 and int(fields[3]) == session and fields[0] not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def _classify(returncode: int, log: str, timed_out: bool, label: str, timeout_s: float) -> tuple[ToolStatus, str]:
    if timed_out:
        return ToolStatus.timeout, f"{label} did not finish within {timeout_s:g} s and was stopped"
    if returncode == 0:
        return ToolStatus.ok, ""
    own = "\n".join(line for line in log.splitlines() if not _LOCATED.match(line))
    limits = settings()
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU) or _CPU.search(own):
        return ToolStatus.killed_cpu, f"{label} used up its {limits.build_cpu_s} s of CPU time and was stopped"
    if returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or _FILE_SIZE.search(own):
        return ToolStatus.killed_file_size, f"{label} wrote a file past the {MAX_FILE_MB} MiB cap and was stopped"
    if _OUT_OF_MEMORY.search(own):
        return ToolStatus.killed_memory, f"{label} ran out of its {limits.build_memory_mb} MiB address-space cap"
    return ToolStatus.failed, ""


def _read_output(path: Path) -> bytes | None:
    """A regular file the tool left (never through a link it made), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_MB << 20:
            return None
        return fh.read(MAX_FILE_MB << 20)
