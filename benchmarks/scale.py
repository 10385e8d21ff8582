"""Scale figures: verify/profile wall time and server memory on large elementwise problems, with KernelBench as anchor.

    python benchmarks/scale.py --out scale.json [--sizes 512mb,6.4gb] [--kfoundry-root PATH]
                               [--kb-root PATH] [--timeout-s S] [--skip-anchor]

For each size it starts a fresh ``kfoundry serve`` over stdio from --kfoundry-root (its own KFOUNDRY_HOME),
calls compile, verify (trials 5) and profile (defaults) with a Triton ReLU candidate on a KernelBench
level-1 ``19_ReLU``-format problem (512 MB: 4096x32768 fp32; 6.4 GB: 4096x393216 fp32, the original), and
samples /proc every ~50 ms: the server's VmRSS/VmHWM and its descendants' (the workers). The server is
stopped, then KernelBench's own ``eval_kernel_against_ref`` (5 correctness + 100 perf trials, backend
triton) runs the same candidate in a fresh subprocess as the anchor. All results go to --out as JSON,
rewritten after every step so a run cut short still leaves what it measured.

--kfoundry-root picks the checkout being measured (the old engine in .bench-before/, the working tree
for "after"). The package maps kfoundry.server -> server/ etc. through setuptools package-dir, so that
checkout must be pip-installed (``pip install --no-deps --no-build-isolation -e ROOT``); the script
checks in a subprocess that kfoundry and kfoundry.verify import from ROOT and stops otherwise.
On the device machine, benchmarks/scale_device.sh installs the carried wheels and the checkout first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROBLEMS = HERE / "scale_problems"
SIZES = {"tiny": "relu_tiny.py", "512mb": "relu_512mb.py", "6.4gb": "relu_6p4gb.py"}
CANDIDATE = "relu_triton.py"
ENV_PREFIXES = ("KFOUNDRY_", "TRITON_", "CUDA_", "PYTHON", "NCCL_", "TORCH_", "NVSHMEM_")
ENV_NAMES = ("PATH", "HOME", "LD_LIBRARY_PATH", "TMPDIR")


# --------------------------------------------------------------------------------------------------------------
# /proc sampling


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> list[int]:
    seen: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


class _Gpu:
    """Device-wide used GPU memory through NVML, when nvidia-ml-py is importable (it sees every process)."""

    def __init__(self) -> None:
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - optional figure
            self.handle = None

    def used_mb(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
        except Exception:  # noqa: BLE001
            return None


class Sampler:
    """Samples one root process and its descendants every `period` seconds; peaks kept per phase and overall."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period = pid, period
        self.gpu = _Gpu()
        self.phase = "start"
        self.phases: dict[str, dict[str, float]] = {}
        self.worker_hwm_kb: dict[int, int] = {}
        self.server_hwm_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, phase: str) -> None:
        self.sample()
        self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        server = _status_kb(self.pid)
        if not server:
            return
        self.samples += 1
        self.server_hwm_kb = max(self.server_hwm_kb, server.get("VmHWM", 0))
        workers_rss = 0
        kids = _descendants(self.pid)
        for kid in kids:
            st = _status_kb(kid)
            workers_rss += st.get("VmRSS", 0)
            if st.get("VmHWM", 0) > self.worker_hwm_kb.get(kid, 0):
                self.worker_hwm_kb[kid] = st["VmHWM"]
        gpu = self.gpu.used_mb()
        p = self.phases.setdefault(self.phase, {"server_rss_peak_mb": 0.0, "workers_rss_sum_peak_mb": 0.0, "workers_max": 0})
        p["server_rss_peak_mb"] = max(p["server_rss_peak_mb"], server.get("VmRSS", 0) / 1024)
        p["workers_rss_sum_peak_mb"] = max(p["workers_rss_sum_peak_mb"], workers_rss / 1024)
        p["workers_max"] = max(p["workers_max"], len(kids))
        if gpu is not None:
            p["gpu_used_peak_mb"] = max(p.get("gpu_used_peak_mb", 0.0), gpu)

    def summary(self) -> dict[str, Any]:
        return {
            "server_vmhwm_mb": round(self.server_hwm_kb / 1024, 1),
            "server_rss_peak_mb": round(max((p["server_rss_peak_mb"] for p in self.phases.values()), default=0.0), 1),
            "worker_vmhwm_max_mb": round(max(self.worker_hwm_kb.values(), default=0) / 1024, 1),
            "workers_rss_sum_peak_mb": round(max((p["workers_rss_sum_peak_mb"] for p in self.phases.values()), default=0.0), 1),
            "workers_seen": len(self.worker_hwm_kb),
            "gpu_used_peak_mb": max((p.get("gpu_used_peak_mb", 0.0) for p in self.phases.values()), default=None) if self.gpu.handle else None,
            "samples": self.samples,
            "phases": {k: {n: round(v, 1) for n, v in p.items()} for k, p in self.phases.items()},
        }


