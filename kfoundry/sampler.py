"""Where a process tree spends its CPU time, measured from outside by sampling instruction pointers.

The trusted side (root, or the target's own user) stops each *running* thread of a target process
and of every process it started for a moment with ptrace (``PTRACE_SEIZE`` + ``PTRACE_INTERRUPT``),
reads its instruction pointer and lets it go. Each sample is charged to the mapped object that holds
the address: the candidate's own compiled code, libpython, libtorch, numpy and BLAS, the C runtime,
the OpenMP runtime, anonymous (JIT) memory or anything else.

Only threads in state R are sampled, so a thread blocked in a syscall or a futex costs nothing and
counts for nothing: the samples estimate CPU time, not wall time.

A thread seen running that blocks before the stop reaches it is dropped (the stop cut a syscall
short); one that is runnable but has not run since it was created or woken is sampled at its
syscall's return, in libc.

``Sampler`` samples from a thread of the calling process; ``IsolatedSampler`` from a helper process
(needed when the target is the caller's own child, and clear of the caller's GIL).

Example:
    with IsolatedSampler(worker.inner, own=[built_library]) as sampler:
        sampler.wait(500, timeout_s=10)  # or: run forward until enough samples
    check = judge(sampler.result, threshold=0.8)
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import errno
import functools
import logging
import os
import platform
import random
import selectors
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field

from kfoundry.schema import Record

logger = logging.getLogger(__name__)

_PTRACE_DETACH = 17
_PTRACE_GETSIGINFO = 0x4202
_PTRACE_GETREGSET = 0x4204
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_EVENT_STOP = 128
_NT_PRSTATUS = 1
_WALL = 0x40000000
#: wait only for this thread's tracees: never reap (or steal the status of) the caller's own children
_WNOTHREAD = 0x20000000
#: per machine: general-purpose register block (words), and the indexes of the program counter and the syscall return value
_REGS = {"x86_64": (27, 16, 10), "aarch64": (34, 32, 0)}
#: -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK: a blocking syscall our stop interrupted
_RESTARTS = {2**64 - 512, 2**64 - 513, 2**64 - 514, 2**64 - 516}


class Where(str, Enum):
    """What kind of code a sample landed in."""

    own = "own"
    python = "python"
    torch = "torch"
    numpy = "numpy"
    libc = "libc"
    openmp = "openmp"
    jit = "jit"
    other = "other"
    #: a running thread the sampler could not stop (another tracer holds it): unseen time is never credited
    unseen = "unseen"


class ObjectShare(Record):
    """Samples that landed in one mapped object."""

    path: str = Field(description="The object's path as the target maps it, or '[anonymous]', '[vdso]', '[unmapped]', '[ptrace denied]'.")
    where: Where
    samples: int


class Attribution(Record):
    """Where the sampled process tree ran while the window was open."""

    method: Literal["ptrace"] = "ptrace"
    samples: int = Field(description="Samples of running threads, including those that could not be taken ('unseen').")
    by_class: dict[Where, int]
    objects: list[ObjectShare] = Field(description="The objects with the most samples, most first.")
    own_share: float = Field(description="Fraction of samples in the candidate's own objects.")
    threads_seen: int
    threads_sampled: int
    processes_seen: int
    duration_s: float
    interval_s: float
    rounds: int = Field(description="Sampling rounds run; below duration/interval when the host (or the GIL) was busy.")
    cpu_s: float = Field(description="CPU time the sampling thread itself used (the trusted side's cost).")
    errors: dict[str, int] = Field(
        default_factory=dict,
        description="gone: the thread exited mid-sample; blocked: it blocked in a syscall before it stopped (dropped); "
        "late: rounds a seized thread had not stopped by (it is sampled later); "
        "unreleased: still pending when the window closed (let go when the sampling thread ended).",
    )
    failure: str | None = Field(default=None, description="The sampler itself failed (its tracees were still let go).")


class ShareCheck(Record):
    """Whether enough of the measured CPU time was the candidate's own."""

    passed: bool
    conclusive: bool = Field(description="False when too few samples counted to judge either way.")
    share: float = Field(description="Own (+ allowed) samples over counted samples (neutral classes are not counted).")
    counted: int
    reason: str = Field(default="", description="Where the time went instead, when the check did not pass.")


