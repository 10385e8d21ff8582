"""How a worker process is confined, and how everything it started is swept away.

Layers, strongest available first: a pids cgroup per worker (caps fork bombs and
lists every descendant for the final kill), else ``RLIMIT_NPROC`` for non-root
servers; always its own session, rlimits set by the worker on itself, a scrubbed
environment, a private scratch directory and no inherited descriptors but its channel.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from kfoundry.config import settings
from kfoundry.jail import sandbox_root

logger = logging.getLogger(__name__)

_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES", "VIRTUAL_ENV")


def _cgroup_parent() -> Path | None:
    for root in _CGROUP_ROOTS:
        parent = root / "kfoundry"
        try:
            if not (root / "cgroup.procs").exists():
                continue
            if root.name != "pids" and "pids" not in (root / "cgroup.controllers").read_text().split():
                continue
            parent.mkdir(exist_ok=True)
            if root.name != "pids":
                (root / "cgroup.subtree_control").write_text("+pids")
            return parent
        except OSError:
            continue
    return None


class Containment:
    """One worker's process cage."""

    _parent: Path | None | bool = False

    def __init__(self, name: str) -> None:
        if Containment._parent is False:
            Containment._parent = _cgroup_parent()
        self.cgroup: Path | None = None
        parent = Containment._parent
        if isinstance(parent, Path):
            try:
                group = parent / name
                group.mkdir()
                (group / "pids.max").write_text(str(settings().max_processes))
                self.cgroup = group
            except OSError as exc:
                # Seen where the pids controller is not delegated to this subtree: decide once, say it once.
                logger.warning("pids cgroup unavailable (%s); using rlimits and session sweeps instead", exc)
                Containment._parent = None
                try:
                    (parent / name).rmdir()
                except OSError:
                    pass

    @property
    def kind(self) -> str:
        if self.cgroup is not None:
            return "cgroup"
        return "rlimit" if os.geteuid() != 0 else "session"

    def nproc_limit(self) -> int:
        """RLIMIT_NPROC for the worker; 0 when a cgroup caps processes (or root would ignore it)."""
        if self.cgroup is not None or os.geteuid() == 0:
            return 0
        own = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == os.geteuid())
        return own + settings().max_processes

    def adopt(self, pid: int) -> None:
        if self.cgroup is not None:
            try:
                (self.cgroup / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                logger.warning("could not move worker %d into its cgroup: %s", pid, exc)

    def members(self) -> list[int]:
        """Live (not yet zombie) processes in the cgroup."""
        if self.cgroup is None:
            return []
        try:
            pids = [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            return []
        return [p for p in pids if _state(p) not in ("Z", "X", "")]

    def kill_all(self, pid: int) -> list[int]:
        """SIGKILL the worker's session and every member of its cgroup; returns who is still there."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        members = sorted(set(self.members()) | set(_session_members(pid)))
        for member in members:
            try:
                os.kill(member, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return members

    def release(self) -> bool:
        """Remove the cgroup; False while it still holds (dying) processes."""
        if self.cgroup is None:
            return True
        try:
            self.cgroup.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


_FREEZER_ROOTS = (Path("/sys/fs/cgroup/freezer"),)


def _freezer_parent() -> Path | None:
    for root in _FREEZER_ROOTS:
        try:
            if not (root / "cgroup.procs").exists():
                continue
            parent = root / "kfoundry"
            parent.mkdir(exist_ok=True)
            return parent
        except OSError:
            continue
    return None


class Freezer:
    """Stops every process of one worker while the trusted side reads what it handed over.

    A cgroup freezer where the host offers one (every descendant, whatever session it made),
    else SIGSTOP to the worker's session and cgroup members, waiting until each thread stopped.
    """

    _parent: Path | None | bool = False

    def __init__(self, name: str, cage: Containment) -> None:
        if Freezer._parent is False:
            Freezer._parent = _freezer_parent()
        self.cage = cage
        self.group: Path | None = None
        self.pid = 0
        self.frozen = False
        parent = Freezer._parent
        if isinstance(parent, Path):
            try:
                (parent / name).mkdir()
                self.group = parent / name
            except OSError as exc:
                logger.warning("freezer cgroup unavailable (%s); stopping workers with SIGSTOP instead", exc)
                Freezer._parent = None

    @property
    def kind(self) -> str:
        return "cgroup" if self.group is not None else "signal"

    def adopt(self, pid: int) -> None:
        self.pid = pid
        if self.group is not None:
            try:
                (self.group / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                logger.warning("could not move worker %d into its freezer cgroup: %s", pid, exc)
                self.group = None

    def members(self) -> list[int]:
        """The worker's processes: itself, its session and its cgroup."""
        frozen: set[int] = set()
        if self.group is not None:
            try:
                frozen = {int(p) for p in (self.group / "cgroup.procs").read_text().split() if _state(int(p)) not in ("Z", "X", "")}
            except (OSError, ValueError):
                pass
        return sorted(set(self.cage.members()) | set(_session_members(self.pid)) | frozen | {self.pid})

    def freeze(self) -> None:
        """Ask every process (and thread) of the worker to stop; ``settled`` says when they have."""
        self.frozen = True
        if self.group is not None:
            try:
                (self.group / "freezer.state").write_text("FROZEN")
                return
            except OSError:
                self.group = None
        for member in self.members():
            try:
                os.kill(member, signal.SIGSTOP)
            except (ProcessLookupError, PermissionError):
                pass

    def settled(self) -> bool:
        if self.group is not None:
            try:
                return (self.group / "freezer.state").read_text().strip() == "FROZEN"
            except OSError:
                return False
        return all(_stopped(member) for member in self.members())

    def thaw(self) -> None:
        if not self.frozen:
            return
        self.frozen = False
        if self.group is not None:
            try:
                (self.group / "freezer.state").write_text("THAWED")
            except OSError:
                pass
            return
        for member in self.members():
            try:
                os.kill(member, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass

    def release(self) -> bool:
        self.thaw()
        if self.group is None:
            return True
        try:
            self.group.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


def _stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (or gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _owner(proc: Path) -> int:
    try:
        return proc.stat().st_uid
    except OSError:
        return -1


def _state(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _session_members(sid: int) -> list[int]:
    found: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after "comm)": state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X") and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def inner_pid(outer: int, announced: int) -> int:
    """The host pid of the process under ``outer`` (a sandbox) that calls itself ``announced`` in its pid namespace."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        nspids = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspids) > 1 and int(nspids[-1]) == announced and _descends_from(int(proc.name), outer):
            return int(proc.name)
    return outer


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def worker_env(workdir: Path, extra: dict[str, str], caches: Path) -> dict[str, str]:
    """A scrubbed environment: no tokens, keys or server configuration reach candidate code."""
    shared = caches
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
    env.update(
        {
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            # The torch.compile baseline's cache (the reference worker's); backends add their own caches.
            "TORCHINDUCTOR_CACHE_DIR": str(shared / "inductor"),
            # Compile in the worker itself: a pool of compile processes costs seconds to start per job.
            "TORCHINDUCTOR_COMPILE_THREADS": "1",
            # a path the sandbox cannot reach; it tells a worker's processes apart from other servers'
            "KFOUNDRY_HOME": str(settings().home),
            "USER": "kfoundry",
            "LOGNAME": "kfoundry",
        }
    )
    env.update(extra)
    return env


def sweep_leftovers(*roots: Path) -> int:
    """Remove worker folders (``w<pid>-...``) whose server is gone (a SIGKILLed server cannot clean up)."""
    removed = 0
    for root in roots:
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            pid = entry.name[1:].split("-", 1)[0]
            if not entry.name.startswith("w") or not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
                continue
            if entry.parent.parent.is_relative_to("/sys/fs/cgroup"):
                _end_members(entry)
                try:
                    entry.rmdir()  # a cgroup folder goes with rmdir only, and only once empty
                except OSError:
                    continue
            else:
                shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _end_members(group: Path, wait_s: float = 2.0) -> None:
    """Kill what is left in a dead server's cgroup, thawing it first.

    A worker frozen when its server was SIGKILLed stays frozen for good: the death signal
    bubblewrap's --die-with-parent sends cannot be delivered to a frozen process, so it
    would hold its memory (and its GPU) forever. Bounded: whatever has not gone after
    ``wait_s`` is left for the next sweep.
    """
    state = group / "freezer.state"
    try:
        if state.exists():
            state.write_text("THAWED")
        members = [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if not (group / "cgroup.procs").read_text().split():
                return
        except OSError:
            return
        time.sleep(0.02)


def cgroup_parents() -> list[Path]:
    """The pids and freezer cgroup folders workers are put in, where this host has them."""
    return [p for p in (_cgroup_parent(), _freezer_parent()) if p is not None]


def make_workdir(name: str) -> Path:
    path = sandbox_root() / name
    path.mkdir(mode=0o700)
    return path


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
