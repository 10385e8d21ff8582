"""The namespace sandbox every piece of untrusted code runs in: bubblewrap.

A worker or a build sees a private root: read-only binds of the system (``/usr`` and the
merged-usr links), the interpreter, its site-packages and the toolchains; its own scratch
directory and exchange directory; fresh ``/tmp``, ``/dev/shm`` and ``/proc``; no network and
its own pid, ipc and uts namespaces. It cannot name the server's processes, environment,
artifact store, build cache, the project tree or any other worker.

Identity: a root server runs bubblewrap with its own privileges (so it can bind paths under
0700 directories such as ``/root``) and the sandboxed process drops to ``settings().sandbox_uid``
before any untrusted code runs; any other server puts the sandbox in a user namespace.

Where bubblewrap is missing or cannot create namespaces the server refuses untrusted code,
unless the operator set ``KFOUNDRY_UNSAFE_NO_SANDBOX=1`` (then processes only get rlimits,
a session, a scrubbed environment and a private scratch directory).
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kfoundry.config import settings
from kfoundry.errors import KfoundryError

_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime", "/etc/nsswitch.conf")
_PR_SET_DUMPABLE = 4
_MERGED = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Run (``python -S -I``: no site, nothing from the environment) before the sandboxed command: caps
#: (address space MiB, CPU seconds, file size MiB; 0 = none), then, in a sandbox built by root,
#: the drop to the sandbox user for good (uid -1: stay).
_SHIM = (
    "import os,sys,resource as r;m,c,f,u=(int(a) for a in sys.argv[1:5])\n"
    "if m:r.setrlimit(r.RLIMIT_AS,(m<<20,m<<20))\n"
    "if c:r.setrlimit(r.RLIMIT_CPU,(c,c+1))\n"
    "if f:r.setrlimit(r.RLIMIT_FSIZE,(f<<20,f<<20))\n"
    "r.setrlimit(r.RLIMIT_CORE,(0,0))\n"
    "if u>=0:os.setgroups([]);os.setresgid(u,u,u);os.setresuid(u,u,u)\n"
    "os.execvp(sys.argv[5],sys.argv[5:])"
)
# Runs its arguments in a network namespace of their own whose only interface, loopback, is up:
# unshare(CLONE_NEWNET), then SIOCSIFFLAGS(lo, IFF_UP|IFF_LOOPBACK|IFF_RUNNING).
_NETNS_SHIM = (
    "import ctypes,fcntl,os,socket,struct,sys\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    "if libc.unshare(0x40000000)!=0:e=ctypes.get_errno();sys.exit(f'unshare(CLONE_NEWNET): {os.strerror(e)}')\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);fcntl.ioctl(s,0x8914,struct.pack('16sH22x',b'lo',0x1|0x8|0x40));s.close()\n"
    "os.execvp(sys.argv[1],sys.argv[1:])"
)


def sandbox_root() -> Path:
    """World-traversable scratch root: worker and build directories live here, not under the server's home."""
    explicit = os.environ.get("KFOUNDRY_SANDBOX_ROOT")
    root = Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"kfoundry-{os.geteuid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


class SandboxUnavailable(KfoundryError):
    """Untrusted code cannot be run: no usable bubblewrap, and the operator did not opt out."""