def unsupported() -> str:
    """Why this host cannot sample instruction pointers; empty when it can (the target may still refuse: ``probe``)."""
    if not sys.platform.startswith("linux"):
        return f"sampling needs Linux ptrace, not {sys.platform}"
    if platform.machine() not in _REGS:
        return f"reading the instruction pointer is not implemented for {platform.machine()} (x86_64 and aarch64 are)"
    return ""


class _Ptrace:
    """The calls one tracer thread makes; every ptrace request must come from the thread that seized."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        words, self.pc_index, self.ret_index = _REGS[platform.machine()]
        self.regs = (ctypes.c_ulong * words)()
        self.iov = (ctypes.c_size_t * 2)(ctypes.addressof(self.regs), ctypes.sizeof(self.regs))
        self.siginfo = (ctypes.c_int * 32)()

    def call(self, request: int, tid: int, addr: int = 0, data: int | ctypes.Array[ctypes.c_size_t] | ctypes.Array[ctypes.c_int] = 0) -> int:
        """0, or the errno the request failed with."""
        pointer = ctypes.addressof(data) if isinstance(data, ctypes.Array) else data
        if self.libc.ptrace(request, tid, addr, pointer) == -1:
            return ctypes.get_errno()
        return 0

    def pc(self, tid: int) -> tuple[int, bool] | None:
        """The stopped thread's program counter, and whether the stop cut short a blocking syscall; None until it stops.

        A thread seen running can block before the stop reaches it; the stop then wakes it from its
        syscall, and its address (in libc) says nothing about where CPU time went.
        """
        self.iov[1] = ctypes.sizeof(self.regs)
        if self.call(_PTRACE_GETREGSET, tid, _NT_PRSTATUS, self.iov) or self.iov[1] <= self.pc_index * ctypes.sizeof(ctypes.c_ulong):
            return None
        return int(self.regs[self.pc_index]), self.regs[self.ret_index] in _RESTARTS

    def release(self, tid: int) -> None:
        """Detach a stopped thread, handing back a signal it was stopped on the way to receiving."""
        signal = 0
        if not self.call(_PTRACE_GETSIGINFO, tid, 0, self.siginfo) and self.siginfo[2] >> 8 != _PTRACE_EVENT_STOP:
            signal = self.siginfo[0]  # a signal-delivery stop: detaching without it would swallow the signal
        self.call(_PTRACE_DETACH, tid, 0, signal)


class _Maps:
    """One process's executable mappings, sorted by start address."""

    def __init__(self, pid: int) -> None:
        self.starts: list[int] = []
        self.spans: list[tuple[int, str]] = []
        self.read_at = time.monotonic()
        try:
            text = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return
        rows = []
        for line in text.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 5 or "x" not in parts[1]:
                continue
            low, _, high = parts[0].partition("-")
            path = parts[5].removesuffix(" (deleted)") if len(parts) == 6 else ""
            rows.append((int(low, 16), int(high, 16), path))
        rows.sort()
        self.starts = [row[0] for row in rows]
        self.spans = [(row[1], row[2]) for row in rows]

    def find(self, ip: int) -> str | None:
        at = bisect.bisect_right(self.starts, ip) - 1
        if at >= 0 and ip < self.spans[at][0]:
            return self.spans[at][1]
        return None


_OPENMP = ("libgomp", "libiomp", "libomp")
_BLAS = ("openblas", "libmkl", "libblis", "liblapack", "libblas", "libgfortran", "libquadmath")
_TORCH = ("libtorch", "libc10", "libshm", "libcaffe2", "libdnnl", "libmkldnn", "libfbgemm", "libsleef")
_LIBC = ("libc.so", "libc-", "libm.so", "libm-", "libmvec", "libstdc++", "libgcc_s", "ld-linux", "libpthread", "libdl", "librt")


