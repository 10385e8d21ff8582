"""One job, driven from the trusted side over the typed wire: a reference worker and a candidate worker.

The parent holds every secret: the seeds of each call's inputs and what each call is
for (verification trial, warm-up or timed). It asks the reference worker for inputs
(made on the device, handed to the candidate by reference), asks the candidate for one
``forward``, freezes the candidate's processes, and asks the reference worker to judge the
outputs in place (and, while timing, to time the baselines on the same inputs). Everything
either worker says is untrusted data; the verdict is made by the caller from these facts.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar

import anyio

from kfoundry import artifacts, sampler
from kfoundry.backends import get_backend
from kfoundry.backends.base import BuildRequest as ToolchainRequest
from kfoundry.backends.base import TrustedBuild
from kfoundry.runner import budget, caches, handover
from kfoundry.runner.process import Worker, WorkerGone
from kfoundry.runner.wire import (
    Analysis,
    Analyze,
    BaselinesReady,
    BaselinesTimed,
    BatchReady,
    BuildReply,
    BuildRequest,
    CandidateJob,
    Collect,
    CollectBatch,
    Collected,
    CollectedBatch,
    Done,
    Failed,
    Forward,
    ForwardBatch,
    InputsReady,
    Judge,
    Loaded,
    MakeBatch,
    MakeInputs,
    PrepareBaselines,
    Prepared,
    ProfileCall,
    Profiled,
    ReferenceJob,
    Returned,
    ReturnedBatch,
    Stage,
    Stop,
    TimeBaselines,
    Wire,
    WireError,
    device_refs,
)
from kfoundry.schema import ErrorDetail, KernelShare, KernelStats, ProblemAnalysis, State
from kfoundry.verify.facts import CallCheck

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str], Awaitable[None]]
M = TypeVar("M", bound=Wire)
V = TypeVar("V")
#: input sets kept on the device at once: rotation keeps a call from finding the last call's inputs in cache
MAX_SLOTS = 3
#: how long a wrapped worker's wrapper (ncu) gets, once the job is done, to write its report and exit
WRAPPER_EXIT_S = 120.0


class Ending(str, Enum):
    done = "done"
    failed = "failed"
    crashed = "crashed"
    timeout = "timeout"
    protocol = "protocol"


class Side(str, Enum):
    reference = "reference"
    candidate = "candidate"


@dataclass
class Call:
    """One forward of the candidate, as both sides and the parent's clock saw it."""

    call: int
    seed: int
    family: str
    returned: Returned
    check: CallCheck
    baseline_ms: dict[str, float]
    #: the parent's clock from sending ``Forward`` (or the batch it was in) to receiving the answer
    wall_ms: float
    #: processes of the candidate's worker besides itself, when it was frozen
    leftover_processes: int = 0
    #: the timing turn it was queued in (-1: a call on its own)
    batch: int = -1


@dataclass
class TimingPlan:
    warmup: int
    #: timed calls per contender; None: planned from ``budget_ms`` and the reference's pilot time
    reps: int | None
    baselines: list[str]
    breakdown: bool = True
    allow_ops: list[str] = field(default_factory=list)
    #: time by CUDA-graph replay (each contender captured once per input slot)
    cuda_graph: bool = False
    #: device time per contender the planned repetition count aims at
    budget_ms: float = 100.0


@dataclass
class Timed:
    """How the timing phase ran: what the plan was made from and what it came to."""

    reps: int
    warmup: int
    #: calls queued back to back per turn
    batch: int
    pilot_ms: float
    budget_ms: float


#: planned repetitions are kept within these bounds (GPU, CPU)
REPS_GPU = (10, 200)
REPS_CPU = (10, 50)
#: calls queued per turn at most
MAX_BATCH = 32
#: about one timed call in this many is judged on every element (at least one per turn); the rest are spot-checked
SPOT_FULL = 8
#: descriptors one turn may carry (the wire's limit is 256)
_TURN_FDS = 200


