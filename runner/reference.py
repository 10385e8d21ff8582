"""The reference worker: runs trusted problem code only, never the candidate's.

It imports the problem, builds ``Model``, makes every input set on the device from the
seeds the parent sends (the candidate gets copies, by reference), runs the reference, the
float64 oracle and the eager / torch.compile baselines (timed here, interleaved with the
candidate's calls), and judges each candidate call on the device while the candidate is
frozen. Only summaries go back to the parent.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kfoundry.profilers.timing import cache_flusher, graphed, run_queued
from kfoundry.runner import exchange
from kfoundry.runner.loading import JobFailed, as_list, error_detail, failure, import_text, sync
from kfoundry.runner.wire import (
    Analysis,
    Analyze,
    BaselinesReady,
    BaselinesTimed,
    BatchReady,
    Channel,
    Collect,
    CollectBatch,
    Collected,
    CollectedBatch,
    InputsReady,
    MakeBatch,
    MakeInputs,
    NamedRef,
    PlainValue,
    PrepareBaselines,
    Prepared,
    ProfileCall,
    Profiled,
    ReferenceJob,
    Stage,
    Stop,
    TensorRef,
    TimeBaselines,
    Value,
    Wire,
)
from kfoundry.schema import ErrorDetail, Finding, State
from kfoundry.verify import precision as numerics
from kfoundry.verify.compare import Oracle, all_finite, fingerprint, is_constant, judge
from kfoundry.verify.facts import CallCheck
from kfoundry.verify.stress import STANDARD, stressed

_clock = time.perf_counter
REFERENCE_FILE = "reference.py"
#: under the strict policy the float64 oracle only reports errors; above this output size it is skipped
_ORACLE_MAX_BYTES = 1 << 30
#: queued calls of the eager reference that plan the repetition count
_PILOT_CALLS = 5
#: outputs up to this many elements are hashed whole by the late-write probe
_PROBE_WORDS = 1 << 22


def _nbytes(values: list[Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def _label(baseline: str, p: numerics.Policy, declared: numerics.Policy) -> str:
    """``eager``/``compile`` under the declared policy; ``eager_strict``/``compile_strict`` beside a relaxed one."""
    return baseline if p == declared else f"{baseline}_{p.name}"


def _under(policy: numerics.Policy, fn: Any, device: str) -> Any:
    """``fn`` run with ``policy``'s flags, and under autocast to its type when it rounds."""
    dtype = policy.round_dtype()

    def call(args: Any) -> Any:
        with numerics.numerics(policy):
            if dtype is None:
                return fn(*args)
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype):
                return fn(*args)

    return call


def _free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # no /proc: free memory reads as unknown (0), which batch sizing treats as no memory limit
    return 0


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def _finite(values: list[Any]) -> bool:
    return all(not isinstance(v, torch.Tensor) or all_finite(v) for v in values)


