"""CPU attribution by sampling: real processes doing real work, sampled from outside and charged to the right code."""

from __future__ import annotations

import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kfoundry import jail
from kfoundry.sampler import (
    Attribution,
    IsolatedSampler,
    ObjectShare,
    Sampler,
    Where,
    classify,
    descendants,
    host_refusal,
    judge,
    probe,
    unsupported,
)

BUSY_CPP = r"""
extern "C" double spin(long n) {
    double x = 0.0;
    for (long i = 0; i < n; ++i) x = x * 0.999999 + 1e-3 * (double)i;
    return x;
}
"""

#: loads the library named by argv[1] and spins in it; ctypes lets go of the GIL, so the time is all in the library
OWN_LOOP = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1]); lib.spin.restype = ctypes.c_double; lib.spin.argtypes = [ctypes.c_long]
print("ready", flush=True)
while True:
    lib.spin(3_000_000)
"""


@pytest.fixture(scope="module")
def busy_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A C++ shared library built here: the candidate's own compiled code."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the candidate's own library")
    folder = tmp_path_factory.mktemp("own")
    (folder / "busy.cpp").write_text(BUSY_CPP)
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(folder / "libbusy.so"), str(folder / "busy.cpp")], check=True, timeout=120)
    return folder / "libbusy.so"


def _wait_line(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> str:
    """The child's next stdout line, or a failure naming what it said on stderr."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout_s):
            line = proc.stdout.readline()
            if line:
                return line.strip()
    proc.kill()
    pytest.fail(f"child said nothing within {timeout_s:g} s: {proc.communicate(timeout=10)[1][-2000:]}")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -c code`` (or a full command) in its own session, wait for its 'ready', kill the session at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str | list[str], *args: str) -> subprocess.Popen[str]:
        cmd = code if isinstance(code, list) else [sys.executable, "-c", code, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        assert _wait_line(proc) == "ready"
        _skip_unless_sampleable(proc.pid)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=30)


def _skip_unless_sampleable(pid: int) -> None:
    """Skip where the host forbids ptrace (seccomp, no CAP_SYS_PTRACE); any other failure to sample fails the test."""
    why = unsupported() or probe(pid)
    if why and (unsupported() or any(code in why for code in ("EPERM", "EACCES", "ENOSYS"))):
        pytest.skip(f"this host does not let the trusted side sample processes: {why}")
    assert not why, why


def _sample(pid: int, own: list[Path], samples: int = 300, timeout_s: float = 60.0) -> Attribution:
    """Sampled from a helper process: the targets here are this process's own children."""
    with IsolatedSampler(pid, own=own) as sampler:
        got = sampler.wait(samples, timeout_s)
    assert got, f"only {sampler.result.samples if sampler.result else '?'} samples in {timeout_s:g} s: {sampler.result}"
    assert sampler.result is not None and sampler.result.failure is None
    return sampler.result