@functools.cache
def _probe() -> tuple[str, str, bool]:
    """(bwrap path or "", why it is unusable or "", whether it takes ``--size``)."""
    path = shutil.which("bwrap") or ""
    if not path:
        return "", "bubblewrap (bwrap) is not installed: apt-get install bubblewrap", False
    args = [path, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if os.geteuid() != 0:
        args.insert(1, "--unshare-user")
    try:
        done = subprocess.run([*args, "true"], capture_output=True, timeout=30, check=False)
        helptext = subprocess.run([path, "--help"], capture_output=True, timeout=30, check=False).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return path, f"bubblewrap could not be run: {exc}", False
    if done.returncode != 0:
        return path, f"bubblewrap cannot create namespaces here: {done.stderr.decode(errors='replace').strip()[:300]}", False
    return path, "", "--size" in helptext


def reason() -> str:
    """Why untrusted code would run unconfined; empty when bubblewrap works."""
    return _probe()[1]


def enabled() -> bool:
    """True when untrusted code runs in bubblewrap; raises when it cannot and the operator did not opt out.

    Raises:
        SandboxUnavailable: no usable bubblewrap and no ``KFOUNDRY_UNSAFE_NO_SANDBOX=1``.
    """
    if not reason():
        return True
    if settings().unsafe_no_sandbox:
        return False
    raise SandboxUnavailable(f"refusing to run untrusted code: {reason()} (or set KFOUNDRY_UNSAFE_NO_SANDBOX=1 on a single-user host)")


def describe() -> str:
    """One line for the ``backends`` report."""
    why = reason()
    if why:
        mode = "UNSAFE: untrusted code runs without namespaces" if settings().unsafe_no_sandbox else "untrusted code is refused"
        return f"{mode} ({why})"
    who = f"uid {settings().sandbox_uid}" if os.geteuid() == 0 else "a user namespace"
    return f"bubblewrap: own pid, net (none), ipc and uts namespaces, read-only system, private scratch; runs as {who}"


def identity() -> tuple[int, int] | None:
    """The (uid, gid) sandboxed code runs as outside its namespaces, when it differs from the server's."""
    if os.geteuid() != 0 or not enabled():
        return None
    return settings().sandbox_uid, settings().sandbox_uid


def hand_to_sandbox(path: Path) -> None:
    """Make a directory the sandbox writes (scratch, exchange) its own."""
    who = identity()
    if who is not None:
        os.chown(path, *who)


def _project_root() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else None


def _package_dirs() -> list[Path]:
    """Where the kfoundry packages live (an editable install maps each to its own folder)."""
    import kfoundry

    dirs = [Path(p) for p in kfoundry.__path__]
    for name in ("backends", "runner", "verify", "profilers", "prompts", "examples", "server", "tools", "clients"):
        try:
            module = __import__(f"kfoundry.{name}", fromlist=["__path__"])
        except ImportError:
            continue
        dirs += [Path(p) for p in getattr(module, "__path__", [])]
    return dirs


def _python_dirs() -> list[Path]:
    """The interpreter and every import root except project trees (tests, .git, artifacts stay outside)."""
    project = _project_root()
    found = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent]
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        path = Path(entry)
        if project is not None and path.is_relative_to(project) and not path.is_relative_to(Path(sys.prefix)):
            continue
        found.append(path)
    return found


def _toolchain_dirs() -> list[Path]:
    found: list[Path] = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            found.append(Path(os.environ[env]))
    # Nsight Compute's launcher script looks for its install here
    found += [Path(p) for p in ("/opt/nvidia",) if os.path.isdir(p)]
    for tool in ("nvcc", "ncu", "g++", "ptxas", "hipcc"):
        where = shutil.which(tool)
        if where:
            found.append(Path(os.path.realpath(where)).parent.parent)
    return found