class Reference:
    def __init__(self, job: ReferenceJob, channel: Channel, workdir: Path) -> None:
        self.job = job
        self.channel = channel
        self.workdir = workdir
        self.device = job.device
        self.exchange = Path(job.exchange) if job.exchange else workdir
        self.policy = numerics.policy(job.precision)
        self.problem: ModuleType | None = None
        self.model: torch.nn.Module | None = None
        self.shared_parameters: list[torch.Tensor] = []
        #: slot -> the shared tensors (or None for a non-tensor input) and their references
        self.slots: dict[int, list[tuple[torch.Tensor | None, Value]]] = {}
        #: call -> (the reference's own copy of the inputs, slot, family)
        self.pending: dict[int, tuple[list[Any], int, str]] = {}
        self.contenders: dict[str, Any] = {}
        #: CUDA-graph mode: the static inputs every captured contender reads (each call's values are copied in)
        self.static_inputs: list[Any] | None = None
        self.expected_from = ""
        #: call -> the expected outputs its baseline turn produced (the strict eager baseline's)
        self.expected: dict[int, list[Any]] = {}
        #: the candidate's device outputs mapped here, by name: (reference as received, tensor)
        self.outputs: dict[str, tuple[str, torch.Tensor]] = {}
        self.flush: Any = None
        self._oracle: torch.nn.Module | None = None
        self._honest: torch.nn.Module | None = None
        self.oracle_error = ""
        #: random positions the late-write probe hashes, and timed calls' spot checks compare, in large outputs
        self._probe_at: torch.Tensor | None = None

    def stage(self, name: str, detail: str = "") -> None:
        self.channel.send(Stage(stage=name, detail=detail))

    # -- loading --------------------------------------------------------------------------
    def run(self) -> None:
        # The reference's own outputs are strict; baselines and honest runs switch flags per call.
        numerics.apply_flags(numerics.STRICT)
        self.problem = self._load()
        self.model = self._build(self.problem)
        self.channel.send(self._prepared())
        handlers = {
            MakeInputs: lambda m: self.inputs_ready(m),
            MakeBatch: lambda m: BatchReady(items=[self.inputs_ready(item) for item in m.items]),
            Collect: lambda m: self.collect(m),
            CollectBatch: lambda m: self.collect_batch(m),
            TimeBaselines: lambda m: self.time_baselines(m),
            PrepareBaselines: lambda m: self.prepare_baselines(m),
            ProfileCall: lambda m: self.profile(m),
            Analyze: lambda m: self.analyze(),
        }
        while True:
            message = self.channel.recv()
            if isinstance(message, Stop):
                return
            handler = handlers.get(type(message))
            if handler is None:
                raise JobFailed(State.runtime_error, ErrorDetail(type="ProtocolError", message=f"unexpected {type(message).__name__}"))
            try:
                reply = handler(message)
            except torch.OutOfMemoryError as exc:
                raise JobFailed(State.runtime_error, self._out_of_memory(exc, type(message).__name__)) from exc
            self.channel.send(reply)

    def _load(self) -> ModuleType:
        self.stage("loading the reference")
        try:
            problem = import_text(self.job.problem, REFERENCE_FILE, "reference")
        except BaseException as exc:  # noqa: BLE001 - any failure of problem code is a reported outcome
            raise failure(exc, "load reference", candidate=False) from exc
        missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if not hasattr(problem, n)]
        if missing:
            err = ErrorDetail(type="ProblemError", message=f"reference defines no {', '.join(missing)}", stage="load reference")
            raise JobFailed(State.runtime_error, err)
        return problem

    def _build(self, problem: ModuleType) -> torch.nn.Module:
        seed = self.job.init_seed
        try:
            torch.manual_seed(seed)
            self.init_args = list(problem.get_init_inputs())
            torch.manual_seed(seed)
            return problem.Model(*self.init_args).to(self.device).eval()
        except BaseException as exc:  # noqa: BLE001
            raise failure(exc, "init reference", candidate=False) from exc

    def _prepared(self) -> Prepared:
        assert self.model is not None
        init = [exchange.share(v, self.exchange, f"init-{i}") for i, v in enumerate(self.init_args)]
        bad = [v.type_name for v in init if isinstance(v, PlainValue) and v.repr]
        if bad:
            err = ErrorDetail(type="ProblemError", message=f"get_init_inputs() returns values that cannot be handed to the candidate: {', '.join(bad)}",
                              stage="init reference")
            raise JobFailed(State.runtime_error, err)
        parameters = []
        for n, (name, tensor) in enumerate(self.model.state_dict().items()):
            # Copies: the candidate may write into what it maps; the reference's own weights stay private.
            twin = tensor.detach().clone()
            self.shared_parameters.append(twin)
            ref = exchange.share(twin, self.exchange, f"param-{n}")
            assert isinstance(ref, TensorRef)
            parameters.append(NamedRef(name=name, tensor=ref))
        return Prepared(init_args=init, parameters=parameters)

    # -- inputs ---------------------------------------------------------------------------
    def make_inputs(self, seed: int, family: str) -> list[Any]:
        """``get_inputs()`` under ``seed``, created on the device (a ``torch.rand`` there never touches the host)."""
        assert self.problem is not None
        torch.manual_seed(seed)
        try:
            with torch.device(self.device):
                values = list(self.problem.get_inputs())
        except torch.OutOfMemoryError as exc:
            raise JobFailed(State.runtime_error, self._out_of_memory(exc, "get_inputs")) from exc
        except BaseException as exc:  # noqa: BLE001
            raise JobFailed(State.runtime_error, error_detail(exc, "get_inputs")) from exc
        values = [v.to(self.device) if isinstance(v, torch.Tensor) else v for v in values]
        return stressed(values, family, seed)

    def _input_bytes(self) -> int:
        """What one input set takes, from ``get_inputs()`` on the meta device (nothing is allocated)."""
        assert self.problem is not None
        try:
            with torch.device("meta"):
                return _nbytes(list(self.problem.get_inputs()))
        except Exception:  # noqa: BLE001 - a get_inputs that needs real data is measured when it runs
            return 0

    def _check_fits(self) -> None:
        """Before the first input set: will the reference's copy and the candidate's fit on this GPU at all?"""
        if not self.device.startswith("cuda") or self.pending or self.slots:
            return
        free, total = torch.cuda.mem_get_info()
        needed = 2 * self._input_bytes()  # the reference's own inputs and the copy handed to the candidate
        if needed > free:
            message = (f"the problem needs at least {needed} bytes of device memory for its inputs alone (its own set and the "
                       f"candidate's copy), but only {free} of {total} bytes are free on this GPU")
            raise JobFailed(State.runtime_error, ErrorDetail(type="DeviceMemoryError", message=message, stage="get_inputs"))

    def _out_of_memory(self, exc: BaseException, stage: str) -> ErrorDetail:
        free, total = torch.cuda.mem_get_info() if self.device.startswith("cuda") else (0, 0)
        inputs = self._input_bytes()
        return ErrorDetail(
            type="DeviceMemoryError", stage=stage,
            message=(f"out of device memory ({str(exc).splitlines()[0][:300]}); one input set is {inputs} bytes, and judging a call "
                     f"holds the reference's inputs and outputs, the candidate's copy and its outputs; {free} of {total} bytes free now"),
        )

    def inputs_ready(self, message: MakeInputs) -> InputsReady:
        self._check_fits()
        own = self.make_inputs(message.seed, message.family)
        refs = self._fill_slot(message.slot, own)
        self.pending[message.call] = (own, message.slot, message.family)
        return InputsReady(call=message.call, inputs=refs)

    def _fill_slot(self, slot: int, values: list[Any]) -> list[Value]:
        held = self.slots.get(slot)
        fits = held is not None and len(held) == len(values) and all(
            (t is None and not isinstance(v, torch.Tensor)) or (t is not None and isinstance(v, torch.Tensor) and t.shape == v.shape and t.dtype == v.dtype)
            for (t, _), v in zip(held, values, strict=True)
        )
        if not fits:
            held = []
            for i, v in enumerate(values):
                if isinstance(v, torch.Tensor):
                    held.append(exchange.shared_empty(list(v.shape), v.dtype, self.device, self.exchange, f"in-{slot}-{i}"))
                else:
                    held.append((None, exchange.plain(v)))
            self.slots[slot] = held
        refs: list[Value] = []
        assert held is not None
        for (tensor, ref), v in zip(held, values, strict=True):
            if tensor is not None:
                tensor.copy_(v)
                refs.append(ref)
            else:
                refs.append(exchange.plain(v))
        sync(self.device)
        return refs

    # -- judging a call -------------------------------------------------------------------
    def collect(self, message: Collect) -> Collected:
        assert self.model is not None
        if message.call not in self.pending:
            raise JobFailed(State.runtime_error, ErrorDetail(type="ProtocolError", message=f"no inputs were made for call {message.call}"))
        own, slot, family = self.pending.pop(message.call)
        try:
            got = [self._output(v) for v in message.outputs]
        except exchange.ExchangeError as exc:
            check = CallCheck(call=message.call, family=family, state=State.rejected,
                              findings=[Finding(code="output_type", message=f"the candidate's outputs could not be read: {exc}")])
            return Collected(call=message.call, check=check, next=self._next(message))
        before = [self._probe(t) for t, _, _ in got]
        # Before the reference runs: a problem whose own forward writes its inputs must not look like the candidate's doing.
        spot = self._spot if message.judge.spot else (lambda t: t)
        mutated = any(t is not None and isinstance(v, torch.Tensor) and not _same_bytes(spot(t), spot(v))
                      for (t, _), v in zip(self.slots.get(slot, []), own, strict=False))
        expected = self.expected.pop(message.call, None)
        if expected is None:
            try:
                with torch.no_grad():
                    expected = as_list(self.model(*own))
            except Exception as exc:  # noqa: BLE001 - a stress family the problem cannot take is dropped, not failed
                if family == "standard":
                    raise
                check = CallCheck(call=message.call, family=family, state=State.correct, reference_error=f"{type(exc).__name__}: {str(exc)[:300]}")
                return Collected(call=message.call, check=check, next=self._next(message))
            sync(self.device)
        output_bytes = _nbytes(expected)
        alike = len(got) == len(expected) and all(
            (t is None) == (not isinstance(e, torch.Tensor)) and (t is None or (t.shape == e.shape and t.dtype == e.dtype))
            for (t, _, _), e in zip(got, expected, strict=False))
        if message.judge.spot and alike:
            # Same shapes and dtypes: the comparison at the secret positions stands for the whole (a wrong shape is judged whole).
            got = [(spot(t) if t is not None else None, plain, kind) for t, plain, kind in got]
            expected = [spot(e) if isinstance(e, torch.Tensor) else e for e in expected]
        check = self._judge(message, got, expected, own, family)
        check.input_mutated = mutated
        after = [self._probe(t) for t, _, _ in got]
        check.late_write = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
        if message.judge.trial:
            check.fingerprints = before
            check.expected_fingerprints = [fingerprint(e) if isinstance(e, torch.Tensor) else repr(e)[:80] for e in expected]
        del got, expected, own
        return Collected(call=message.call, check=check, output_bytes=output_bytes, next=self._next(message))

    def collect_batch(self, message: CollectBatch) -> CollectedBatch:
        items = [self.collect(item) for item in message.items]
        # Nothing of the judging may still run on the device when the candidate's next turn is timed:
        # two processes' work on one GPU time-slices, and the candidate would be billed for it.
        sync(self.device)
        return CollectedBatch(items=items)

    def _next(self, message: Collect) -> InputsReady | None:
        return self.inputs_ready(message.next) if message.next is not None else None

    def _mapped(self, ref: TensorRef) -> torch.Tensor:
        """The candidate's output mapped here; device memory stays mapped across calls while the candidate reuses it.

        Unmapping device memory costs tens of milliseconds, and the candidate hands back the same
        buffers call after call. A cached mapping shows what the candidate's buffer holds now,
        which is what the verdict is about.
        """
        if ref.storage != "cuda":
            return exchange.open_tensor(ref, self.exchange)
        key = ref.model_dump_json()
        name = str((ref.cuda or {}).get("name"))
        held = self.outputs.get(name)
        if held is None or held[0] != key:
            self.outputs[name] = (key, exchange.open_tensor(ref, self.exchange))
        return self.outputs[name][1]

    def _output(self, value: Value) -> tuple[torch.Tensor | None, bool, str]:
        if isinstance(value, PlainValue):
            return None, False, value.type_name or "object"
        tensor = self._mapped(value)
        if tensor.device.type != torch.device(self.device).type:
            tensor = tensor.to(self.device)
        return tensor, value.plain, value.type_name

    def _spot(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` at this job's secret positions when it is large (flattened, same dtype); small tensors whole."""
        flat = tensor.detach().reshape(-1)
        if flat.numel() <= _PROBE_WORDS:
            return tensor
        if self._probe_at is None or self._probe_at.device != flat.device:
            self._probe_at = torch.randint(0, 1 << 62, (_PROBE_WORDS,), device=flat.device)
        return flat[self._probe_at % flat.numel()]

    def _probe(self, tensor: torch.Tensor | None) -> str:
        """A fingerprint of the output, taken before and after judging it: a write that lands meanwhile shows.

        Above ``_PROBE_WORDS`` words only positions drawn at random for this job are hashed (the
        candidate cannot know which): hashing all of a multi-GB output twice per call would cost
        more than the call.
        """
        return "" if tensor is None else fingerprint(self._spot(tensor))

    def _judge(self, message: Collect, got: list[tuple[torch.Tensor | None, bool, str]], expected: list[Any],
               own: list[Any], family: str) -> CallCheck:
        oracle = Oracle(policy=self.policy, fine=family == STANDARD)
        if message.judge.oracle:
            self._oracle_runs(own, expected, oracle)
        verdict = judge([[e if isinstance(e, torch.Tensor) else None for e in expected]], [got], self.job.atol, self.job.rtol, oracle)
        check = CallCheck(
            call=message.call, family=family, state=verdict.state, mismatch=verdict.mismatch, findings=verdict.findings,
            precision_checks=verdict.checks, reference_nonfinite=not _finite(expected),
            oracle_error=self.oracle_error if message.judge.oracle else "",
            output_dtype=str(expected[0].dtype).removeprefix("torch.") if expected and isinstance(expected[0], torch.Tensor) else None,
        )
        if message.judge.trial:
            for i, ((g, _, _), e) in enumerate(zip(got, expected, strict=False)):
                if isinstance(e, torch.Tensor) and g is not None and g.shape == e.shape and is_constant(g) and not is_constant(e):
                    check.constant_output = i
                    break
        return check

    def _oracle_runs(self, own: list[Any], expected: list[Any], oracle: Oracle) -> None:
        """The float64 oracle's outputs for ``own`` and, under a relaxed policy, an honest run at that precision."""
        assert self.model is not None
        if self.oracle_error:
            return
        if not self.policy.relaxed and _nbytes(expected) > _ORACLE_MAX_BYTES:
            self.oracle_error = f"skipped: the outputs are over {_ORACLE_MAX_BYTES >> 30} GiB (strict judges by the tolerances)"
            return
        needed = self._oracle_bytes(own, expected)
        free = _free_bytes(self.device)
        if self.device.startswith("cuda") and needed > 0.8 * free:
            self.oracle_error = (f"skipped: the float64 oracle needs about {needed} bytes of device memory (its own weights, inputs and "
                                 f"outputs), {free} are free")
            return
        try:
            if self._oracle is None:
                self._oracle = numerics.oracle_model(self.model)
            with torch.no_grad():
                oracle.oracle[0] = as_list(self._oracle(*numerics.oracle_inputs(own)))
                if self.policy.relaxed:
                    if self._honest is None:
                        self._honest = numerics.rounded_model(self.model, self.policy)
                    with numerics.numerics(self.policy):
                        oracle.honest[0] = as_list(self._honest(*numerics.rounded_inputs(own, self.policy)))
            sync(self.device)
        except Exception as exc:  # noqa: BLE001 - ops without float64 kernels leave the oracle out, reported
            self.oracle_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            oracle.oracle.clear()
            oracle.honest.clear()

    def _oracle_bytes(self, own: list[Any], expected: list[Any]) -> int:
        """Float64 copies of the weights (once), of the inputs and of the outputs, held at once by an oracle run."""
        assert self.model is not None

        def wide(values: Any) -> int:
            return sum(t.numel() * 8 for t in values if isinstance(t, torch.Tensor) and t.is_floating_point())

        weights = 0 if self._oracle is not None else wide(self.model.state_dict().values())
        return weights + wide(own) + 2 * wide(expected)

    # -- baselines ------------------------------------------------------------------------
    def prepare_baselines(self, message: PrepareBaselines) -> BaselinesReady:
        assert self.model is not None
        model = self.model
        policies = [self.policy] + ([numerics.STRICT] if self.policy.relaxed else [])
        warnings: list[str] = []
        self.contenders = {}
        if "eager" in message.baselines:
            for p in policies:
                self.contenders[_label("eager", p, self.policy)] = _under(p, model, self.device)
            self.expected_from = _label("eager", numerics.STRICT, self.policy)
        if "compile" in message.baselines:
            self.stage("timing", "compiling the torch.compile baseline")
            try:
                compiled = torch.compile(model)
                for p in policies:
                    self.contenders[_label("compile", p, self.policy)] = _under(p, compiled, self.device)
            except Exception as exc:  # noqa: BLE001 - a missing inductor toolchain only drops this baseline
                warnings.append(f"torch.compile baseline unavailable: {type(exc).__name__}: {str(exc)[:300]}")
        warm = self.make_inputs(self.job.init_seed, "standard")
        for name in list(self.contenders):
            try:
                with torch.no_grad():
                    for _ in range(max(1, message.warmup)):
                        self.contenders[name](warm)
                sync(self.device)
            except Exception as exc:  # noqa: BLE001
                del self.contenders[name]
                warnings.append(f"{name} baseline failed to run: {type(exc).__name__}: {str(exc)[:300]}")
        if message.cuda_graph and self.device.startswith("cuda") and self.contenders:
            self.stage("timing", "capturing CUDA graphs")
            try:
                self.contenders = {name: graphed(fn, warm) for name, fn in self.contenders.items()}
                self.static_inputs = warm
                warnings.append("CUDA-graph replay: each contender replays one captured call on static input buffers (L2 is still flushed before every call).")
            except Exception as exc:  # noqa: BLE001 - capture fails for host syncs or dynamic shapes; time eagerly instead
                warnings.append(f"CUDA-graph capture of the baselines failed, they are timed without graphs: {type(exc).__name__}: {str(exc)[:300]}")
        self.flush = cache_flusher(self.device)
        pilot_ms, output_bytes, tensors = self._pilot(warm)
        return BaselinesReady(
            names=list(self.contenders), warnings=warnings, pilot_ms=pilot_ms, free_bytes=_free_bytes(self.device),
            call_bytes=2 * _nbytes(warm) + 3 * output_bytes, tensors_per_call=tensors,
        )

    def _pilot(self, warm: list[Any]) -> tuple[float, int, int]:
        """The reference's own time per call (eager under the policy, queued and flushed as every timed call is).

        The repetition count is planned from this, never from the candidate's first calls.
        """
        assert self.model is not None
        call = _under(self.policy, self.model, self.device)
        outputs: list[Any] = []

        def keep(k: int, out: Any) -> None:
            if not outputs:
                outputs.extend(as_list(out))

        with torch.no_grad():
            call(warm)
            samples = run_queued(lambda k: call(warm), _PILOT_CALLS, self.flush, self.device, after=keep)
        tensors = sum(isinstance(v, torch.Tensor) for v in [*warm, *outputs])
        return sorted(samples)[len(samples) // 2], _nbytes(outputs), tensors

    def time_baselines(self, message: TimeBaselines) -> BaselinesTimed:
        """Every baseline over the inputs of ``message.calls``, queued; the strict eager outputs become the expected ones."""
        names = list(self.contenders)
        owns = [self.pending[c][0] for c in message.calls if c in self.pending]
        if len(owns) != len(message.calls):
            raise JobFailed(State.runtime_error, ErrorDetail(type="ProtocolError", message="baselines asked for calls without inputs"))
        static = self.static_inputs
        ms: dict[str, list[float]] = {}
        for k in range(len(names)):
            name = names[(message.turn + k) % len(names)]
            fn = self.contenders[name]
            kept: list[list[Any]] = []

            def before(i: int) -> None:
                if static is not None:
                    for dst, src in zip(static, owns[i], strict=False):
                        if isinstance(dst, torch.Tensor) and isinstance(src, torch.Tensor):
                            dst.copy_(src)

            def after(i: int, out: Any, keep: bool = name == self.expected_from) -> None:
                if keep:
                    # Graph replays write one captured buffer: each call's values are copied out (queued).
                    kept.append([v.clone() if isinstance(v, torch.Tensor) and static is not None else v for v in as_list(out)])

            with torch.no_grad():
                ms[name] = run_queued(lambda i, fn=fn: fn(static if static is not None else owns[i]), len(owns), self.flush, self.device,
                                      before=before, after=after)
            for call, out in zip(message.calls, kept, strict=False):
                self.expected[call] = out
        return BaselinesTimed(ms=ms)

    # -- profiling and analysis -----------------------------------------------------------
    def profile(self, message: ProfileCall) -> Profiled:
        """Per-kernel breakdown of the eager baseline, under the policy its timing ran under."""
        from kfoundry.profilers.breakdown import op_breakdown

        assert self.model is not None
        call = _under(self.policy, self.model, self.device)
        inputs = self.make_inputs(self.job.init_seed, "standard")
        try:
            with torch.no_grad():
                shares = op_breakdown(lambda: call(inputs), is_own=lambda name: False, device=self.device)
        except Exception as exc:  # noqa: BLE001
            return Profiled(shares=[], warnings=[f"baseline breakdown failed: {type(exc).__name__}: {str(exc)[:300]}"])
        return Profiled(shares=shares)

    def analyze(self) -> Analysis:
        from kfoundry.profilers.roofline import analyze_problem

        assert self.model is not None
        self.stage("analyzing")
        try:
            analysis = analyze_problem(self.model, self.make_inputs(self.job.init_seed, "standard"))
        except JobFailed:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise JobFailed(State.runtime_error, error_detail(exc, "analysis")) from exc
        return Analysis(analysis=analysis)


def serve(job: Wire, channel: Channel, workdir: Path) -> None:
    assert isinstance(job, ReferenceJob)
    Reference(job, channel, workdir).run()
