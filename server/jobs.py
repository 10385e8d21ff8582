"""Driving one worker through one job, from the trusted side.

Everything a worker says is treated as untrusted data: it can report outputs, build
requests and failures, but the verdict is made by the caller from those facts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
import torch

from kfoundry.backends.cuda import CudaBuildOutcome, build_cuda_request
from kfoundry.backends.gxx import BuildOutcome, FlagError, build
from kfoundry.schema import Diagnostic, ErrorDetail, KernelStats, ProblemAnalysis, State
from kfoundry.runner.process import Worker, WorkerGone
from kfoundry.runner.wire import WireError, decode_tensor

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str], Awaitable[None]]


class Ending(str, Enum):
    done = "done"
    failed = "failed"
    crashed = "crashed"
    timeout = "timeout"
    protocol = "protocol"


@dataclass
class Output:
    """One value the worker returned: a tensor, or a description of a non-tensor."""

    tensor: torch.Tensor | None
    plain: bool
    type_name: str


@dataclass
class Trial:
    index: int
    input_digest: str
    input_digest_after: str
    outputs: list[Output]
    family: str = "standard"


@dataclass
class TimedOutput:
    """A sampled timed call of the candidate: which call, the seed of its inputs, what it returned."""

    rep: int
    seed: int
    outputs: list[Output]


@dataclass
class Report:
    """What one worker job produced; facts only."""

    ending: Ending = Ending.done
    state: State | None = None
    error: ErrorDetail | None = None
    diagnostics: list[str] = field(default_factory=list)
    kernels: list[KernelStats] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    analysis: ProblemAnalysis | None = None
    timing: dict[str, Any] | None = None
    builds: list[BuildOutcome | CudaBuildOutcome] = field(default_factory=list)
    #: server clock (anyio.current_time) when timing was requested and when its results arrived
    profile_sent_at: float | None = None
    timing_received_at: float | None = None
    stdout_bytes: int = 0
    #: the reference's extra outputs by (key, kind): key 'trial:<i>' or 'seed:<s>', kind 'oracle', 'honest' or 'reference'
    expected: dict[tuple[str, str], list[Output]] = field(default_factory=dict)
    oracle_error: str = ""
    timed_outputs: list[TimedOutput] = field(default_factory=list)


def _decode_outputs(entries: list[dict[str, Any]], blob: bytes) -> list[Output]:
    outputs: list[Output] = []
    for entry in entries:
        if entry.get("kind") == "tensor":
            outputs.append(Output(decode_tensor(entry, blob), bool(entry.get("plain", False)), str(entry.get("type", "Tensor"))[:100]))
        else:
            outputs.append(Output(None, False, str(entry.get("type", "object"))[:100]))
    return outputs


class Conversation:
    """Runs ``job`` on ``worker`` until it ends; never raises for the candidate's misbehaviour."""

    def __init__(
        self,
        worker: Worker,
        job: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
        after_trials: Callable[[Report], Awaitable[dict[str, Any] | None]] | None = None,
        on_trial: Callable[[Trial], None] | None = None,
    ) -> None:
        self.worker = worker
        self.job = job
        self.progress = progress
        self.after_trials = after_trials
        self.on_trial = on_trial
        self.report = Report()

    async def run(self, timeout_s: float) -> Report:
        # The worker sees only its own GPU (as cuda:0), whichever the scheduler picked.
        self.job = {**self.job, "device": self.worker.local_device}
        try:
            with anyio.fail_after(timeout_s):
                await self.worker.send(self.job)
                await self._loop()
        except TimeoutError:
            await self.worker.kill()
            self.report.ending = Ending.timeout
            self.report.error = ErrorDetail(
                type="Timeout", message=f"the job did not finish within {timeout_s:g} s and was killed", stage=self._stage
            )
        except WorkerGone:
            await self.worker.kill()
            status = await self.worker.exit_status()
            self.report.ending = Ending.crashed
            self.report.error = ErrorDetail(
                type="ProcessDied",
                message=f"the worker process died ({status}) during {self._stage or 'start-up'}",
                stage=self._stage,
                stderr_tail=self.worker.log_tail("stderr", 2000),
            )
        except (WireError, ValueError, KeyError, TypeError) as exc:
            await self.worker.kill()
            self.report.ending = Ending.protocol
            self.report.error = ErrorDetail(type="ProtocolError", message=f"the worker broke the protocol: {exc}", stage=self._stage)
        self.report.stdout_bytes = self.worker.log_size("stdout")
        return self.report

    _stage = "start"

    async def _loop(self) -> None:
        while True:
            header, blob = await self.worker.recv()
            op = header.get("op")
            if op == "stage":
                self._stage = str(header.get("detail") or header.get("stage"))[:100]
                if self.progress is not None:
                    await self.progress(self._stage)
            elif op == "build_cpp":
                outcome = await self._build(header)
                self.report.builds.append(outcome)
                await self.worker.send(outcome.model_dump())
            elif op == "build_cuda":
                await self._build_cuda(header)
            elif op == "loaded":
                self.report.kernels = [KernelStats.model_validate(k) for k in header.get("kernels", [])][:256]
            elif op == "trial":
                trial = Trial(
                    index=int(header["index"]),
                    input_digest=str(header["input_digest"]),
                    input_digest_after=str(header["input_digest_after"]),
                    outputs=_decode_outputs(list(header["outputs"]), blob),
                    family=str(header.get("family", "standard"))[:20],
                )
                self.report.trials.append(trial)
                if self.on_trial is not None:
                    self.on_trial(trial)
            elif op == "trials_done":
                if self.after_trials is not None:
                    request = await self.after_trials(self.report)
                    await self.worker.send(request or {"op": "stop"})
                    if request is None:
                        return
            elif op == "expected":
                if len(self.report.expected) < 4096:
                    key = (str(header["key"])[:40], str(header["kind"])[:20])
                    self.report.expected[key] = _decode_outputs(list(header["outputs"]), blob)
            elif op == "oracle_failed":
                self.report.oracle_error = str(header.get("message", ""))[:400]
            elif op == "timed_output":
                if len(self.report.timed_outputs) < 64:
                    outputs = _decode_outputs(list(header["outputs"]), blob)
                    self.report.timed_outputs.append(TimedOutput(int(header["rep"]), int(header["seed"]), outputs))
            elif op == "analysis":
                self.report.analysis = ProblemAnalysis.model_validate(header["analysis"])
            elif op == "timing":
                self.report.timing_received_at = anyio.current_time()
                self.report.timing = header
            elif op == "failed":
                self.report.ending = Ending.failed
                self.report.state = State(header["state"])
                self.report.error = ErrorDetail.model_validate(header["error"])
                self.report.diagnostics = [str(d)[:2000] for d in header.get("diagnostics", [])][:100]
                return
            elif op == "done":
                return
            else:
                raise WireError(f"unknown message {op!r}")

    async def _build_cuda(self, header: dict[str, Any]) -> None:
        if self.progress is not None:
            await self.progress("building CUDA")
        candidate = str(self.job.get("candidate", ""))
        reply = await anyio.to_thread.run_sync(lambda: build_cuda_request(header, candidate=candidate))
        self.report.builds.append(CudaBuildOutcome.model_validate(reply))
        await self.worker.send(reply)

    async def _build(self, header: dict[str, Any]) -> BuildOutcome:
        source = str(header.get("source", ""))
        candidate = str(self.job.get("candidate", ""))
        at = candidate.find(source) if source else -1
        offset = candidate[:at].count("\n") if at >= 0 else 0
        label = "candidate.py" if at >= 0 else "kernel.cpp"
        if self.progress is not None:
            await self.progress("building C++")
        try:
            flags = [str(f) for f in header.get("flags", [])]
            return await anyio.to_thread.run_sync(lambda: build(source, flags, line_offset=offset, file_label=label))
        except FlagError as exc:
            return BuildOutcome(ok=False, key="", diagnostics=[Diagnostic(file=label, message=str(exc))], log=str(exc))