def classify(path: str, own: Collection[str]) -> Where:
    """The class of a mapped object: ``own`` holds the candidate's object files and folders (real paths)."""
    if any(path == mine or path.startswith(mine.rstrip("/") + "/") for mine in own):
        return Where.own
    if not path or path.startswith(("[anon", "[heap]", "[stack", "/memfd:")):
        return Where.jit  # code written at run time: oneDNN / asmjit kernels, or anything a candidate mmaps executable
    if path in ("[vdso]", "[vsyscall]"):
        return Where.libc
    name = os.path.basename(path)
    if name.startswith(_OPENMP):
        return Where.openmp
    if "/numpy/" in path or "/numpy.libs/" in path or any(lib in name for lib in _BLAS):
        return Where.numpy
    if "/torch/" in path or "/torch.libs/" in path or name.startswith(_TORCH):
        return Where.torch
    if name.startswith(("libpython", "python")) or "/lib-dynload/" in path or path == os.path.realpath(sys.executable):
        return Where.python
    if name.startswith(_LIBC):
        return Where.libc
    return Where.other


def _state(pid: int, tid: int) -> str:
    try:
        fd = os.open(f"/proc/{pid}/task/{tid}/stat", os.O_RDONLY)
    except OSError:
        return ""
    try:
        text = os.read(fd, 512)
    except OSError:
        return ""
    finally:
        os.close(fd)
    end = text.rfind(b")")
    return chr(text[end + 2]) if 0 <= end < len(text) - 2 else ""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(root: int) -> set[int]:
    """``root`` and every live process below it, by parent links in the host's /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found if os.path.isdir(f"/proc/{root}") else found - {root}


def probe(pid: int) -> str:
    """Why ``pid`` cannot be sampled from here (seccomp, missing CAP_SYS_PTRACE, another tracer); empty when it can.

    Briefly stops and releases the main thread of ``pid`` to find out; as with ``Sampler``, no other
    thread of this process should be waiting for ``pid`` meanwhile.
    """
    if unsupported():
        return unsupported()
    outcome: list[str] = []

    def attempt() -> None:
        tracer = _Ptrace()
        failed = tracer.call(_PTRACE_SEIZE, pid)
        if failed:
            outcome.append(f"ptrace(PTRACE_SEIZE, {pid}) failed: {errno.errorcode.get(failed, failed)} ({os.strerror(failed)})")
            return
        tracer.call(_PTRACE_INTERRUPT, pid)
        deadline = time.monotonic() + 2.0
        while tracer.pc(pid) is None:
            if time.monotonic() > deadline:
                outcome.append(f"process {pid} did not stop within 2 s of PTRACE_INTERRUPT")
                return  # the thread's exit lets it go
            time.sleep(0.0002)
        tracer.release(pid)

    # A thread of its own, as in sampling: its exit detaches whatever it still holds.
    worker = threading.Thread(target=attempt, name="kfoundry-sampler-probe", daemon=True)
    worker.start()
    worker.join()
    return outcome[0] if outcome else ""


_PROBE_CHILD = """
import os, sys
from kfoundry.sampler import probe
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(write)
    os.read(read, 1)
    os._exit(0)