# --------------------------------------------------------------------------------------------------------------
# kfoundry over MCP


def _server_env(root: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["KFOUNDRY_HOME"] = str(home)
    return env


def check_install(root: Path) -> dict[str, str]:
    """Where kfoundry and its mapped subpackages import from, seen exactly as the server will see them."""
    env = _server_env(root, Path(tempfile.gettempdir()) / "kfscale-check")
    code = "import json, kfoundry, kfoundry.verify, kfoundry.server; print(json.dumps({m.__name__: m.__file__ for m in (kfoundry, kfoundry.verify, kfoundry.server)}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"kfoundry does not import from {root}:\n{done.stderr[-2000:]}\n(pip install --no-deps --no-build-isolation -e {root})")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {m: f for m, f in found.items() if not Path(f).resolve().is_relative_to(root)}
    if wrong:
        raise SystemExit(f"kfoundry imports from outside {root}: {wrong}\n(pip install --no-deps --no-build-isolation -e {root})")
    return found


def _server_pid(parent: int) -> int | None:
    for kid in _children(parent):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"kfoundry.cli" in cmd and b"serve" in cmd:
            return kid
    return None


def _brief(tool: str, data: dict[str, Any]) -> dict[str, Any]:
    keep = {"state": data.get("state"), "duration_s": data.get("duration_s"), "run_id": data.get("run_id"), "device": data.get("device")}
    if tool == "compile":
        keep["kernels"] = [{k: v for k, v in kern.items() if k in ("name", "build_s", "registers", "spills")} for kern in data.get("kernels", [])]
    if tool == "verify":
        keep.update(trials=data.get("trials"), trials_passed=data.get("trials_passed"), atol=data.get("atol"), rtol=data.get("rtol"))
        if data.get("mismatch"):
            keep["mismatch"] = data["mismatch"]
    if tool == "profile":
        for name in ("candidate", "eager", "compiled"):
            t = data.get(name)
            keep[name] = {k: t.get(k) for k in ("median_ms", "min_ms", "mean_ms", "iqr_ms", "cov", "n")} if t else None
        keep.update({k: data.get(k) for k in ("speedup_vs_eager", "speedup_vs_compile", "sol_ms", "sol_fraction", "own_kernel_share", "timed_rechecks")})
        if data.get("verify"):
            keep["verify_state"] = data["verify"].get("state")
            keep["verify_trials_passed"] = data["verify"].get("trials_passed")
        keep["warnings"] = data.get("warnings", [])[:5]
    if data.get("error"):
        err = data["error"]
        keep["error"] = {"type": err.get("type"), "message": str(err.get("message", ""))[:1500]}
    if data.get("findings"):
        keep["findings"] = [{k: str(f.get(k, ""))[:400] for k in ("rule", "kind", "message", "blocking") if k in f} for f in data["findings"][:8]]
    return keep


async def run_kfoundry(root: Path, size: str, reference: str, candidate: str, args: argparse.Namespace, record: dict[str, Any], save: Any) -> None:
    from mcp import Client, StdioServerParameters

    home = Path(tempfile.mkdtemp(prefix=f"kfscale-{size}-"))
    params = StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=_server_env(root, home), cwd=str(root))
    record["kfoundry_home"] = str(home)
    calls = record.setdefault("calls", {})
    extra = {"timeout_s": args.timeout_s} if args.timeout_s else {}
    plan = [
        ("compile", {"backend": args.backend, "candidate": candidate, **extra}),
        ("verify", {"backend": args.backend, "reference": reference, "candidate": candidate, "trials": args.trials, **extra}),
        ("profile", {"backend": args.backend, "reference": reference, "candidate": candidate, **extra}),
    ]
    start = time.perf_counter()
    async with Client(params, read_timeout_seconds=60) as client:
        record["connect_s"] = round(time.perf_counter() - start, 3)
        pid = _server_pid(os.getpid())
        record["server_pid"] = pid
        if pid is None:
            raise RuntimeError("could not find the kfoundry serve process among this process's children")
        with Sampler(pid, args.sample_period) as sampler:
            try:
                t0 = time.perf_counter()
                info = await client.call_tool("backends", {}, read_timeout_seconds=300)
                record["backends_s"] = round(time.perf_counter() - t0, 3)
                data = info.structured_content or {}
                record["backends"] = {"best": data.get("best"), "available": [b.get("name") for b in data.get("backends", []) if b.get("available")]}
                for tool, arguments in plan:
                    sampler.mark(tool)
                    t0 = time.perf_counter()
                    entry: dict[str, Any] = {}
                    try:
                        result = await client.call_tool(tool, arguments, read_timeout_seconds=(args.timeout_s or 600) + 300)
                        entry["wall_s"] = round(time.perf_counter() - t0, 3)
                        if result.is_error:
                            entry["tool_error"] = " ".join(getattr(c, "text", "") for c in result.content)[:2000]
                        else:
                            entry.update(_brief(tool, result.structured_content or {}))
                    except Exception as exc:  # noqa: BLE001 - record and stop: the server may be gone
                        entry["wall_s"] = round(time.perf_counter() - t0, 3)
                        entry["exception"] = _describe(exc)[:2000]
                        calls[tool] = entry
                        break
                    finally:
                        calls[tool] = entry
                        record["memory"] = sampler.summary()
                        save()
                sampler.mark("idle")
            finally:
                record["memory"] = sampler.summary()
    record["server_session_s"] = round(time.perf_counter() - start, 3)
    save()


