"""What a worker does with its one job (runs inside the sandboxed process).

Roles: ``reference`` (problem code only: expected outputs, problem analysis),
``candidate`` (candidate outputs, then timing on request), ``compile`` (import and
build only). The harness reports facts; the trusted server decides verdicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kfoundry.backends import get_backend
from kfoundry.schema import ErrorDetail, State
from kfoundry.verify import precision as numerics
from kfoundry.verify import runtime_checks as rc
from kfoundry.verify.expected import Expected
from kfoundry.verify.stress import STANDARD, stressed

# Imported here, before any candidate code runs, so the timers it binds are the real ones.
from kfoundry.verify.timed import profile_job
from kfoundry.runner.wire import Channel, encode_tensors

_clock = time.perf_counter  # bound before any candidate code can patch ``time``
CANDIDATE_FILE = "candidate.py"
REFERENCE_FILE = "reference.py"
_COMPILE_ERRORS = ("CompilationError", "BuildError", "CompileTimeAssertionFailure", "UnsupportedLanguageConstruct")


class JobFailed(Exception):
    """Ends the job with a state; raised by the harness, never by candidate code."""

    def __init__(self, state: State, error: ErrorDetail, diagnostics: list[str] | None = None) -> None:
        super().__init__(error.message)
        self.state = state
        self.error = error
        self.diagnostics = diagnostics or []


def _tail(exc: BaseException, limit: int = 12) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines).rstrip().splitlines()
    return "\n".join(text[-limit:])


def error_detail(exc: BaseException, stage: str) -> ErrorDetail:
    return ErrorDetail(type=type(exc).__name__, message=str(exc)[:4000], traceback_tail=_tail(exc), stage=stage)


def _is_compile_error(exc: BaseException) -> bool:
    if type(exc).__name__ in _COMPILE_ERRORS or isinstance(exc, (SyntaxError, ImportError)):
        return True
    return isinstance(exc, RuntimeError) and "Error building extension" in str(exc)


def _diagnostics(exc: BaseException) -> list[str]:
    if isinstance(exc, SyntaxError):
        return [f"{Path(exc.filename or CANDIDATE_FILE).name}:{exc.lineno}: error: {exc.msg}"]
    return [str(d) for d in getattr(exc, "diagnostics", [])]


def import_source(source: str, filename: str, module_name: str, workdir: Path) -> ModuleType:
    """Import source from a real file: Triton's @jit reads the function source back through inspect."""
    path = workdir / filename
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _as_list(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def _to_device(values: list[Any], device: str) -> list[Any]:
    return [v.to(device) if isinstance(v, torch.Tensor) else v for v in values]


def digest(values: list[Any]) -> str:
    h = hashlib.sha256()
    for v in values:
        if isinstance(v, torch.Tensor):
            flat = v.detach().to("cpu").contiguous().reshape(-1)
            h.update(str((v.dtype, tuple(v.shape))).encode())
            if flat.numel():
                h.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Harness:
    def __init__(self, job: dict[str, Any], channel: Channel, workdir: Path) -> None:
        self.job = job
        self.channel = channel
        self.workdir = workdir
        self.device: str = job.get("device", "cpu")
        self.backend = get_backend(job["backend"]) if job.get("backend") else None
        self.policy = numerics.policy(job.get("precision"))
        self.expected = Expected(self)

    def stage(self, name: str, detail: str = "") -> None:
        self.channel.send({"op": "stage", "stage": name, "detail": detail})

    # -- loading -----------------------------------------------------------------
    def load_problem(self) -> ModuleType:
        try:
            problem = import_source(self.job["problem"], REFERENCE_FILE, "reference", self.workdir)
        except BaseException as exc:  # noqa: BLE001 - any failure of user code is a reported outcome
            raise JobFailed(State.runtime_error, error_detail(exc, "load reference")) from exc
        missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if not hasattr(problem, n)]
        if missing:
            err = ErrorDetail(type="ProblemError", message=f"reference defines no {', '.join(missing)}", stage="load reference")
            raise JobFailed(State.runtime_error, err)
        return problem

    def load_candidate(self) -> type:
        if self.device.startswith("cuda"):
            from kfoundry.profilers.timing import track_streams

            track_streams()
        if self.backend is not None:
            self.backend.prepare_worker()
        self.stage("compiling")
        # Global state before any candidate code runs: compared after every forward.
        self.flags_before = rc.numerics_flags()
        self.functions_before = rc.function_identities()
        self.threads_before, self.children_before = rc.threads_and_children()
        start = _clock()
        try:
            module = import_source(self.job["candidate"], CANDIDATE_FILE, "candidate", self.workdir)
        except BaseException as exc:  # noqa: BLE001
            state = State.compilation_failure if _is_compile_error(exc) else State.runtime_error
            raise JobFailed(state, error_detail(exc, "load candidate"), _diagnostics(exc)) from exc
        cls = getattr(module, "ModelNew", None) or getattr(module, "NewModel", None)
        if not isinstance(cls, type):
            err = ErrorDetail(type="GenerationError", message="the candidate defines no class ModelNew (or NewModel)", stage="load candidate")
            raise JobFailed(State.generation_failure, err)
        self.load_seconds = _clock() - start
        return cls

    def report_loaded(self) -> None:
        kernels = [k.model_dump() for k in self.backend.built_kernels()] if self.backend else []
        self.channel.send({"op": "loaded", "kernels": kernels, "seconds": self.load_seconds})

    def build_models(self, problem: ModuleType, cls: type | None) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        seed = int(self.job["init_seed"])
        stage = "init reference"
        try:
            torch.manual_seed(seed)
            init = list(problem.get_init_inputs())
            torch.manual_seed(seed)
            reference = problem.Model(*init)
            candidate = None
            if cls is not None:
                stage = "init candidate"
                torch.manual_seed(seed)
                candidate = cls(*init)
                _copy_matching(reference, candidate)
                candidate = candidate.to(self.device)
            reference = reference.to(self.device)
        except BaseException as exc:  # noqa: BLE001
            state = State.compilation_failure if _is_compile_error(exc) else State.runtime_error
            raise JobFailed(state, error_detail(exc, stage), _diagnostics(exc)) from exc
        return reference, candidate

    def make_inputs(self, problem: ModuleType, seed: int, family: str = STANDARD) -> list[Any]:
        torch.manual_seed(seed)
        try:
            values = list(problem.get_inputs())
        except BaseException as exc:  # noqa: BLE001
            raise JobFailed(State.runtime_error, error_detail(exc, "get_inputs")) from exc
        return stressed(_to_device(values, self.device), family, seed)

    # -- running -----------------------------------------------------------------
    def run_trials(self, problem: ModuleType, model: torch.nn.Module, own: bool) -> None:
        standard = [(int(s), STANDARD) for s in self.job["seeds"]]
        plan = standard + [(int(s), str(f)) for s, f in self.job.get("stress", [])]
        probe = own and bool(self.job.get("probe")) and len(standard) > 1
        kept: list[tuple[list[Any], list[Any]]] = []  # earlier trials' inputs and outputs, kept alive: fresh addresses
        for index, (seed, family) in enumerate(plan):
            self.stage("running", f"trial {index + 1}/{len(plan)}" + ("" if family == STANDARD else f" ({family} inputs)"))
            inputs = self.make_inputs(problem, seed, family)
            if probe and index == len(standard) - 1 and kept:
                inputs = _reuse_addresses(kept[-1][0], inputs)  # same data_ptr/id, new values: defeats address-keyed caches
            before = digest(inputs)
            checks: dict[str, Any] = {}
            try:
                if own:
                    out, checks = self._checked_forward(model, inputs, kept)
                else:
                    with torch.no_grad():
                        out = model(*inputs)
                    _sync(self.device)
            except BaseException as exc:  # noqa: BLE001
                stage = f"trial {index + 1}"
                state = State.compilation_failure if own and _is_compile_error(exc) else State.runtime_error
                raise JobFailed(state, error_detail(exc, stage), _diagnostics(exc)) from exc
            after = digest(inputs)
            outputs = _as_list(out)
            entries, blob = encode_tensors(outputs)
            header = {"op": "trial", "index": index, "family": family, "input_digest": before, "input_digest_after": after, "outputs": entries}
            if own:
                header["checks"] = checks
            self.channel.send(header, blob)
            if not own and (self.policy.relaxed or index == 0):
                self.expected.send_oracles(f"trial:{index}", model, inputs)
            kept.append((inputs, outputs))
            del kept[:-8]

    def _checked_forward(self, model: torch.nn.Module, inputs: list[Any], kept: list[tuple[list[Any], list[Any]]]) -> tuple[Any, dict[str, Any]]:
        """Run the candidate twice under different allocator poisons, and gather the runtime facts."""
        checks: dict[str, Any] = {}
        # Checks whose rules are off are not run at all (their cost is the user's to skip).
        off = set(self.job.get("checks_off", []))
        size = max(rc.output_bytes(kept[-1][1]) if kept else 0, rc.output_bytes(inputs), 1 << 16)
        if "stale_memory" not in off:
            rc.poison(size, float("nan"), self.device)
        trace = rc.OpTrace()
        with torch.no_grad():
            with trace if "torch_compute" not in off else contextlib.nullcontext():
                out = model(*inputs)
            _sync(self.device)
        threads, children = rc.threads_and_children()  # right away: a helper thread may finish soon after
        states = [(rc.numerics_flags(), rc.function_identities())]
        outputs = _as_list(out)
        input_spans = rc.spans(inputs)
        earlier = [s for _, outs in kept for s in rc.spans(outs)]
        aliases = []
        for i, value in enumerate(outputs):
            if isinstance(value, torch.Tensor):
                if rc.overlaps(value, input_spans):
                    aliases.append(f"output {i} shares memory with an input")
                elif rc.overlaps(value, earlier):
                    aliases.append(f"output {i} shares memory with an output of an earlier trial")
        checks["aliases"] = aliases
        checks["compute_ops"] = trace.compute_ops()
        # Second run under another poison: results that depend on stale memory differ.
        first = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in outputs]
        if not aliases and "stale_memory" not in off:
            rc.poison(size, -3.0e38, self.device)
            try:
                with torch.no_grad():
                    again = _as_list(model(*inputs))
                _sync(self.device)
                states.append((rc.numerics_flags(), rc.function_identities()))
                checks["poison_differs"] = rc.same_outputs(first, again)
                del again
            except Exception as exc:  # noqa: BLE001 - a second call failing is itself a fact
                checks["poison_differs"] = f"the second call raised {type(exc).__name__}: {str(exc)[:200]}"
        threads2, children2 = rc.threads_and_children()
        threads, children = threads | threads2, children | children2
        checks["new_threads"] = len(threads - self.threads_before)
        checks["new_children"] = len(children - self.children_before)
        changed: dict[str, list[str]] = {}
        patched: set[str] = set()
        for flags, functions in states:
            changed.update({k: [str(self.flags_before.get(k)), str(v)] for k, v in flags.items() if self.flags_before.get(k) != v})
            patched.update(k for k, v in functions.items() if self.functions_before.get(k) != v)
        checks["flags_changed"] = changed
        checks["patched"] = sorted(patched)
        return out, checks

    def run(self) -> None:
        role = self.job["role"]
        # The candidate computes under its policy's flags; the reference's own outputs are strict
        # (its honest run at the policy's precision switches the flags for that run only).
        numerics.apply_flags(self.policy if role in ("candidate", "compile", "counters") else numerics.STRICT)
        if role == "compile":
            cls = self.load_candidate()
            if self.job.get("problem"):
                # Kernels that compile on first launch (Triton on a GPU) need one real call.
                problem = self.load_problem()
                _, candidate = self.build_models(problem, cls)
                assert candidate is not None
                self.launch_once(problem, candidate)
            self.report_loaded()
            return
        if role == "counters":
            self.collect_counters()
            return
        problem = self.load_problem()
        if role == "analyze":
            self.send_analysis(problem)
            return
        cls = self.load_candidate() if role == "candidate" else None
        if cls is not None:
            self.report_loaded()
        reference, candidate = self.build_models(problem, cls)
        model = candidate if candidate is not None else reference
        self.run_trials(problem, model, own=candidate is not None)
        if cls is not None:
            self.report_loaded()  # kernels that compile on first launch (Triton on a GPU) exist only now
        self.channel.send({"op": "trials_done"})
        if role == "reference":
            self.expected.send_rechecks(problem, reference)
            if self.job.get("analyze"):
                self.send_analysis(problem, reference)
            return
        reply, _ = self.channel.recv()
        if reply.get("op") == "profile":
            assert candidate is not None
            profile_job(self, problem, reference, candidate, reply)

    def launch_once(self, problem: ModuleType, model: torch.nn.Module) -> None:
        self.stage("running", "first launch")
        inputs = self.make_inputs(problem, int(self.job["init_seed"]))
        try:
            with torch.no_grad():
                model(*inputs)
            _sync(self.device)
        except BaseException as exc:  # noqa: BLE001
            state = State.compilation_failure if _is_compile_error(exc) else State.runtime_error
            raise JobFailed(state, error_detail(exc, "first launch"), _diagnostics(exc)) from exc

    def collect_counters(self) -> None:
        """One forward inside cudaProfilerStart/Stop, so a wrapping ncu sees only the candidate's call."""
        problem = self.load_problem()
        cls = self.load_candidate()
        _, candidate = self.build_models(problem, cls)
        assert candidate is not None
        for _ in range(2):  # JIT and autotuning happen outside the profiled range
            self.launch_once(problem, candidate)
        inputs = self.make_inputs(problem, int(self.job["init_seed"]))
        self.stage("profiling", "hardware counters")
        with torch.no_grad():
            torch.cuda.profiler.start()
            try:
                candidate(*inputs)
                _sync(self.device)
            finally:
                torch.cuda.profiler.stop()

    def send_analysis(self, problem: ModuleType, reference: torch.nn.Module | None = None) -> None:
        from kfoundry.profilers.roofline import analyze_problem

        self.stage("analyzing")
        try:
            if reference is None:
                reference, _ = self.build_models(problem, None)
            inputs = self.make_inputs(problem, int(self.job["init_seed"]))
            analysis = analyze_problem(reference, inputs)
        except JobFailed:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise JobFailed(State.runtime_error, error_detail(exc, "analysis")) from exc
        self.channel.send({"op": "analysis", "analysis": analysis.model_dump()})


def _reuse_addresses(previous: list[Any], fresh: list[Any]) -> list[Any]:
    """``fresh``'s values written into ``previous``'s tensors where shapes and dtypes agree."""
    out: list[Any] = []
    for old, new in zip(previous, fresh, strict=False):
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.shape == new.shape and old.dtype == new.dtype and old.device == new.device:
            old.copy_(new)
            out.append(old)
        else:
            out.append(new)
    return out + fresh[len(out):]


def _copy_matching(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """KernelBench's convention: parameters and buffers with the same name and shape are copied."""
    theirs = source.state_dict()
    mine = target.state_dict()
    shared = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape and mine[k].dtype == v.dtype}
    if shared:
        target.load_state_dict(shared, strict=False)


def run_job(job: dict[str, Any], channel: Channel, workdir: Path) -> None:
    harness = Harness(job, channel, workdir)
    try:
        harness.run()
    except JobFailed as failed:
        channel.send({"op": "failed", "state": failed.state.value, "error": failed.error.model_dump(), "diagnostics": failed.diagnostics})
        return
    channel.send({"op": "done"})