os.close(read)
said = probe(child)
os.close(write)
os.waitpid(child, 0)
sys.stdout.write(said)
"""


@functools.cache
def host_refusal() -> str:
    """Why this host (seccomp, a missing CAP_SYS_PTRACE, Yama) refuses sampling; empty when it permits it.

    Found once per process by a throwaway helper that probes a child of its own, so a refusal is told
    apart from a target that refuses (another tracer holds its threads: time that counts against it).
    """
    if unsupported():
        return unsupported()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE_CHILD], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        return "the ptrace probe did not finish within 60 s"
    if done.returncode != 0:
        return f"the ptrace probe failed: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


class Sampler:
    """Samples a process tree's running threads from a background thread while it is open.

    A tracee's stops show in every wait for it by *any* thread of the tracer's process: ``Popen.poll``
    or an asyncio child watcher waiting for the target would take a sampling stop for the target
    stopping (``-SIGTRAP``). So the target must not be a child of this process; ``IsolatedSampler``
    samples from a helper process instead, which also keeps the rate clear of this process's GIL.

    Args:
        pid: the target (host pid); every process it starts while open is sampled too.
        own: the candidate's own compiled objects: files or folders (built libraries, kernel caches).
        interval_s: time between sampling rounds; each round samples every thread that is running.
        processes: lists the target's processes instead of walking /proc parent links (e.g. a cgroup's members).
        rescan_s: how often the process tree is listed again (new threads are found every round).
        max_per_round: cap on threads stopped in one round (a random subset when more run).
        top: how many objects the result lists.
    """

    def __init__(self, pid: int, own: Iterable[str | os.PathLike[str]] = (), *, interval_s: float = 0.001,
                 processes: Callable[[], Iterable[int]] | None = None, rescan_s: float = 0.02,
                 max_per_round: int = 8, top: int = 12) -> None:
        self.pid = pid
        self.own = {os.path.realpath(p) for p in own}
        self.interval_s = interval_s
        self.rescan_s = rescan_s
        self.max_per_round = max_per_round
        self.top = top
        self._processes = processes or (lambda: descendants(pid))
        self.result: Attribution | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: set[int] = set()
        self._pending: dict[int, tuple[int, float]] = {}
        self._maps: dict[int, _Maps] = {}
        self._kinds: dict[str, Where] = {}
        self._hits: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._seen: set[int] = set()
        self._sampled: set[int] = set()
        self._pids_seen: set[int] = set()
        self._failure: str | None = None
        self._started = 0.0
        self._ended = 0.0
        self._cpu_s = 0.0
        self._taken = 0
        #: every class present from the start: read by another thread, it never changes size
        self._live: Counter[Where] = Counter(dict.fromkeys(Where, 0))
        self._rounds = 0

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Open the window.

        Raises:
            RuntimeError: already started, or the host cannot sample (see ``unsupported``).
        """
        if self._thread is not None:
            raise RuntimeError("a Sampler samples one window; make a new one")
        why = unsupported()
        if why:
            raise RuntimeError(why)
        if self.pid == os.getpid():
            raise RuntimeError("a process cannot sample itself (ptrace refuses its own threads)")
        if _parent(self.pid) == os.getpid():
            raise RuntimeError(f"process {self.pid} is a child of this process, whose waits for it would see sampling stops: use IsolatedSampler")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"kfoundry-sampler-{self.pid}", daemon=True)
        self._thread.start()

    @property
    def taken(self) -> int:
        """Samples so far (read while the window is open)."""
        return self._taken

    def by_class(self) -> dict[Where, int]:
        """Samples so far per class of code (read while the window is open)."""
        return {where: n for where, n in list(self._live.items()) if n}

    def wait(self, samples: int, timeout_s: float) -> bool:
        """Block until at least ``samples`` samples were taken (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._taken < samples:
            if time.monotonic() >= deadline or (self._thread is not None and not self._thread.is_alive()):
                return self._taken >= samples
            time.sleep(0.005)
        return True

    def stop(self) -> Attribution:
        """Close the window; returns (and keeps in ``result``) where the samples landed."""
        if self.result is not None:
            return self.result
        if self._thread is None:
            raise RuntimeError("stop() before start()")
        self._halt.set()
        self._thread.join()
        self.result = self._summary()
        return self.result

    def _run(self) -> None:
        tracer = _Ptrace()
        cpu_at_start = time.thread_time()
        last_scan = -1.0
        try:
            next_round = time.monotonic()
            while not self._halt.is_set():
                now = time.monotonic()
                if now - last_scan >= self.rescan_s:
                    self._procs = set(self._processes())
                    self._pids_seen |= self._procs
                    for gone in set(self._maps) - self._procs:
                        del self._maps[gone]  # its pid may come back as another program
                    last_scan = now
                self._round(tracer)
                self._rounds += 1
                next_round = max(next_round + self.interval_s, time.monotonic())
                self._halt.wait(next_round - time.monotonic())
        except Exception as exc:  # the thread's top level: the sampler's own fault goes into the result
            logger.exception("sampling process %d failed", self.pid)
            self._failure = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self._collect(tracer, time.monotonic() + 0.5)
            except Exception as exc:
                logger.exception("releasing the threads of process %d failed", self.pid)
                self._failure = self._failure or f"{type(exc).__name__}: {exc}"
            # Whatever is still seized (a thread stuck in uninterruptible sleep) is let go by the kernel when this thread ends.
            self._errors["unreleased"] += len(self._pending)
            self._ended = time.monotonic()
            self._cpu_s = time.thread_time() - cpu_at_start

    def _round(self, tracer: _Ptrace) -> None:
        # A seized thread killed between its stop and its release (another thread called exit) stays this thread's
        # tracee although it is no longer pending: until reaped here, its parent cannot reap the process.
        self._reap()
        running: list[tuple[int, int]] = []
        for pid in list(self._procs):
            try:
                tids = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                self._procs.discard(pid)
                continue
            self._seen.update(tids)
            running += [(pid, tid) for tid in tids if tid not in self._pending and _state(pid, tid) == "R"]
        if len(running) > self.max_per_round:
            running = random.sample(running, self.max_per_round)
        now = time.monotonic()
        for pid, tid in running:
            failed = tracer.call(_PTRACE_SEIZE, tid)
            if failed == errno.EPERM and _state(pid, tid) not in ("", "Z", "X"):
                self._hits["[ptrace denied]"] += 1
                self._kinds["[ptrace denied]"] = Where.unseen
                self._live[Where.unseen] += 1
                self._taken += 1
            elif failed:
                self._errors["gone"] += 1
            else:
                tracer.call(_PTRACE_INTERRUPT, tid)
                self._pending[tid] = (pid, now)
        self._errors["late"] += self._collect(tracer, now + min(self.interval_s, 0.002))

    def _collect(self, tracer: _Ptrace, deadline: float) -> int:
        """Sample and release every seized thread that has stopped, until none is left or ``deadline``; returns how many are left."""
        while self._pending:
            self._reap()
            for tid, (pid, _) in list(self._pending.items()):
                stopped = tracer.pc(tid)
                if stopped is not None:
                    tracer.release(tid)
                    del self._pending[tid]
                    if stopped[1]:
                        self._errors["blocked"] += 1
                    else:
                        self._record(pid, tid, stopped[0])
            if not self._pending or time.monotonic() >= deadline:
                break
            time.sleep(0.00005)  # let a thread that waits for a CPU reach its stop
        return len(self._pending)

    def _reap(self) -> None:
        """Collect seized threads that exited before they were released (a traced thread's exit waits for its tracer).

        A tracer's wait also reports its tracees' ptrace stops, whatever the flags: those stay pending, to be sampled.
        """
        while True:
            try:
                got = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | _WALL | _WNOTHREAD)
            except ChildProcessError:
                return
            if got is None or got.si_pid == 0:
                return
            if got.si_code in (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED) and self._pending.pop(got.si_pid, None) is not None:
                self._errors["gone"] += 1

    def _record(self, pid: int, tid: int, ip: int) -> None:
        maps = self._maps.get(pid)
        path = maps.find(ip) if maps is not None else None
        if path is None and (maps is None or time.monotonic() - maps.read_at > 0.002):
            maps = self._maps[pid] = _Maps(pid)  # new process, or a library loaded since the last read
            path = maps.find(ip)
        if path is None:
            path = "[unmapped]"
        elif not path or path.startswith("[anon"):
            path = "[anonymous]"
        if path not in self._kinds:
            self._kinds[path] = Where.other if path == "[unmapped]" else classify(path, self.own)
        self._hits[path] += 1
        self._live[self._kinds[path]] += 1
        self._sampled.add(tid)
        self._taken += 1

    def _summary(self) -> Attribution:
        total = sum(self._hits.values())
        by_class: Counter[Where] = Counter()
        for path, count in self._hits.items():
            by_class[self._kinds[path]] += count
        objects = [ObjectShare(path=path, where=self._kinds[path], samples=count) for path, count in self._hits.most_common(self.top)]
        return Attribution(
            samples=total, by_class=dict(by_class), objects=objects,
            own_share=by_class[Where.own] / total if total else 0.0,
            threads_seen=len(self._seen), threads_sampled=len(self._sampled), processes_seen=len(self._pids_seen),
            duration_s=round(self._ended - self._started, 6), interval_s=self.interval_s, rounds=self._rounds, cpu_s=round(self._cpu_s, 6),
            errors={k: v for k, v in self._errors.items() if v}, failure=self._failure,
        )


class IsolatedSampler:
    """``Sampler``'s window, sampled by a helper process (``python -m kfoundry.sampler``) instead of a thread.

    Takes the same arguments except ``processes``; ``cgroup`` names a ``cgroup.procs`` file listing the
    target's processes instead. Opening the window costs the helper's start (an interpreter and pydantic).
    If the helper dies, the kernel lets go of whatever it held.
    """

    def __init__(self, pid: int, own: Iterable[str | os.PathLike[str]] = (), *, interval_s: float = 0.001,
                 cgroup: str | os.PathLike[str] | None = None, rescan_s: float = 0.02, max_per_round: int = 8, top: int = 12,
                 start_timeout_s: float = 60.0) -> None:
        self.argv = [sys.executable, "-m", "kfoundry.sampler", str(pid), "--interval", repr(interval_s), "--rescan", repr(rescan_s),
                     "--max-per-round", str(max_per_round), "--top", str(top), *(f"--own={os.path.realpath(p)}" for p in own)]
        if cgroup is not None:
            self.argv.append(f"--cgroup={os.fspath(cgroup)}")
        self.start_timeout_s = start_timeout_s
        self.result: Attribution | None = None
        self._helper: subprocess.Popen[str] | None = None
        self._taken = 0
        self._by_class: dict[Where, int] = {}

    def __enter__(self) -> IsolatedSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the helper and return once its window is open.

        Raises:
            RuntimeError: already started, the host cannot sample, or the helper did not come up.
        """
        self.launch()
        self.open()

    def launch(self) -> None:
        """Start the helper without waiting for it: it loads while the caller does other work, and samples from ``open``.

        Raises:
            RuntimeError: already started, or the host cannot sample.
        """
        if self._helper is not None:
            raise RuntimeError("an IsolatedSampler samples one window; make a new one")
        if unsupported():
            raise RuntimeError(unsupported())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._helper = subprocess.Popen([*self.argv, "--on-cue"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)

    def open(self) -> None:
        """Open the window of a launched helper, once it is ready; returns when it samples.

        Raises:
            RuntimeError: not launched, or the helper did not come up (it is killed).
        """
        if self._helper is None or self._helper.stdin is None:
            raise RuntimeError("open() before launch()")
        deadline = time.monotonic() + self.start_timeout_s
        line = self._line(deadline)
        if line == "ready":
            try:
                self._helper.stdin.write("open\n")
                self._helper.stdin.flush()
            except OSError:
                pass  # the helper is gone: its last words say why
            line = self._line(deadline)
        if line != "open":
            raise RuntimeError(f"the sampling helper did not start ({line!r}): {self._kill()}")

    def abandon(self) -> None:
        """Kill a helper whose window is not wanted any more (launched, open or not); idempotent."""
        if self._helper is not None and self._helper.returncode is None and self.result is None:
            self._kill()

    def _line(self, deadline: float) -> str:
        """The helper's next line ('' at its end or at ``deadline``)."""
        assert self._helper is not None and self._helper.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._helper.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                return ""
        return self._helper.stdout.readline().strip()

    def _kill(self) -> str:
        """Kill the helper; returns the end of what it wrote on stderr."""
        assert self._helper is not None and self._helper.stderr is not None
        self._helper.kill()
        self._helper.wait(30)
        said = self._helper.stderr.read()[-2000:]
        self._close()
        return said

    def _close(self) -> None:
        assert self._helper is not None
        for stream in (self._helper.stdin, self._helper.stdout, self._helper.stderr):
            if stream is not None:
                stream.close()

    @property
    def taken(self) -> int:
        """Samples the helper had reported by the last ``wait``."""
        return self._taken

    def by_class(self) -> dict[Where, int]:
        """Samples per class of code the helper had reported by the last ``wait``."""
        return dict(self._by_class)

    def wait(self, samples: int, timeout_s: float) -> bool:
        """Block until the helper reported at least ``samples`` samples (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._taken < samples:
            line = self._line(deadline)
            if not line.startswith("taken "):
                return False
            words = line.split()
            self._taken = int(words[1])
            self._by_class = {Where(name): int(n) for name, _, n in (w.partition("=") for w in words[2:])}
        return True

    def stop(self) -> Attribution:
        """Close the window; returns (and keeps in ``result``) where the samples landed.

        Raises:
            RuntimeError: the helper failed or did not answer within 30 s (it is killed).
        """
        if self.result is not None:
            return self.result
        if self._helper is None or self._helper.stdin is None:
            raise RuntimeError("stop() before start()")
        self._helper.stdin.close()  # the helper's signal to close the window
        deadline = time.monotonic() + 30
        line = self._line(deadline)
        while line.startswith("taken "):
            line = self._line(deadline)
        if not line.startswith("{"):
            raise RuntimeError(f"the sampling helper gave no result: {self._kill()}")
        self.result = Attribution.model_validate_json(line)
        self._helper.wait(30)
        self._close()
        return self.result


def main(argv: list[str] | None = None) -> None:
    """The helper: ``python -m kfoundry.sampler PID [--own PATH]...``; samples until stdin closes, then prints the result."""
    parser = argparse.ArgumentParser(prog="python -m kfoundry.sampler")
    parser.add_argument("pid", type=int)
    parser.add_argument("--own", action="append", default=[])
    parser.add_argument("--cgroup", default=None)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--rescan", type=float, default=0.02)
    parser.add_argument("--max-per-round", type=int, default=8)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--on-cue", action="store_true", help="say 'ready', and open the window on a line from stdin")
    args = parser.parse_args(argv)

    def members() -> set[int]:
        try:
            return {int(p) for p in Path(args.cgroup).read_text().split()}
        except (OSError, ValueError):
            return set()

    sampler = Sampler(args.pid, args.own, interval_s=args.interval, processes=members if args.cgroup else None,
                      rescan_s=args.rescan, max_per_round=args.max_per_round, top=args.top)
    if args.on_cue:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if not sys.stdin.readline():
            return  # closed before the cue: nothing was sampled
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    sampler.start()
    sys.stdout.write("open\n")
    sys.stdout.flush()
    reported = 0
    while not closed.wait(0.02):
        if sampler.taken != reported:
            reported = sampler.taken
            classes = " ".join(f"{where.value}={n}" for where, n in sampler.by_class().items())
            sys.stdout.write(f"taken {reported} {classes}\n")
            sys.stdout.flush()
    sys.stdout.write(sampler.stop().model_dump_json() + "\n")
    sys.stdout.flush()


def judge(result: Attribution, threshold: float = 0.8, *, allowed: Collection[Where] = (),
          neutral: Collection[Where] = (Where.openmp,), min_samples: int = 20) -> ShareCheck:
    """Pass when own (+ ``allowed``) samples are at least ``threshold`` of the counted ones.

    ``neutral`` classes count neither way. The OpenMP runtime is neutral by default: its samples are
    team threads spinning at barriers, whoever's parallel region it is; the work itself lands in the
    outlined function (the candidate's, or the library's that forked the team).
    """
    counted = sum(n for where, n in result.by_class.items() if where not in neutral)
    credited = sum(n for where, n in result.by_class.items() if where is Where.own or where in allowed)
    share = credited / counted if counted else 0.0
    if result.failure:
        return ShareCheck(passed=False, conclusive=False, share=share, counted=counted, reason=f"the sampler failed: {result.failure}")
    if counted < min_samples:
        return ShareCheck(passed=False, conclusive=False, share=share, counted=counted,
                          reason=f"only {counted} samples of running threads (need {min_samples}): too little CPU time to attribute")
    if share >= threshold:
        return ShareCheck(passed=True, conclusive=True, share=share, counted=counted)
    elsewhere = [o for o in result.objects if o.where is not Where.own and o.where not in allowed and o.where not in neutral]
    named = ", ".join(f"{o.samples / counted:.0%} in {os.path.basename(o.path) or o.path}" for o in elsewhere[:3])
    return ShareCheck(passed=False, conclusive=True, share=share, counted=counted,
                      reason=f"{share:.0%} of CPU samples in the candidate's own code (need {threshold:.0%}); {named}")


if __name__ == "__main__":
    main()
