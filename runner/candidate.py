"""The candidate worker: loads ``ModelNew``, runs ``forward`` on the inputs it is handed, hands outputs over.

This process is hostile. It never sees the problem, its path or its text; it holds no
secret (input seeds, which calls are compared, which are timed); it never times a
baseline. Every call it receives looks the same: flush, timed ``forward``, outputs shared
by reference, facts reported. After each call the trusted parent freezes the process
until the reference worker has read the outputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from pathlib import Path
from typing import Any

import torch

from kfoundry.backends import get_backend

# Bound before any candidate code can patch them: the timer, the flush, the event API.
from kfoundry.profilers.timing import cache_flusher, graphed, run_queued, time_call, track_streams
from kfoundry.runner import exchange
from kfoundry.runner.loading import JobFailed, as_list, copy_matching, failure, import_source
from kfoundry.runner.wire import (
    CandidateJob,
    Channel,
    Forward,
    ForwardBatch,
    Loaded,
    ProfileCall,
    Profiled,
    Returned,
    ReturnedBatch,
    Stage,
    Stop,
    TensorRef,
    Wire,
)
from kfoundry.schema import ErrorDetail, State
from kfoundry.verify import precision as numerics
from kfoundry.verify import runtime_checks as rc
from kfoundry.verify.facts import RuntimeFacts

_clock = time.perf_counter
CANDIDATE_FILE = "candidate.py"
#: earlier outputs kept alive (so a reused buffer shows as an alias) while they fit this budget
_KEEP_OUTPUT_BYTES = 1 << 30
_POISONS = (float("nan"), -3.0e38)
_M_PERTURB = -6


class Candidate:
    def __init__(self, job: CandidateJob, channel: Channel, workdir: Path) -> None:
        self.job = job
        self.channel = channel
        self.workdir = workdir
        self.device = job.device
        self.exchange = Path(job.exchange) if job.exchange else workdir
        self.backend = get_backend(job.backend)
        self.policy = numerics.policy(job.precision)
        self.model: torch.nn.Module | None = None
        self.calls = 0
        self.opened: dict[str, torch.Tensor] = {}
        self.kept: list[Any] = []
        self.flush: Any = None
        self.graphs: dict[tuple[str, ...], Any] = {}

    def stage(self, name: str, detail: str = "") -> None:
        self.channel.send(Stage(stage=name, detail=detail))

    def run(self) -> None:
        numerics.apply_flags(self.policy)
        if self.device.startswith("cuda"):
            track_streams()
        self.backend.prepare_worker()
        self.stage("compiling")
        # Global state before any candidate code runs: compared after every call.
        self.flags_before = rc.numerics_flags()
        self.functions_before = rc.function_identities()
        self.threads_before, self.children_before = rc.threads_and_children()
        start = _clock()
        try:
            module = import_source(self.job.candidate, CANDIDATE_FILE, "candidate", self.workdir)
        except BaseException as exc:  # noqa: BLE001 - any failure of candidate code is a reported outcome
            raise failure(exc, "load candidate", candidate=True) from exc
        cls = getattr(module, "ModelNew", None) or getattr(module, "NewModel", None)
        if not isinstance(cls, type):
            err = ErrorDetail(type="GenerationError", message="the candidate defines no class ModelNew (or NewModel)", stage="load candidate")
            raise JobFailed(State.generation_failure, err)
        seconds = _clock() - start
        if not self.job.build_only:
            self.model = self._build(cls)
        self.channel.send(Loaded(kernels=list(self.backend.built_kernels())[:256], seconds=seconds))
        if self.job.build_only:
            return
        self.flush = cache_flusher(self.device)
        while True:
            message = self.channel.recv()
            if isinstance(message, Forward):
                self.channel.send(self.forward(message))
            elif isinstance(message, ForwardBatch):
                self.channel.send(self.forward_batch(message))
            elif isinstance(message, ProfileCall):
                self.channel.send(self.profile(message))
            elif isinstance(message, Stop):
                # Kernels that compile on first launch (Triton on a GPU) exist only now.
                self.channel.send(Loaded(kernels=list(self.backend.built_kernels())[:256], seconds=seconds))
                return
            else:
                raise JobFailed(State.runtime_error, ErrorDetail(type="ProtocolError", message=f"unexpected {type(message).__name__}"))

    def _build(self, cls: type) -> torch.nn.Module:
        try:
            init = [exchange.open_value(v, self.exchange) for v in self.job.init_args]
            theirs = {p.name: exchange.open_tensor(p.tensor, self.exchange) for p in self.job.parameters}
            torch.manual_seed(self.job.init_seed)
            model = cls(*init)
            copy_matching(theirs, model)
            del theirs
            return model.to(self.device)
        except BaseException as exc:  # noqa: BLE001
            raise failure(exc, "init candidate", candidate=True) from exc

    def _open(self, value: Any) -> Any:
        # The same input slot is mapped once: a call sees the same tensor objects (and addresses)
        # as the last call that used that slot, with new values in them.
        if isinstance(value, TensorRef):
            key = value.model_dump_json()
            tensor = self.opened.get(key)
            if tensor is None:
                tensor = self.opened[key] = exchange.open_tensor(value, self.exchange)
            return tensor
        return exchange.open_value(value, self.exchange)

    def _traced(self) -> bool:
        limit = self.job.trace_calls
        return limit < 0 or self.calls < limit

    def forward(self, message: Forward) -> Returned:
        assert self.model is not None
        model = self.model
        inputs = [self._open(v) for v in message.inputs]
        if self.job.poison:
            size = max(rc.output_bytes(inputs), rc.output_bytes(self.kept), 1 << 16)
            rc.poison(size, _POISONS[self.calls % 2], self.device)
        traced = self._traced()
        trace = rc.OpTrace()
        _perturb(0xA5 if self.calls < self.job.scrub_calls else 0)

        def call(args: Any) -> Any:
            with trace if traced else contextlib.nullcontext():
                return model(*args)

        if self.job.cuda_graph and self.device.startswith("cuda"):
            # The slot's tensors are the graph's static inputs: the reference writes each call's values into them.
            key = tuple(v.model_dump_json() for v in message.inputs)
            try:
                if key not in self.graphs:
                    self.graphs[key] = graphed(call, inputs)
            except BaseException as exc:  # noqa: BLE001
                raise failure(exc, "CUDA-graph capture", candidate=True) from exc
            call = self.graphs[key]
        try:
            with torch.no_grad(), self._profiler_range():
                elapsed, out = time_call(call, inputs, self._call_flush(), self.device)
        except BaseException as exc:  # noqa: BLE001
            raise failure(exc, f"call {self.calls + 1}", candidate=True) from exc
        _perturb(0)
        facts = self._facts(inputs, as_list(out), trace if traced else None)
        outputs = as_list(out)
        shared = [exchange.share(v, self.exchange, f"out-{i}") for i, v in enumerate(outputs)]
        self.calls += 1
        # Graph replays write the captured output buffer again by design.
        self.kept = outputs if rc.output_bytes(outputs) <= _KEEP_OUTPUT_BYTES and not self.graphs else []
        return Returned(call=message.call, outputs=shared, elapsed_ms=float(elapsed), facts=facts)

    def forward_batch(self, message: ForwardBatch) -> ReturnedBatch:
        """A timing turn: the calls queued back to back (see ``run_queued``), each output captured as it was."""
        assert self.model is not None
        model = self.model
        calls = message.calls
        inputs = [[self._open(v) for v in f.inputs] for f in calls]
        if self.job.poison and inputs:
            size = max(rc.output_bytes(inputs[0]), rc.output_bytes(self.kept), 1 << 16)
            rc.poison(size, _POISONS[self.calls % 2], self.device)
        traces = [rc.OpTrace() if self._traced() else None for _ in calls]
        graphs: list[Any] = []
        if self.job.cuda_graph and self.device.startswith("cuda"):
            for f, args in zip(calls, inputs, strict=True):
                key = tuple(v.model_dump_json() for v in f.inputs)
                try:
                    if key not in self.graphs:
                        self.graphs[key] = graphed(lambda a: model(*a), args)
                except BaseException as exc:  # noqa: BLE001
                    raise failure(exc, "CUDA-graph capture", candidate=True) from exc
                graphs.append(self.graphs[key])
        staged: list[list[Any]] = []
        aliases: list[list[str]] = []
        kept = self.kept

        def run(k: int) -> Any:
            if graphs:
                return graphs[k](inputs[k])
            trace = traces[k]
            with trace if trace is not None else contextlib.nullcontext():
                return model(*inputs[k])

        def after(k: int, out: Any) -> None:
            # Host-side only (no waiting for the device): the queue must stay ahead of the device.
            nonlocal kept
            outputs = as_list(out)
            aliases.append(_aliases(outputs, inputs[k], kept))
            staged.append([exchange.stage(v, self.exchange, f"out-{k}-{i}") for i, v in enumerate(outputs)])
            # Kept alive until the next call's check: a reused buffer shows as an alias.
            kept = outputs if rc.output_bytes(outputs) <= _KEEP_OUTPUT_BYTES and not graphs else []

        start = self.calls
        try:
            with torch.no_grad(), self._profiler_range():
                elapsed = run_queued(run, len(calls), self._call_flush(), self.device, after=after)
            shared = [[make() for make in made] for made in staged]
        except BaseException as exc:  # noqa: BLE001 - any failure of candidate code is a reported outcome
            raise failure(exc, f"call {start + len(staged) + 1}", candidate=True) from exc
        self.kept = kept
        self.calls += len(calls)
        common = self._facts([], [], None)
        items = []
        for k, f in enumerate(calls):
            trace = traces[k]
            facts = common.model_copy(update={
                "aliases": aliases[k],
                "compute_ops": trace.compute_ops() if trace is not None else {},
                "traced": trace is not None,
            })
            items.append(Returned(call=f.call, outputs=shared[k], elapsed_ms=float(elapsed[k]), facts=facts))
        return ReturnedBatch(items=items)

    def _profiled(self) -> bool:
        return 0 <= self.job.profiled_from <= self.calls

    def _call_flush(self) -> Any:
        # A profiler outside the process records every kernel in the range: the harness's cache flush would be
        # recorded as library work beside the candidate's (ncu controls caches itself where it needs to).
        return None if self._profiled() else self.flush

    @contextlib.contextmanager
    def _profiler_range(self) -> Any:
        if not self._profiled():
            yield
            return
        torch.cuda.profiler.start()
        try:
            yield
        finally:
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()

    def _facts(self, inputs: list[Any], outputs: list[Any], trace: rc.OpTrace | None) -> RuntimeFacts:
        threads, children = rc.threads_and_children()
        aliases = _aliases(outputs, inputs, self.kept)
        flags = rc.numerics_flags()
        functions = rc.function_identities()
        return RuntimeFacts(
            aliases=aliases,
            new_threads=len(threads - self.threads_before),
            new_children=len(children - self.children_before),
            flags_changed={k: [str(self.flags_before.get(k)), str(v)] for k, v in flags.items() if self.flags_before.get(k) != v},
            patched=sorted(k for k, v in functions.items() if self.functions_before.get(k) != v),
            compute_ops=trace.compute_ops() if trace is not None else {},
            traced=trace is not None,
        )

    def profile(self, message: ProfileCall) -> Profiled:
        from kfoundry.profilers.breakdown import op_breakdown

        assert self.model is not None
        model = self.model
        inputs = [self._open(v) for v in message.inputs]
        # Kernels of the data-movement ops the op trace allows (fills, copies, memsets) are neutral, as are the caller's allowed ops.
        allowed = {f"aten::{op}" for op in (*message.allow_ops, *rc.ALLOWED_OPS)}
        last: list[Any] = []

        def call() -> Any:
            last[:] = [model(*inputs)]
            return last[0]

        try:
            with torch.no_grad(), self.backend.instrument():
                shares = op_breakdown(call, is_own=self.backend.is_own_kernel, device=self.device, allowed=allowed.__contains__)
        except Exception as exc:  # noqa: BLE001 - a failed breakdown leaves the timings valid
            return Profiled(shares=[], warnings=[f"per-kernel breakdown failed: {type(exc).__name__}: {str(exc)[:300]}"])
        if not message.judged:
            return Profiled(shares=shares)
        # The call that says where the time goes must compute the real result too, or a candidate could run a token
        # kernel only while profiled.
        shared = [exchange.share(v, self.exchange, f"out-{i}") for i, v in enumerate(as_list(last[0]))]
        return Profiled(shares=shares, outputs=shared)


def _aliases(outputs: list[Any], inputs: list[Any], earlier_outputs: list[Any]) -> list[str]:
    input_spans = rc.spans(inputs)
    earlier = rc.spans(earlier_outputs)
    found = []
    for i, value in enumerate(outputs):
        if isinstance(value, torch.Tensor):
            if rc.overlaps(value, input_spans):
                found.append(f"output {i} shares memory with an input")
            elif rc.overlaps(value, earlier):
                found.append(f"output {i} shares memory with an output of an earlier call")
    return found


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _perturb(byte: int) -> None:
    """glibc's M_PERTURB: fill host allocations with ``byte`` and freed memory with its complement (0: off)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_PERTURB, byte)


def serve(job: Wire, channel: Channel, workdir: Path) -> None:
    assert isinstance(job, CandidateJob)
    Candidate(job, channel, workdir).run()