def planned_reps(pilot_ms: float, budget_ms: float, device: str) -> int:
    """Timed calls per contender: enough of the reference's own time to fill ``budget_ms``, within bounds."""
    low, high = REPS_GPU if device.startswith("cuda") else REPS_CPU
    return int(min(high, max(low, budget_ms // max(pilot_ms, 1e-4))))


def batch_size(reps: int, call_bytes: int, free_bytes: int, tensors_per_call: int) -> int:
    """Calls per turn: as many as memory (70% of what is free) and the descriptor limit allow, at most ``MAX_BATCH``."""
    fit = int(0.7 * free_bytes) // max(call_bytes, 1) if free_bytes > 0 else MAX_BATCH
    return max(1, min(reps, MAX_BATCH, fit, _TURN_FDS // max(tensors_per_call, 1)))


@dataclass
class Plan:
    """What the parent will ask for; the workers only ever see one step at a time."""

    trials: list[tuple[int, str]]
    #: trials judged against the float64 oracle (relaxed policies: all; strict: the first)
    oracle_trials: int = 1
    timing: TimingPlan | None = None
    analyze: bool = False
    #: one unjudged call after loading (compile: kernels that build on first launch)
    first_launch: bool = False
    #: ask for the verdict of the trials before timing: returns True to go on
    proceed: Callable[[list[Call]], Awaitable[bool]] | None = None
    #: called once the device is quiet enough to time (e.g. warm spares finished starting)
    before_timing: Callable[[], Awaitable[None]] | None = None
    #: after the trials, sample where the candidate's processes spend their CPU time on extra calls
    attribute: Attribute | None = None
    #: after correct trials and without timing, one extra call under torch.profiler: where the device time goes
    #: (a GPU verify's own-kernel share; a profile takes its breakdown after the timed calls instead)
    breakdown: bool = False
    #: torch ops whose library kernels the breakdown marks as allowed (``guardrails.allow_torch_ops``)
    allow_ops: list[str] = field(default_factory=list)


@dataclass
class Attribute:
    """Extra unjudged calls, sampled from outside, until ``samples`` counted samples or ``seconds`` of calls."""

    samples: int = 400
    seconds: float = 0.5
    #: at least this many calls, however many samples the first ones gave
    min_calls: int = 2
    interval_s: float = 0.0005
    #: classes of code that count neither way (and so do not count towards ``samples``)
    neutral: tuple[sampler.Where, ...] = (sampler.Where.openmp, sampler.Where.libc)


@dataclass
class Report:
    """What one job produced; facts only."""

    ending: Ending = Ending.done
    side: Side | None = None
    state: State | None = None
    error: ErrorDetail | None = None
    diagnostics: list[str] = field(default_factory=list)
    kernels: list[KernelStats] = field(default_factory=list)
    builds: list[TrustedBuild] = field(default_factory=list)
    trials: list[Call] = field(default_factory=list)
    warmups: list[Call] = field(default_factory=list)
    timed: list[Call] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    breakdown: list[KernelShare] = field(default_factory=list)
    #: the reference's judgement of the breakdown call's output
    breakdown_check: CallCheck | None = None
    baseline_breakdown: list[KernelShare] = field(default_factory=list)
    analysis: ProblemAnalysis | None = None
    stdout_bytes: int = 0
    timing: Timed | None = None
    #: where the candidate's CPU time went on the sampled calls (``Plan.attribute``)
    attribution: sampler.Attribution | None = None
    #: why no attribution was made although it was asked for
    attribution_missing: str = ""
    #: sampled calls, and the parent's wall time for the whole step (helper start included)
    attribution_calls: int = 0
    attribution_s: float = 0.0


class Ended(Exception):
    """A worker ended the job early (failure, crash, protocol breach); the report says how."""


class Session:
    """Drives one job over a reference and a candidate worker (either may be absent)."""

    def __init__(self, *, backend: str, device: str, precision: str, problem: str | None, candidate: str | None,
                 reference_worker: Worker | None, candidate_worker: Worker | None, progress: ProgressFn | None = None,
                 atol: float | None = None, rtol: float | None = None, poison: bool = True, trace_calls: int = -1, scrub_calls: int = 0,
                 profiled_from: int = -1, cuda_graph: bool = False) -> None:
        self.backend = backend
        self.device = device
        self.precision = precision
        self.problem = problem
        self.candidate = candidate
        self.ref = reference_worker
        self.cand = candidate_worker
        self.progress = progress
        self.atol, self.rtol = atol, rtol
        self.poison = poison
        self.trace_calls = trace_calls
        self.scrub_calls = scrub_calls
        self.profiled_from = profiled_from
        self.cuda_graph = cuda_graph
        self.report = Report()
        self.init_seed = secrets.randbits(31)
        self.waiting: Side = Side.reference
        self.stage = "start"
        self.prepared: Prepared | None = None
        self.calls = 0
        self.slots = 1
        #: the reference's output bytes per call, once a call was judged (the candidate's replies are capped from it)
        self.output_bytes = 0

    # -- the conversation -----------------------------------------------------------------
    async def _say(self, side: Side, message: Wire) -> None:
        worker = self.ref if side is Side.reference else self.cand
        assert worker is not None
        # Device tensors the message names were exported by the other worker: its descriptors go along.
        other = self.cand if side is Side.reference else self.ref
        fds = other.handles_for(message) if other is not None and device_refs(message) else None
        self.waiting = side
        try:
            await worker.send(message, fds)
        except (WorkerGone, WireError):
            self.waiting = side  # both workers may be in conversation at once: blame the one that failed
            raise

    async def _expect(self, side: Side, kind: type[M]) -> M:
        """The next message of ``kind`` from ``side``, serving stages and build requests on the way."""
        worker = self.ref if side is Side.reference else self.cand
        assert worker is not None
        self.waiting = side
        while True:
            try:
                message = await worker.recv()
            except (WorkerGone, WireError):
                self.waiting = side  # both workers may be in conversation at once: blame the one that failed
                raise
            if isinstance(message, kind):
                return message
            if isinstance(message, Stage):
                self.stage = (message.detail or message.stage)[:100]
                if self.progress is not None:
                    await self.progress(self.stage)
            elif isinstance(message, BuildRequest) and side is Side.candidate:
                await worker.send(await self._build(message))
            elif isinstance(message, Failed):
                self.report.ending, self.report.side = Ending.failed, side
                self.report.state, self.report.error = message.state, message.error
                self.report.diagnostics = [d[:2000] for d in message.diagnostics][:100]
                raise Ended
            else:
                self.waiting = side
                raise WireError(f"the {side.value} worker sent {type(message).__name__} where {kind.__name__} was due")

    async def _build(self, request: BuildRequest) -> BuildReply:
        """A toolchain run the candidate's worker asked for, done here (it never runs a compiler itself)."""
        if self.progress is not None:
            await self.progress(f"building ({request.op})")
        candidate = self.candidate or ""
        message = {"op": request.op, **request.request}
        outcome = await anyio.to_thread.run_sync(lambda: get_backend(self.backend).build(ToolchainRequest(message=message, candidate=candidate)))
        self.report.builds.append(outcome)
        assert self.cand is not None
        return BuildReply(outcome=_delivered(outcome, self.cand.exchange / "built").model_dump(mode="json"))

    # -- running --------------------------------------------------------------------------
    async def run(self, plan: Plan, timeout_s: float) -> Report:
        store = caches.store_for(artifacts.current_owner())
        workers = [w for w in (self.ref, self.cand) if w is not None]
        for worker in workers:
            await anyio.to_thread.run_sync(caches.lend, store, worker.caches)
        try:
            return await self._run_lent(plan, timeout_s)
        finally:
            with anyio.CancelScope(shield=True):
                for worker in workers:
                    if worker.wrapper and self.report.ending is Ending.done:
                        # A wrapper (ncu) writes its report only once the worker it wraps has exited, which the
                        # worker does after its Done; killed before that, the report is lost.
                        await worker.exited(WRAPPER_EXIT_S)
                    # Dead first: a live worker could swap a folder for a link while its files are read.
                    await worker.kill()
                    await anyio.to_thread.run_sync(caches.keep, worker.caches, store)

    async def _run_lent(self, plan: Plan, timeout_s: float) -> Report:
        try:
            with anyio.fail_after(timeout_s):
                await self._unwrapped(plan)
        except TimeoutError:
            self.report.ending, self.report.side = Ending.timeout, self.waiting
            self.report.error = ErrorDetail(type="Timeout", message=f"the job did not finish within {timeout_s:g} s and was killed", stage=self.stage)
            await self._kill_all()
        except WorkerGone:
            side = self.waiting
            worker = self.ref if side is Side.reference else self.cand
            assert worker is not None
            status = await worker.exit_status(wait_s=2.0)
            await worker.kill()
            self.report.ending, self.report.side = Ending.crashed, side
            self.report.error = ErrorDetail(
                type="ProcessDied", message=f"the {side.value} worker process died ({status}) during {self.stage}",
                stage=self.stage, stderr_tail=worker.log_tail("stderr", 2000),
            )
            await self._kill_all()
        except WireError as exc:
            self.report.ending, self.report.side = Ending.protocol, self.waiting
            self.report.error = ErrorDetail(type="ProtocolError", message=f"the {self.waiting.value} worker broke the protocol: {exc}", stage=self.stage)
            await self._kill_all()
        except Ended:
            await self._kill_all()
        finally:
            if self.cand is not None:
                self.report.stdout_bytes = self.cand.log_size("stdout")
        return self.report

    async def _unwrapped(self, plan: Plan) -> None:
        """``_run``, with an error from a task of its task group raised as itself rather than in a group."""
        try:
            await self._run(plan)
        except BaseExceptionGroup as group:
            leaves = [e for e in _leaves(group) if not isinstance(e, anyio.get_cancelled_exc_class())]
            if leaves:
                raise leaves[0] from None
            raise

    async def _kill_all(self) -> None:
        for worker in (self.cand, self.ref):
            if worker is not None:
                await worker.kill()

    async def _run(self, plan: Plan) -> None:
        if self.ref is not None:
            assert self.problem is not None
            await self._say(Side.reference, ReferenceJob(
                problem=self.problem, device=self.ref.local_device, precision=self.precision, init_seed=self.init_seed,
                exchange=str(self.ref.exchange), atol=self.atol, rtol=self.rtol, slots=MAX_SLOTS,
            ))
            self.prepared = await self._expect(Side.reference, Prepared)
        first: InputsReady | None = None
        if self.cand is not None:
            # The reference makes the first inputs (and its analysis) while the candidate builds.
            async with anyio.create_task_group() as tg:
                if self.ref is not None and (plan.trials or plan.analyze or plan.first_launch):
                    async def reference_side() -> None:
                        nonlocal first
                        if plan.analyze:
                            await self._analyze()
                        if plan.trials or plan.first_launch:
                            seed, family = plan.trials[0] if plan.trials and not plan.first_launch else (self.init_seed, "standard")
                            first = await self._make(0, seed, family)

                    tg.start_soon(reference_side)
                await self._load(build_only=self.ref is None)
        elif plan.analyze:
            await self._analyze()
        if self.cand is not None and self.ref is not None and plan.first_launch:
            await self.first_launch(first)
            first = None
        if self.cand is not None and self.ref is not None:
            window = await self._launch_sampler(plan.attribute) if plan.attribute is not None else None
            try:
                await self._trials(plan, first)
                # A wrong result is verdict enough: no time is spent measuring where it came from.
                correct = all(c.check.state is State.correct for c in self.report.trials)
                proceed = plan.timing is not None and (plan.proceed is None or await plan.proceed(self.report.trials))
                if proceed and plan.timing is not None:
                    await self._time(plan, plan.timing)
                elif plan.breakdown and correct:
                    await self._candidate_breakdown(plan.allow_ops)
                # After the judged calls, so their positions are the same with and without sampling.
                if plan.attribute is not None and window is not None and correct:
                    await self._attribute(plan.attribute, window)
            finally:
                if window is not None:
                    window.abandon()
        await self._stop()

    def _to_candidate(self, values: list[V]) -> list[V]:
        """The reference's shared values as the candidate's sandbox reaches them."""
        assert self.ref is not None and self.cand is not None
        self.waiting = Side.reference
        return [_handed(v, self.ref.exchange, self.cand.exchange) for v in values]

    def _to_reference(self, values: list[V]) -> list[V]:
        assert self.ref is not None and self.cand is not None
        self.waiting = Side.candidate
        return [_handed(v, self.cand.exchange, self.ref.exchange) for v in values]

    async def _analyze(self) -> None:
        await self._say(Side.reference, Analyze())
        self.report.analysis = (await self._expect(Side.reference, Analysis)).analysis

    async def _load(self, build_only: bool) -> None:
        assert self.cand is not None and self.candidate is not None
        prepared = self.prepared
        await self._say(Side.candidate, CandidateJob(
            backend=self.backend, candidate=self.candidate, device=self.cand.local_device, precision=self.precision,
            init_seed=self.init_seed, init_args=self._to_candidate(prepared.init_args) if prepared else [],
            parameters=[p.model_copy(update={"tensor": self._to_candidate([p.tensor])[0]}) for p in prepared.parameters] if prepared else [],
            exchange=str(self.cand.exchange), poison=self.poison,
            trace_calls=self.trace_calls, scrub_calls=self.scrub_calls, build_only=build_only, profiled_from=self.profiled_from, cuda_graph=self.cuda_graph,
        ))
        loaded = await self._expect(Side.candidate, Loaded)
        self.report.kernels = loaded.kernels[:256]

    async def _make(self, call: int, seed: int, family: str) -> InputsReady:
        await self._say(Side.reference, MakeInputs(call=call, seed=seed, family=family, slot=call % self.slots))
        return await self._expect(Side.reference, InputsReady)

    async def _call(self, ready: InputsReady, seed: int, family: str, judge: Judge,
                    following: tuple[int, str] | None) -> tuple[Call, InputsReady | None]:
        """One forward of the candidate, judged by the reference while the candidate is frozen."""
        assert self.cand is not None
        self.stage = f"call {ready.call + 1}"
        start = anyio.current_time()
        await self._say(Side.candidate, Forward(call=ready.call, inputs=self._to_candidate(ready.inputs)))
        returned = await self._expect(Side.candidate, Returned)
        wall_ms = (anyio.current_time() - start) * 1e3
        if returned.call != ready.call:
            raise WireError(f"the candidate answered call {returned.call} for call {ready.call}")
        await self.cand.freeze()
        try:
            leftover = self.cand.other_processes()
            next_call = self.calls + 1
            after = MakeInputs(call=next_call, seed=following[0], family=following[1], slot=next_call % self.slots) if following else None
            self.stage = f"judging call {ready.call + 1}"
            await self._say(Side.reference, Collect(call=ready.call, outputs=self._to_reference(returned.outputs), judge=judge, next=after))
            collected = await self._expect(Side.reference, Collected)
        finally:
            self.cand.thaw()
        self.calls += 1
        self.output_bytes = max(self.output_bytes, collected.output_bytes)
        self._within_budget(ready, returned)
        record = Call(ready.call, seed, family, returned, collected.check, {}, wall_ms, leftover)
        return record, collected.next

    def _within_budget(self, ready: InputsReady, returned: Returned) -> None:
        """End the job, rejected, when the candidate's reply or its exchange folder outgrows what the problem moves."""
        assert self.cand is not None
        inputs = budget.value_bytes(ready.inputs)
        parameters = budget.value_bytes(p.tensor for p in self.prepared.parameters) if self.prepared else 0
        # Checked once the reference has judged the call, so its own outputs set the cap (an outer product
        # returns far more than it takes).
        caps = budget.job_budget(input_bytes=inputs, output_bytes=self.output_bytes, parameter_bytes=parameters, slots=self.slots)
        reason = budget.check_reply(returned.outputs, caps) or budget.check_exchange(
            budget.directory_usage(self.cand.exchange, caps.exchange_entries), caps)
        if reason is not None:
            self.report.ending, self.report.side, self.report.state = Ending.failed, Side.candidate, State.rejected
            self.report.error = ErrorDetail(type="OverBudget", message=f"the candidate was stopped: {reason}", stage=self.stage)
            raise Ended

    async def _trials(self, plan: Plan, ready: InputsReady | None) -> None:
        for index, (seed, family) in enumerate(plan.trials):
            if ready is None:
                ready = await self._make(self.calls, seed, family)
            following = plan.trials[index + 1] if index + 1 < len(plan.trials) else None
            if self.progress is not None:
                await self.progress(f"trial {index + 1}/{len(plan.trials)}" + ("" if family == "standard" else f" ({family} inputs)"))
            judge = Judge(oracle=index < plan.oracle_trials, trial=True)
            record, ready = await self._call(ready, seed, family, judge, following)
            self.report.trials.append(record)

    async def _launch_sampler(self, how: Attribute) -> sampler.IsolatedSampler | None:
        """The helper that samples the candidate's processes, loading while the trials run; None where it cannot."""
        assert self.cand is not None
        refused = await anyio.to_thread.run_sync(sampler.host_refusal)
        if refused:
            self.report.attribution_missing = f"this host does not let the trusted side sample processes: {refused}"
            return None
        window = sampler.IsolatedSampler(self.cand.inner, own=[self.cand.exchange / "built"], interval_s=how.interval_s)
        await anyio.to_thread.run_sync(window.launch)
        return window

    async def _attribute(self, how: Attribute, window: sampler.IsolatedSampler) -> None:
        """Sample the candidate's process tree from the helper while it runs ``forward`` on extra calls.

        The calls are ``ProfileCall``s: ``forward`` back to back (one untimed, three under the op profiler),
        without the cache flush and the poisoning every judged call pays for, so the harness adds little
        beside the candidate's own time. Only the trusted side's build outputs count as the candidate's own
        code: its sandbox can write neither them nor the folder they are delivered to.
        """
        assert self.cand is not None and self.ref is not None
        started = anyio.current_time()
        try:
            await anyio.to_thread.run_sync(window.open)
        except RuntimeError as exc:
            self.report.attribution_missing = str(exc)[:500]
            return
        calls = 0
        try:
            self.stage = "attribution"
            if self.progress is not None:
                await self.progress("sampling where forward spends its CPU time")
            opened = anyio.current_time()
            counted = 0
            while calls < how.min_calls or (counted < how.samples and anyio.current_time() - opened < how.seconds):
                extra = await self._make(self.calls, secrets.randbits(31), "standard")
                await self._say(Side.candidate, ProfileCall(inputs=self._to_candidate(extra.inputs)))
                await self._expect(Side.candidate, Profiled)
                calls += 1
                await anyio.to_thread.run_sync(window.wait, 1 << 62, 0.0)
                counted = sum(n for where, n in window.by_class().items() if where not in how.neutral)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    self.report.attribution = await anyio.to_thread.run_sync(window.stop)
                except RuntimeError as exc:
                    self.report.attribution_missing = str(exc)[:500]
        self.report.attribution_calls = calls
        self.report.attribution_s = anyio.current_time() - started

    async def _time(self, plan: Plan, timing: TimingPlan) -> None:
        """Turns of queued calls: fresh inputs for every call made ahead, the reference's baselines and the
        candidate alternating which goes first, every output judged while the candidate is frozen."""
        assert self.ref is not None and self.cand is not None
        await self._say(Side.reference, PrepareBaselines(baselines=timing.baselines, warmup=timing.warmup, cuda_graph=timing.cuda_graph))
        ready_baselines = await self._expect(Side.reference, BaselinesReady)
        self.report.baselines = ready_baselines.names
        self.report.warnings += ready_baselines.warnings
        reps = timing.reps or planned_reps(ready_baselines.pilot_ms, timing.budget_ms, self.device)
        batch = batch_size(reps, ready_baselines.call_bytes, ready_baselines.free_bytes, ready_baselines.tensors_per_call)
        self.report.timing = Timed(reps=reps, warmup=timing.warmup, batch=batch, pilot_ms=ready_baselines.pilot_ms, budget_ms=timing.budget_ms)
        if plan.before_timing is not None:
            await plan.before_timing()
        if self.progress is not None:
            await self.progress(f"timing: {reps} calls of the candidate in turns of {batch}, alternating with "
                                f"{', '.join(ready_baselines.names) or 'no baselines'}")
        self.slots = max(MAX_SLOTS, batch)
        turns = ([timing.warmup] if timing.warmup > 0 else []) + [min(batch, reps - done) for done in range(0, reps, batch)]
        for turn, size in enumerate(turns):
            warm = timing.warmup > 0 and turn == 0
            records = await self._turn(turn, size)
            (self.report.warmups if warm else self.report.timed).extend(records)
        if timing.breakdown:
            await self._candidate_breakdown(timing.allow_ops)
            await self._say(Side.reference, ProfileCall())
            baseline = await self._expect(Side.reference, Profiled)
            self.report.baseline_breakdown, self.report.warnings = baseline.shares[:64], self.report.warnings + baseline.warnings

    async def _candidate_breakdown(self, allow_ops: list[str]) -> None:
        """One extra call of the candidate on fresh inputs under torch.profiler: its per-kernel shares, and its output judged."""
        self.stage = "per-kernel breakdown (an extra call)"
        if self.progress is not None:
            await self.progress("per-kernel breakdown")
        assert self.cand is not None
        extra = await self._make(self.calls, secrets.randbits(31), "standard")
        await self._say(Side.candidate, ProfileCall(inputs=self._to_candidate(extra.inputs), allow_ops=allow_ops, judged=True))
        profiled = await self._expect(Side.candidate, Profiled)
        self.report.breakdown, self.report.warnings = profiled.shares[:64], self.report.warnings + profiled.warnings
        if not profiled.shares:
            return  # nothing measured, nothing to judge: the verdict fails closed on the missing breakdown
        # Judged like a timed call (the candidate frozen meanwhile): profiling is visible to the candidate, so the
        # shares count only if this call also computed the real result.
        self.stage = "judging the per-kernel breakdown call"
        await self.cand.freeze()
        try:
            await self._say(Side.reference, Collect(call=extra.call, outputs=self._to_reference(profiled.outputs), judge=Judge()))
            collected = await self._expect(Side.reference, Collected)
        finally:
            self.cand.thaw()
        self.calls += 1
        self.output_bytes = max(self.output_bytes, collected.output_bytes)
        self._within_budget(extra, Returned(call=extra.call, outputs=profiled.outputs, elapsed_ms=0.0))
        self.report.breakdown_check = collected.check

    async def _turn(self, turn: int, size: int) -> list[Call]:
        """One turn of ``size`` calls: inputs made ahead (from seeds only this process knows), both sides timed, all judged."""
        assert self.ref is not None and self.cand is not None
        seeds = [secrets.randbits(31) for _ in range(size)]
        first = self.calls
        items = [MakeInputs(call=first + k, seed=seed, family="standard", slot=k) for k, seed in enumerate(seeds)]
        await self._say(Side.reference, MakeBatch(items=items))
        made = (await self._expect(Side.reference, BatchReady)).items
        if [m.call for m in made] != [m.call for m in items]:
            raise WireError("the reference made inputs for other calls than asked")
        calls = [m.call for m in made]
        baselines_first = turn % 2 == 0
        baseline_ms: dict[str, list[float]] = {}
        self.stage = f"timing turn {turn + 1}"
        if baselines_first:
            baseline_ms = await self._baselines_frozen(calls, turn)
        start = anyio.current_time()
        await self._say(Side.candidate, ForwardBatch(calls=[Forward(call=m.call, inputs=self._to_candidate(m.inputs)) for m in made]))
        returned = (await self._expect(Side.candidate, ReturnedBatch)).items
        wall_ms = (anyio.current_time() - start) * 1e3
        if [r.call for r in returned] != calls:
            raise WireError("the candidate answered other calls than it was given")
        await self.cand.freeze()
        try:
            leftover = self.cand.other_processes()
            if not baselines_first:
                baseline_ms = await self._baselines(calls, turn)
            self.stage = f"judging timing turn {turn + 1}"
            # Every timed output is spot-checked at positions secret to the job; one call in SPOT_FULL, drawn in secret, is judged whole.
            full = {secrets.randbelow(len(returned))} | {k for k in range(len(returned)) if secrets.randbelow(SPOT_FULL) == 0}
            collects = [Collect(call=r.call, outputs=self._to_reference(r.outputs), judge=Judge(spot=k not in full)) for k, r in enumerate(returned)]
            await self._say(Side.reference, CollectBatch(items=collects))
            collected = (await self._expect(Side.reference, CollectedBatch)).items
        finally:
            self.cand.thaw()
        if [c.call for c in collected] != calls:
            raise WireError("the reference judged other calls than it was given")
        self.calls += size
        records = []
        for k, (ready, ret, col) in enumerate(zip(made, returned, collected, strict=True)):
            self.output_bytes = max(self.output_bytes, col.output_bytes)
            self._within_budget(ready, ret)
            ms = {name: values[k] for name, values in baseline_ms.items() if k < len(values)}
            records.append(Call(ready.call, seeds[k], "standard", ret, col.check, ms, wall_ms, leftover, batch=turn))
        return records

    async def _baselines(self, calls: list[int], turn: int) -> dict[str, list[float]]:
        await self._say(Side.reference, TimeBaselines(calls=calls, turn=turn))
        timed = await self._expect(Side.reference, BaselinesTimed)
        return {name: [float(v) for v in values[: len(calls)]] for name, values in timed.ms.items() if name in self.report.baselines}

    async def _baselines_frozen(self, calls: list[int], turn: int) -> dict[str, list[float]]:
        """The reference's turn with the candidate frozen: nothing of the candidate's runs beside the baselines."""
        assert self.cand is not None
        await self.cand.freeze()
        try:
            return await self._baselines(calls, turn)
        finally:
            self.cand.thaw()

    async def first_launch(self, ready: InputsReady | None) -> None:
        """One call on real inputs, unjudged: kernels that build on first launch (Triton on a GPU) build now."""
        if ready is None:
            ready = await self._make(0, self.init_seed, "standard")
        await self._say(Side.candidate, Forward(call=ready.call, inputs=self._to_candidate(ready.inputs)))
        await self._expect(Side.candidate, Returned)
        self.calls += 1

    async def _stop(self) -> None:
        if self.cand is not None:
            if self.ref is not None:  # a build-only candidate ends by itself after reporting what it built
                await self._say(Side.candidate, Stop())
            if not await self._done_or_loaded(Side.candidate):
                await self._expect(Side.candidate, Done)
        if self.ref is not None:
            await self._say(Side.reference, Stop())
            await self._expect(Side.reference, Done)

    async def _done_or_loaded(self, side: Side) -> bool:
        """After Stop the candidate reports its kernels (now built) before Done; True when Done came straight away."""
        worker = self.cand
        assert worker is not None
        while True:
            message = await worker.recv()
            if isinstance(message, Done):
                return True
            if isinstance(message, Loaded):
                self.report.kernels = message.kernels[:256] or self.report.kernels
                return False
            if isinstance(message, Stage):
                continue
            if isinstance(message, Failed):
                self.report.ending, self.report.side = Ending.failed, side
                self.report.state, self.report.error = message.state, message.error
                raise Ended
            raise WireError(f"the candidate worker sent {type(message).__name__} after stop")



def _delivered(outcome: TrustedBuild, into: Path) -> TrustedBuild:
    """``outcome`` with its built files copied into the worker's sandbox.

    Copies, not links: the cache is shared by every job and must never be writable from one. ``into``
    belongs to the trusted side (the worker can read it, not change it), so nothing on the way is a
    link the worker planted.
    """
    moved: dict[str, str] = {}
    for name in outcome.artefact_fields:
        path = Path(getattr(outcome, name, "") or "")
        if not outcome.ok or not path.is_file():
            continue
        folder = into / (outcome.key or "build")
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        copy = folder / path.name
        shutil.copyfile(path, copy)
        os.chmod(copy, 0o755)
        moved[name] = str(copy)
    return outcome.model_copy(update=moved) if moved else outcome


def _handed(value: V, source: Path, target: Path) -> V:
    try:
        return handover.hand_over(value, source, target)  # type: ignore[return-value]
    except handover.ExchangeError as exc:
        raise WireError(str(exc)) from exc


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