def _private() -> list[Path]:
    """Folders no sandbox may see any part of: the server's home, the sandbox and exchange roots."""
    shm = Path("/dev/shm")
    exchange = (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"kfoundry-x-{os.geteuid()}"
    return [Path(os.path.realpath(p)) for p in (settings().home, sandbox_root(), exchange)]


def _readable() -> list[Path]:
    """Everything bound read-only, outermost first, without duplicates or paths inside another.

    ``python -m`` puts the working directory on ``sys.path``; a path that is the working
    directory or holds a private folder is left out, whatever put it there.
    """
    cwd = Path(os.path.realpath(os.getcwd()))
    private = _private()
    candidates = {Path(os.path.realpath(p)) for p in [*_python_dirs(), *_package_dirs(), *_toolchain_dirs()] if os.path.isdir(p)}
    ordered = sorted(candidates, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in ordered:
        if path == Path("/") or str(path).startswith(("/proc", "/sys", "/dev")):
            continue
        if path == cwd and not path.is_relative_to(Path(sys.prefix)) and not path.is_relative_to(Path(sys.base_prefix)):
            continue
        if any(p.is_relative_to(path) or path.is_relative_to(p) for p in private):
            continue
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _identity_files(root: Path) -> Path:
    """A passwd/group pair naming the sandbox user (getpass and some toolchains look it up)."""
    folder = root / ".identity"
    uid = settings().sandbox_uid if os.geteuid() == 0 else os.geteuid()
    wanted = {
        "passwd": f"root:x:0:0:root:/root:/bin/sh\nkfoundry:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        "group": f"root:x:0:\nkfoundry:x:{uid}:\nnogroup:x:65534:\n",
    }
    if all((folder / name).is_file() and (folder / name).read_text() == text for name, text in wanted.items()):
        return folder
    folder.mkdir(exist_ok=True)
    for name, text in wanted.items():
        # Staged then renamed: a sandbox being built meanwhile binds the old file or the new one, never half of one.
        staged = folder / f".{name}.{os.getpid()}"
        staged.write_text(text)
        os.chmod(staged, 0o644)
        os.replace(staged, folder / name)
    return folder


@dataclass
class Jail:
    """One sandbox: what it may write, whether it sees a GPU, and the command line that builds it."""

    scratch: Path
    writable: list[Path] = field(default_factory=list)
    gpu: bool = False
    #: the command drops to the sandbox user itself (the worker entry, which may sit under a trusted wrapper)
    drops_itself: bool = False
    #: a network namespace of its own; False only where the caller already made one for it with ``private_network``
    #: (a trusted profiler outside the sandbox talks to its target over that namespace's loopback)
    own_network: bool = True
    tmp_mb: int = 1024
    #: caps the shim sets before running the command (builds): address space in MiB and CPU seconds, 0 = none
    memory_mb: int = 0
    cpu_s: int = 0
    file_mb: int = 0

    def command(self, inner: list[str]) -> list[str]:
        """``inner`` run inside the sandbox (the caller passes descriptors it must keep with ``pass_fds``)."""
        path, _, sized = _probe()
        root = os.geteuid() == 0
        args = [path, "--die-with-parent", "--unshare-pid", *(["--unshare-net"] if self.own_network else []), "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "kfoundry-sandbox"]
        if root:
            # the drop to the sandbox user needs SETUID/SETGID; entering its 0700 scratch before that, DAC_OVERRIDE
            caps = ["CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"]
            args += ["--cap-drop", "ALL"] + [part for cap in caps for part in ("--cap-add", cap)]
        else:
            args += ["--unshare-user"]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in _MERGED:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        args += ["--perms", "0755", "--dir", "/etc"]
        for etc in _ETC:
            args += ["--ro-bind-try", etc, etc]
        identity_dir = _identity_files(sandbox_root())
        args += ["--ro-bind", str(identity_dir / "passwd"), "/etc/passwd", "--ro-bind", str(identity_dir / "group"), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev", "--ro-bind-try", "/sys", "/sys"]
        for tmp in ("/tmp", "/dev/shm"):
            args += (["--size", str(self.tmp_mb << 20)] if sized else []) + ["--tmpfs", tmp]
        if self.gpu:
            for node in sorted(glob.glob("/dev/nvidia*")):
                args += ["--dev-bind", node, node]
        readable = [ro for ro in _readable() if not ro.is_relative_to("/usr")]
        writable = [self.scratch, *self.writable]
        # bubblewrap would copy the host's modes onto the folders it makes on the way (/root is 0700),
        # which would lock the sandbox user out of its own interpreter
        made: set[Path] = {Path("/"), Path("/tmp"), Path("/dev"), Path("/dev/shm")}
        for path in [*readable, *writable]:
            for parent in reversed(path.parents):
                if parent not in made:
                    made.add(parent)
                    args += ["--perms", "0755", "--dir", str(parent)]
        for ro in readable:
            args += ["--ro-bind", str(ro), str(ro)]
        for rw in writable:
            args += ["--bind", str(rw), str(rw)]
        args += ["--chdir", str(self.scratch), "--"]
        if self.drops_itself:
            return [*args, *inner]
        return [*args, *capped(inner, self.memory_mb, self.cpu_s, self.file_mb, settings().sandbox_uid if root else -1)]


def private_network(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace holding only loopback (needs CAP_SYS_ADMIN: the server runs as root)."""
    return [sys.executable, "-S", "-I", "-c", _NETNS_SHIM, *argv]


@functools.cache
def private_network_reason() -> str:
    """Why ``private_network`` cannot be used here, or "" when it can."""
    try:
        done = subprocess.run(private_network([sys.executable, "-S", "-I", "-c", "pass"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot start a private network namespace: {exc}"
    if done.returncode != 0:
        return f"cannot make a private network namespace ({done.stderr.strip()[-200:] or done.returncode}): the server needs CAP_SYS_ADMIN (root)"
    return ""


def capped(argv: list[str], memory_mb: int = 0, cpu_s: int = 0, file_mb: int = 0, uid: int = -1) -> list[str]:
    """``argv`` started under the shim: its caps set and, for ``uid`` >= 0, run as that user."""
    return [sys.executable, "-S", "-I", "-c", _SHIM, str(memory_mb), str(cpu_s), str(file_mb), str(uid), *argv]


def drop_privileges() -> None:
    """Become the sandbox user for good (a root-built sandbox's command calls this before untrusted code)."""
    if os.geteuid() != 0:
        return
    uid = settings().sandbox_uid
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # A change of uid makes the process non-dumpable: its /proc/self would stay root's and the
    # sandbox user could not read its own descriptors or working directory through it (torch's
    # compile workers do). The sandbox holds no other process this would expose it to.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