def _traced_or_stopped(root: int) -> list[str]:
    """Threads of ``root``'s tree that are traced or in a tracing stop."""
    found = []
    for pid in descendants(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("TracerPid", "0").strip() != "0" or fields.get("State", "").split()[:1] == ["t"]:
                found.append(f"{pid}/{tid}: {fields.get('State', '').strip()}, tracer {fields.get('TracerPid', '').strip()}")
    return found


def test_a_busy_loop_in_the_candidates_own_library_counts_as_own(spawn, busy_lib: Path) -> None:
    proc = spawn(OWN_LOOP, str(busy_lib))
    result = _sample(proc.pid, own=[busy_lib.parent])
    assert result.own_share >= 0.9, result
    assert result.objects[0] == ObjectShare(path=str(busy_lib), where=Where.own, samples=result.objects[0].samples)
    check = judge(result, threshold=0.8)
    assert check.passed and check.conclusive, check


def test_the_same_library_outside_the_own_paths_is_not_own(spawn, busy_lib: Path, tmp_path: Path) -> None:
    proc = spawn(OWN_LOOP, str(busy_lib))
    result = _sample(proc.pid, own=[tmp_path])
    assert result.own_share == 0.0
    check = judge(result)
    assert not check.passed and "libbusy.so" in check.reason, check


def test_numpy_matmul_is_charged_to_numpy_and_blas(spawn) -> None:
    pytest.importorskip("numpy")
    proc = spawn("import numpy as np\na = np.ones((256, 256), dtype=np.float32)\nprint('ready', flush=True)\nwhile True: a @ a")
    result = _sample(proc.pid, own=[])
    assert result.by_class.get(Where.numpy, 0) >= 0.8 * result.samples, result
    check = judge(result)
    assert not check.passed and check.conclusive and "blas" in check.reason.lower(), check


def test_a_pure_python_loop_is_charged_to_the_interpreter(spawn) -> None:
    proc = spawn("print('ready', flush=True)\nx = 0\nwhile True: x = (x * 31 + 7) % 1000003")
    result = _sample(proc.pid, own=[])
    assert result.by_class.get(Where.python, 0) >= 0.8 * result.samples, result
    assert not judge(result).passed


TORCH_IN_A_THREAD = """
import threading, torch
a = torch.ones(512, 512)
def work():
    while True:
        a @ a
worker = threading.Thread(target=work)
worker.start()
print("ready", flush=True)
worker.join()
"""

TORCH_IN_A_CHILD = """
import os, torch
child = os.fork()
if child == 0:
    a = torch.ones(512, 512)
    while True:
        a @ a
print("ready", flush=True)
os.waitpid(child, 0)
"""


@pytest.mark.parametrize("code", [TORCH_IN_A_THREAD, TORCH_IN_A_CHILD], ids=["thread", "forked-child"])
def test_torch_off_the_main_thread_is_sampled_and_not_own(spawn, busy_lib: Path, code: str) -> None:
    """The main thread only waits (and is never sampled), so every sample is the worker thread's or the child's."""
    pytest.importorskip("torch")
    proc = spawn(code)
    result = _sample(proc.pid, own=[busy_lib.parent])
    counted = result.samples - result.by_class.get(Where.openmp, 0)
    assert result.by_class.get(Where.torch, 0) >= 0.5 * counted, result
    assert result.own_share == 0.0
    if code is TORCH_IN_A_CHILD:
        assert result.processes_seen >= 2, result
    check = judge(result)
    assert not check.passed and "libtorch" in check.reason, check


def test_the_in_process_sampler_samples_a_grandchild_and_refuses_a_child(spawn, busy_lib: Path) -> None:
    """As the server sees a sandboxed worker: bubblewrap is its child, the interpreter below it is not."""
    shell = spawn(["sh", "-c", f'{sys.executable} -c "$1" {busy_lib} & wait', "sh", OWN_LOOP])
    python = _below(shell)
    with pytest.raises(RuntimeError, match="child of this process"):
        Sampler(shell.pid).start()
    with Sampler(python, own=[busy_lib.parent]) as sampler:
        assert sampler.wait(300, 60), sampler.taken
    assert sampler.result is not None and sampler.result.own_share >= 0.9, sampler.result
    assert sampler.result.failure is None and sampler.result.errors.get("unreleased", 0) == 0


def _below(shell: subprocess.Popen[str]) -> int:
    """The process a shell started (it runs the python the shell was given)."""
    deadline = time.monotonic() + 30
    while not (below := descendants(shell.pid) - {shell.pid}) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert below, "the shell's python never appeared"
    return below.pop()


@pytest.mark.parametrize("isolated", [True, False], ids=["helper-process", "in-process"])
def test_a_process_that_exits_mid_window_keeps_its_exit_status(spawn, busy_lib: Path, tmp_path: Path, isolated: bool) -> None:
    """Two threads spin in C and the process exits under the sampler: no error, and its parent still reaps status 7.

    In-process, the target is a shell's child (as the interpreter is bubblewrap's): the shell must still see status 7.
    """
    go = tmp_path / "go"
    code = OWN_LOOP.replace('print("ready", flush=True)', 'import os, threading\n'
                            'threading.Thread(target=lambda: [lib.spin(3_000_000) for _ in iter(int, 1)], daemon=True).start()\n'
                            'print("ready", flush=True)\n'
                            f'while not os.path.exists({str(go)!r}): lib.spin(300_000)\nos._exit(7)')
    if isolated:
        proc = spawn(code, str(busy_lib))
        sampler: Sampler | IsolatedSampler = IsolatedSampler(proc.pid, own=[busy_lib])
    else:
        proc = spawn(["sh", "-c", f'{sys.executable} -c "$1" {busy_lib} & wait $!; exit $?', "sh", code])
        sampler = Sampler(_below(proc), own=[busy_lib])
    with sampler:
        assert sampler.wait(100, 60)
        go.touch()
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            sampler.wait(10**9, 0.01)
    assert proc.returncode == 7
    result = sampler.result
    assert result is not None and result.failure is None and result.samples >= 100 and result.own_share >= 0.8, result
    assert result.errors.get("unreleased", 0) == 0


CHURN = OWN_LOOP.replace("while True:\n    lib.spin(3_000_000)", """import os, threading
while True:
    threads = [threading.Thread(target=lib.spin, args=(1_000_000,)) for _ in range(4)]
    for t in threads:
        t.start()
    child = os.fork()
    if child == 0:
        lib.spin(2_000_000)
        os._exit(0)
    for t in threads:
        t.join()
    os.waitpid(child, 0)
    print("round", flush=True)""")


def test_threads_and_children_that_come_and_go_are_never_left_stopped(spawn, busy_lib: Path) -> None:
    """Hundreds of short threads and forked children; creating and waking them shows as libc (clone3, futex)."""
    proc = spawn(CHURN, str(busy_lib))
    result = _sample(proc.pid, own=[busy_lib], samples=400)
    assert result.threads_seen > 10 and result.processes_seen > 3, result
    assert result.by_class.get(Where.own, 0) >= 0.3 * result.samples, result
    assert _traced_or_stopped(proc.pid) == []
    # still making progress: every thread and child it waits for runs on after the window
    for _ in range(3):
        assert _wait_line(proc, 30) == "round"


def test_threads_held_by_another_tracer_count_as_unseen_not_own(spawn, busy_lib: Path) -> None:
    """A candidate that has its threads traced by a process of its own cannot hide them: the time counts against it."""
    proc = spawn(OWN_LOOP, str(busy_lib))
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        assert libc.ptrace(0x4206, proc.pid, None, None) == 0, os.strerror(ctypes.get_errno())  # PTRACE_SEIZE, never stopping it
        held.set()
        done.wait(120)  # the seize ends with this thread

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(30)
        result = _sample(proc.pid, own=[busy_lib], samples=100)
    finally:
        done.set()
        holder.join(30)
    assert result.by_class.get(Where.unseen, 0) >= 0.9 * result.samples and result.own_share <= 0.1, result
    check = judge(result)
    assert not check.passed and "[ptrace denied]" in check.reason, check


SANDBOXED = OWN_LOOP.replace('print("ready", flush=True)', 'import os\nprint("ready", os.getuid(), flush=True)')


def test_a_sandboxed_worker_under_another_uid_is_sampled_from_root(busy_lib: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox drops to another uid only when its builder is root")
    if jail.reason():
        pytest.skip(f"no usable bubblewrap: {jail.reason()}")
    scratch = Path(tempfile.mkdtemp(dir=jail.sandbox_root()))
    proc: subprocess.Popen[str] | None = None
    try:
        jail.hand_to_sandbox(scratch)
        lib = scratch / "libbusy.so"
        shutil.copy(busy_lib, lib)
        lib.chmod(0o755)
        cmd = jail.Jail(scratch=scratch).command([sys.executable, "-c", SANDBOXED, str(lib)])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        said = _wait_line(proc).split()
        assert said[0] == "ready" and said[1] != "0", said
        inner = [pid for pid in descendants(proc.pid) if Path(f"/proc/{pid}/status").read_text().count(f"\t{said[1]}\t") >= 1]
        assert inner, "no process of the sandbox runs as the sandbox user"
        _skip_unless_sampleable(inner[0])
        result = _sample(proc.pid, own=[scratch])
        assert result.own_share >= 0.9, result
        assert judge(result).passed
        assert _traced_or_stopped(proc.pid) == []
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def test_sampling_slows_a_busy_process_by_a_bounded_amount(spawn, busy_lib: Path) -> None:
    """Chunks of fixed work, timed by the child itself, with and without the sampler, alternating (the host is shared)."""
    code = OWN_LOOP.replace("while True:\n    lib.spin(3_000_000)", "import time\nwhile True:\n    t = time.monotonic(); lib.spin(1_000_000)\n"
                                                                   "    print(time.monotonic(), time.monotonic() - t, flush=True)")
    proc = spawn(code, str(busy_lib))
    lines: list[tuple[float, float]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            end, took = line.split()
            lines.append((float(end), float(took)))

    threading.Thread(target=read, daemon=True).start()
    windows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    rates = []
    for sampled in (False, True) * 3:
        start = time.monotonic()
        if sampled:
            with IsolatedSampler(proc.pid, own=[busy_lib]) as sampler:
                sampler.wait(10**9, 0.5)
            assert sampler.result is not None
            rates.append(sampler.result.samples / sampler.result.duration_s)
        else:
            threading.Event().wait(0.5)
        windows[sampled].append((start, time.monotonic()))

    def median(sampled: bool) -> float:
        took = sorted(t for end, t in lines if any(a <= end - t and end <= b for a, b in windows[sampled]))
        assert len(took) >= 20, f"only {len(took)} chunks measured"
        return took[len(took) // 2]

    slowdown = median(True) / median(False) - 1
    assert min(rates) > 100, rates
    assert slowdown < 0.5, f"sampling at {min(rates):.0f}-{max(rates):.0f} Hz slowed the process by {slowdown:.0%}"


def test_objects_are_classified_by_where_they_come_from(tmp_path: Path) -> None:
    own = {str(tmp_path / "build"), str(tmp_path / "kernel.so")}
    cases = {
        str(tmp_path / "build" / "libcand.so"): Where.own,
        str(tmp_path / "kernel.so"): Where.own,
        str(tmp_path / "kernel.so.bak"): Where.other,
        "/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so": Where.torch,
        "/venv/lib/python3.11/site-packages/torch/lib/libgomp-a34b3233.so.1": Where.openmp,
        "/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so": Where.numpy,
        "/venv/lib/python3.11/site-packages/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so": Where.numpy,
        "/usr/lib/libpython3.11.so.1.0": Where.python,
        "/usr/lib/python3.11/lib-dynload/_struct.cpython-311-x86_64-linux-gnu.so": Where.python,
        "/usr/lib/x86_64-linux-gnu/libm.so.6": Where.libc,
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30": Where.libc,
        "[vdso]": Where.libc,
        "": Where.jit,
        "[anon:jit]": Where.jit,
        "/memfd:kernel (deleted)": Where.jit,
        "/usr/lib/x86_64-linux-gnu/libz.so.1": Where.other,
    }
    assert {path: classify(path, own) for path in cases} == cases


def _attribution(**by_class: int) -> Attribution:
    names = {Where.own: "/w/build/libcand.so", Where.torch: "/v/torch/lib/libtorch_cpu.so", Where.python: "/p/libpython3.11.so.1.0",
             Where.openmp: "/v/torch/lib/libgomp.so.1", Where.unseen: "[ptrace denied]"}
    counts = {Where(k): v for k, v in by_class.items()}
    objects = sorted((ObjectShare(path=names[k], where=k, samples=v) for k, v in counts.items()), key=lambda o: -o.samples)
    total = sum(counts.values())
    return Attribution(samples=total, by_class=counts, objects=objects, own_share=counts.get(Where.own, 0) / total,
                       threads_seen=3, threads_sampled=3, processes_seen=1, duration_s=1.0, interval_s=0.001, rounds=1000, cpu_s=0.1)


def test_judge_names_where_the_time_went() -> None:
    check = judge(_attribution(own=8, torch=62, python=30), threshold=0.8)
    assert not check.passed and check.conclusive
    assert check.reason == "8% of CPU samples in the candidate's own code (need 80%); 62% in libtorch_cpu.so, 30% in libpython3.11.so.1.0"
    assert judge(_attribution(own=8, torch=62, python=30), threshold=0.7, allowed={Where.torch}).passed


def test_judge_counts_openmp_spin_neither_way_and_unseen_time_against() -> None:
    assert judge(_attribution(own=80, openmp=900, python=20)).share == pytest.approx(0.8)
    assert not judge(_attribution(own=80, openmp=900, python=20), neutral=()).passed
    denied = judge(_attribution(own=50, unseen=50))
    assert not denied.passed and "50% in [ptrace denied]" in denied.reason


def test_judge_calls_too_few_samples_inconclusive() -> None:
    check = judge(_attribution(own=5, openmp=500), min_samples=20)
    assert not check.passed and not check.conclusive and "only 5 samples" in check.reason


def test_a_helper_launched_ahead_reports_counts_by_class_once_opened(spawn, busy_lib: Path) -> None:
    """Launched while other work runs, opened later: the running counts per class add up to the samples taken."""
    proc = spawn(OWN_LOOP, str(busy_lib))
    window = IsolatedSampler(proc.pid, own=[busy_lib])
    window.launch()
    try:
        window.open()
        assert window.wait(200, 60), window.taken
        counts = window.by_class()
    finally:
        result = window.stop()
    assert sum(counts.values()) == window.taken and counts.get(Where.own, 0) >= 0.8 * window.taken, counts
    assert result.samples >= window.taken and result.own_share >= 0.8, result


def test_an_abandoned_helper_leaves_its_target_running_and_untraced(spawn, busy_lib: Path) -> None:
    proc = spawn(OWN_LOOP, str(busy_lib))
    window = IsolatedSampler(proc.pid, own=[busy_lib])
    window.launch()
    window.open()
    assert window.wait(50, 60)
    window.abandon()
    assert window.result is None
    assert _traced_or_stopped(proc.pid) == []
    assert proc.poll() is None


def test_the_hosts_verdict_on_sampling_agrees_with_probing_a_process() -> None:
    """Found once by a throwaway helper, so a refusal by the host is told apart from a target that refuses."""
    if unsupported():
        pytest.skip(unsupported())
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait_line(proc) == "ready"
        direct = probe(proc.pid)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert (host_refusal() == "") == (direct == ""), (host_refusal(), direct)