# --------------------------------------------------------------------------------------------------------------
# KernelBench anchor


def _stand_in_for_unused_client_imports() -> None:
    """kernelbench.utils imports LLM clients (openai, litellm), dotenv and tqdm at module level; eval needs none of them."""
    import importlib.util
    import types

    for name, attrs in (("openai", {"OpenAI": object}), ("litellm", {"completion": None}), ("dotenv", {"load_dotenv": lambda *a, **k: False}),
                        ("tqdm", {"tqdm": lambda iterable=None, *a, **k: iterable})):
        if importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod


def anchor_child(args: argparse.Namespace) -> int:
    """Runs in its own process: one eval_kernel_against_ref call, its result as JSON in --anchor-json."""
    import resource

    t_start = time.perf_counter()
    _stand_in_for_unused_client_imports()
    sys.path.insert(0, str(Path(args.kb_root) / "src"))
    import torch
    from kernelbench.eval import eval_kernel_against_ref

    t_import = time.perf_counter() - t_start
    reference = Path(args.anchor_problem).read_text()
    candidate = Path(args.anchor_candidate).read_text()
    t0 = time.perf_counter()
    result = eval_kernel_against_ref(
        original_model_src=reference,
        custom_model_src=candidate,
        measure_performance=True,
        num_correct_trials=args.kb_correct_trials,
        num_perf_trials=args.kb_perf_trials,
        backend=args.anchor_backend,
        timing_method="cuda_event",
        verbose=False,
        device=torch.device("cuda:0"),
    )
    eval_s = time.perf_counter() - t0
    out: dict[str, Any] = {"import_s": round(t_import, 3), "eval_s": round(eval_s, 3), "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if result is None:
        out["result"] = None
    else:
        dumped = result.model_dump() if hasattr(result, "model_dump") else dict(result)
        dumped["metadata"] = {k: str(v)[:1500] for k, v in (dumped.get("metadata") or {}).items()}
        out["result"] = dumped
    Path(args.anchor_json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def run_anchor(problem: Path, candidate: Path, args: argparse.Namespace, record: dict[str, Any], backend: str = "triton") -> None:
    with tempfile.TemporaryDirectory(prefix="kfscale-kb-") as tmp:
        out_json = Path(tmp) / "anchor.json"
        log = Path(tmp) / "anchor.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--anchor-child", "--anchor-problem", str(problem), "--anchor-candidate", str(candidate),
               "--anchor-json", str(out_json), "--kb-root", str(args.kb_root), "--kb-correct-trials", str(args.kb_correct_trials),
               "--kb-perf-trials", str(args.kb_perf_trials), "--anchor-backend", backend, "--out", os.devnull]
        env = {k: v for k, v in os.environ.items() if k not in ("KFOUNDRY_HOME",)}
        t0 = time.perf_counter()
        with open(log, "w") as f:
            try:
                done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp, timeout=args.anchor_timeout_s)
                record["returncode"] = done.returncode
            except subprocess.TimeoutExpired:
                record["returncode"] = "timeout"
        record["wall_s"] = round(time.perf_counter() - t0, 3)
        if out_json.exists():
            record.update(json.loads(out_json.read_text()))
        text = log.read_text(errors="replace")
        record["log_tail"] = text[-3000:]


# --------------------------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """An exception as text, with the leaves of exception groups (anyio task groups wrap the real cause)."""
    if isinstance(exc, BaseExceptionGroup):
        return f"{type(exc).__name__}: " + "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def print_summary(results: dict[str, Any]) -> None:
    row = "{:<7} {:<8} {:>9} {:<16} {:>10} {:>10} {:>12} {:>12}"
    print()
    print(f"scale benchmark: root {results['kfoundry_root']} on {results.get('gpu') or 'no GPU'}")
    print(row.format("size", "call", "wall s", "state", "cand ms", "eager ms", "srv peak MB", "wrk peak MB"))
    print("-" * 92)
    for size, rec in results["sizes"].items():
        mem = rec.get("memory", {})
        phases = mem.get("phases", {})
        for tool, call in rec.get("calls", {}).items():
            ph = phases.get(tool, {})
            state = call.get("state") or ("tool_error" if "tool_error" in call else "exception" if "exception" in call else "?")
            print(row.format(size, tool, _fmt(call.get("wall_s")), str(state)[:16], _fmt((call.get("candidate") or {}).get("median_ms"), ".3f"),
                             _fmt((call.get("eager") or {}).get("median_ms"), ".3f"), _fmt(ph.get("server_rss_peak_mb"), ".0f"),
                             _fmt(ph.get("workers_rss_sum_peak_mb"), ".0f")))
        if mem:
            print(row.format(size, "server", "", "VmHWM", "", "", _fmt(mem.get("server_vmhwm_mb"), ".0f"), _fmt(mem.get("worker_vmhwm_max_mb"), ".0f")))
        kb = rec.get("anchor")
        if kb:
            res = kb.get("result") or {}
            state = "correct" if res.get("correctness") else ("compiled" if res.get("compiled") else f"rc={kb.get('returncode')}")
            print(row.format(size, "KB eval", _fmt(kb.get("wall_s")), state, _fmt(res.get("runtime"), ".3f"), _fmt(res.get("ref_runtime"), ".3f"),
                             _fmt(kb.get("maxrss_mb"), ".0f"), ""))
    print("-" * 92)
    print("cand/eager ms: kfoundry medians; KB eval: means (cuda_event, cold L2). srv/wrk peak: VmRSS peak during the call (workers summed); "
          "'server' row: VmHWM of the server / largest worker.")


def _gpu_name() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--sizes", default="512mb,6.4gb", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--kfoundry-root", default=str(HERE.parent), help="checkout to serve from (must be pip-installed, see the docstring)")
    parser.add_argument("--kb-root", default=str(HERE.parent / ".bench-kb"), help="KernelBench tree (holds src/kernelbench)")
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--trials", type=int, default=5, help="verify trials")
    parser.add_argument("--timeout-s", type=float, default=None, help="timeout_s passed to compile/verify/profile (server default if unset)")
    parser.add_argument("--sample-period", type=float, default=0.05)
    parser.add_argument("--kb-correct-trials", type=int, default=5)
    parser.add_argument("--kb-perf-trials", type=int, default=100)
    parser.add_argument("--anchor-timeout-s", type=float, default=600)
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--label", default="", help="free text stored in the JSON (e.g. before/after)")
    parser.add_argument("--anchor-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-problem", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-candidate", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-json", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-backend", default="triton", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_child:
        return anchor_child(args)

    import anyio

    root = Path(args.kfoundry_root).resolve()
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {list(SIZES)}")
    out = Path(args.out)
    results: dict[str, Any] = {"label": args.label, "kfoundry_root": str(root), "argv": sys.argv, "python": sys.version.split()[0], "sizes": {}}
    try:
        # Only when ROOT is a checkout's top level: an exported tree (.bench-before) would report the enclosing repo's HEAD.
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10).stdout.strip()
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        results["git_head"] = commit if top and Path(top).resolve() == root else None
    except Exception:  # noqa: BLE001
        results["git_head"] = None

    def save() -> None:
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(out)

    results["gpu"] = _gpu_name()  # not through torch: a CUDA context here would hold GPU memory all run long
    results["imports"] = check_install(root)
    save()

    candidate_path = PROBLEMS / CANDIDATE
    candidate = candidate_path.read_text()
    for size in sizes:
        problem = PROBLEMS / SIZES[size]
        rec: dict[str, Any] = {"problem": problem.name}
        results["sizes"][size] = rec
        try:
            anyio.run(run_kfoundry, root, size, problem.read_text(), candidate, args, rec, save)
        except Exception as exc:  # noqa: BLE001 - keep going to the anchor and the next size
            rec["server_exception"] = _describe(exc)[:2000]
        save()
        if not args.skip_anchor and results.get("gpu"):
            rec["anchor"] = {}
            run_anchor(problem, candidate_path, args, rec["anchor"])
        save()
    print_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
