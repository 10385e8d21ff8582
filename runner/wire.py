"""The typed protocol between the trusted parent and its workers, and its framing.

A frame is a 4-byte big-endian length, a 2-byte count of descriptors and one JSON message.
Every message is a pydantic model with a literal ``kind``; both ends parse frames into the
``Message`` union and dispatch on the model's type. Tensors never travel here: they cross by
reference (``runner.exchange``), so frames stay small and a frame over ``MAX_FRAME`` is a
protocol violation, whatever the problem's size. Device memory crosses as file descriptors
(``SCM_RIGHTS``) attached to the frame's header, one per CUDA ``TensorRef`` in the message, in
the order ``tensor_refs`` walks them.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kfoundry.schema import ErrorDetail, KernelShare, KernelStats, ProblemAnalysis, State
from kfoundry.verify.facts import CallCheck, RuntimeFacts

HEADER = struct.Struct(">IH")
#: Largest frame either side accepts: messages carry facts and handles, never tensor bytes.
MAX_FRAME = 4 << 20
#: Most descriptors one frame may carry (a call's inputs or outputs, each one allocation).
MAX_FDS = 256


class WireError(RuntimeError):
    """The peer broke the framing or sent a message that is not in the protocol."""


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- values crossing by reference ------------------------------------------------------------
class TensorRef(Wire):
    """A tensor living in another process's memory: a CUDA IPC handle or a shared-memory file."""

    kind: Literal["tensor"] = "tensor"
    dtype: str
    shape: list[int]
    #: ``cuda``: torch's IPC sharing tuple (handles as hex); ``cpu``: a file under the job's exchange folder
    storage: Literal["cuda", "file", "empty"]
    cuda: dict[str, Any] | None = None
    file: str | None = None
    #: the tensor's class name as the producer saw it (plain tensors: ``Tensor``)
    type_name: str = "Tensor"
    plain: bool = True


class PlainValue(Wire):
    """A JSON value (init arguments such as sizes, or a non-tensor output described by its repr)."""

    kind: Literal["plain"] = "plain"
    value: Any = None
    type_name: str = ""
    repr: str = ""


Value = Annotated[TensorRef | PlainValue, Field(discriminator="kind")]


class NamedRef(Wire):
    name: str
    tensor: TensorRef


# -- parent -> worker -------------------------------------------------------------------------
class CandidateJob(Wire):
    kind: Literal["candidate_job"] = "candidate_job"
    backend: str
    candidate: str
    device: str
    precision: str
    init_seed: int
    init_args: list[Value]
    parameters: list[NamedRef] = Field(default_factory=list)
    exchange: str = ""
    #: fill freed memory before every call (alternating values), so reads of stale memory show
    poison: bool = True
    #: the first N calls run with glibc's malloc perturbation: host memory is scrambled when allocated and
    #: when freed, so an output read from memory an earlier computation freed shows as garbage
    scrub_calls: int = 0
    #: record the PyTorch ops of every call (``-1``) or of the first N calls
    trace_calls: int = -1
    #: import and build only; no calls follow
    build_only: bool = False
    #: capture ``forward`` as a CUDA graph once per input slot and replay it on every call
    cuda_graph: bool = False
    #: calls from this index on run inside cudaProfilerStart/Stop (a worker started under Nsight Compute); -1: none
    profiled_from: int = -1


class ReferenceJob(Wire):
    kind: Literal["reference_job"] = "reference_job"
    problem: str
    device: str
    precision: str
    init_seed: int
    exchange: str = ""
    atol: float | None = None
    rtol: float | None = None
    #: input sets kept on the device at once (calls rotate through them)
    slots: int = 2


class MakeInputs(Wire):
    kind: Literal["make_inputs"] = "make_inputs"
    call: int
    seed: int
    family: str = "standard"
    slot: int = 0


class Forward(Wire):
    """One call of the candidate; every call, warm-up, trial or timed, looks exactly like this."""

    kind: Literal["forward"] = "forward"
    call: int
    inputs: list[Value]


class Judge(Wire):
    """How the reference judges one call of the candidate."""

    #: float64 oracle (and, under a relaxed policy, an honest run at the policy) for this call
    oracle: bool = False
    #: verification-trial extras: constant outputs, fingerprints for replay detection
    trial: bool = False
    #: compare only at positions drawn at random for the job (a timed call's spot check); large outputs only
    spot: bool = False


class Collect(Wire):
    """The candidate (frozen now) returned these outputs for ``call``: judge them; prepare the next."""

    kind: Literal["collect"] = "collect"
    call: int
    outputs: list[Value]
    judge: Judge = Field(default_factory=Judge)
    next: MakeInputs | None = None


class PrepareBaselines(Wire):
    kind: Literal["prepare_baselines"] = "prepare_baselines"
    baselines: list[str]
    warmup: int = 3
    cuda_graph: bool = False


class MakeBatch(Wire):
    """Fresh inputs for every call of one timing turn, made ahead of it (one slot per call)."""

    kind: Literal["make_batch"] = "make_batch"
    items: list[MakeInputs]


class TimeBaselines(Wire):
    """The reference's turn: every baseline, queued back to back over the inputs of ``calls``."""

    kind: Literal["time_baselines"] = "time_baselines"
    calls: list[int]
    #: rotates which baseline goes first
    turn: int = 0


class ForwardBatch(Wire):
    """The candidate's turn: these calls queued back to back, each timed on its own."""

    kind: Literal["forward_batch"] = "forward_batch"
    calls: list[Forward]


class CollectBatch(Wire):
    kind: Literal["collect_batch"] = "collect_batch"
    items: list[Collect]


class ProfileCall(Wire):
    """One extra call under torch.profiler: per-kernel breakdown (candidate, or the reference's baseline)."""

    kind: Literal["profile_call"] = "profile_call"
    inputs: list[Value] = Field(default_factory=list)
    allow_ops: list[str] = Field(default_factory=list)
    #: share the last profiled call's outputs, for the reference to judge like any other call
    judged: bool = False


class Analyze(Wire):
    kind: Literal["analyze"] = "analyze"


class Stop(Wire):
    kind: Literal["stop"] = "stop"


class BuildReply(Wire):
    kind: Literal["build_reply"] = "build_reply"
    outcome: dict[str, Any]


# -- worker -> parent -------------------------------------------------------------------------
class Ready(Wire):
    kind: Literal["ready"] = "ready"
    pid: int


class Stage(Wire):
    kind: Literal["stage"] = "stage"
    stage: str
    detail: str = ""


class BuildRequest(Wire):
    """A worker asks the trusted side to run a toolchain (the request is the backend's own model, as a dict)."""

    kind: Literal["build"] = "build"
    op: str
    request: dict[str, Any]


class Prepared(Wire):
    """The reference is built: what the candidate needs to build its model the same way."""

    kind: Literal["prepared"] = "prepared"
    init_args: list[Value]
    parameters: list[NamedRef]


class InputsReady(Wire):
    kind: Literal["inputs_ready"] = "inputs_ready"
    call: int
    inputs: list[Value]


class Loaded(Wire):
    kind: Literal["loaded"] = "loaded"
    kernels: list[KernelStats] = Field(default_factory=list)
    seconds: float = 0.0


class Returned(Wire):
    """What the candidate's process says about one call: its outputs and its own timing (untrusted)."""

    kind: Literal["returned"] = "returned"
    call: int
    outputs: list[Value]
    elapsed_ms: float
    facts: RuntimeFacts = Field(default_factory=RuntimeFacts)


class Collected(Wire):
    kind: Literal["collected"] = "collected"
    call: int
    check: CallCheck
    #: bytes of the reference's own outputs for this call (what the candidate's reply is measured against)
    output_bytes: int = 0
    next: InputsReady | None = None


class BaselinesReady(Wire):
    kind: Literal["baselines_ready"] = "baselines_ready"
    names: list[str]
    warnings: list[str] = Field(default_factory=list)
    #: the reference's own time per call (eager, queued, flushed): what the repetition count is planned from
    pilot_ms: float = 0.0
    #: device bytes one queued call holds on both sides (inputs twice, outputs three times)
    call_bytes: int = 0
    #: free device (or host) memory after the baselines were prepared
    free_bytes: int = 0
    #: tensors among one call's inputs and outputs (each crosses as a descriptor)
    tensors_per_call: int = 0


class BatchReady(Wire):
    kind: Literal["batch_ready"] = "batch_ready"
    items: list[InputsReady]


class BaselinesTimed(Wire):
    kind: Literal["baselines_timed"] = "baselines_timed"
    #: baseline name -> ms of each call, in the order of ``TimeBaselines.calls``
    ms: dict[str, list[float]]


class ReturnedBatch(Wire):
    kind: Literal["returned_batch"] = "returned_batch"
    items: list[Returned]


class CollectedBatch(Wire):
    kind: Literal["collected_batch"] = "collected_batch"
    items: list[Collected]


class Profiled(Wire):
    kind: Literal["profiled"] = "profiled"
    shares: list[KernelShare]
    warnings: list[str] = Field(default_factory=list)
    #: the last profiled call's outputs (a judged ``ProfileCall`` only)
    outputs: list[Value] = Field(default_factory=list)


class Analysis(Wire):
    kind: Literal["analysis"] = "analysis"
    analysis: ProblemAnalysis


class Failed(Wire):
    """The job ended early: a state for the verdict, the error, compiler diagnostics."""

    kind: Literal["failed"] = "failed"
    state: State
    error: ErrorDetail
    diagnostics: list[str] = Field(default_factory=list)


class Done(Wire):
    kind: Literal["done"] = "done"


Message = Annotated[
    CandidateJob | ReferenceJob | MakeInputs | Forward | Collect | PrepareBaselines | ProfileCall | Analyze | Stop | BuildReply
    | MakeBatch | TimeBaselines | ForwardBatch | CollectBatch
    | Ready | Stage | BuildRequest | Prepared | InputsReady | Loaded | Returned | Collected | BaselinesReady | Profiled
    | BatchReady | BaselinesTimed | ReturnedBatch | CollectedBatch
    | Analysis | Failed | Done,
    Field(discriminator="kind"),
]
_MESSAGE: TypeAdapter[Any] = TypeAdapter(Message)

def encode(message: Wire, fds: int = 0) -> bytes:
    body = message.model_dump_json().encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"a {type(message).__name__} message of {len(body)} bytes is over the {MAX_FRAME}-byte frame limit")
    if fds > MAX_FDS:
        raise WireError(f"a {type(message).__name__} message with {fds} descriptors is over the {MAX_FDS} limit")
    return HEADER.pack(len(body), fds) + body


def tensor_refs(value: Any) -> Iterator[TensorRef]:
    """Every ``TensorRef`` inside a message, depth first in field order (the order its descriptors travel in)."""
    if isinstance(value, TensorRef):
        yield value
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from tensor_refs(getattr(value, field))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensor_refs(item)


def device_refs(message: Wire) -> list[TensorRef]:
    return [ref for ref in tensor_refs(message) if ref.storage == "cuda"]


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def decode(body: bytes) -> Wire:
    """Parse one frame's body; anything not in the protocol is a ``WireError``."""
    try:
        return _MESSAGE.validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise WireError(f"not a protocol message ({where}: {first.get('msg', 'invalid')})") from None


class Channel:
    """Blocking frame channel over a connected socket (the worker's side).

    ``outgoing`` names the descriptor to attach for each CUDA reference a message carries;
    ``incoming`` receives the descriptors of each message that arrives, in ``device_refs`` order.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outgoing: Any = None
        self.incoming: Any = None
        self._fds: list[int] = []

    def send(self, message: Wire) -> None:
        fds = self.outgoing(device_refs(message)) if self.outgoing is not None else []
        frame = encode(message, len(fds))
        if fds:
            sent = socket.send_fds(self.sock, [frame[: HEADER.size]], fds)
            frame = frame[sent:]
        self.sock.sendall(frame)

    def _exactly(self, n: int, fds: bool = False) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if fds:
                chunk, got, flags, _ = socket.recv_fds(self.sock, n - len(buf), MAX_FDS)
                self._fds += got
                if flags & socket.MSG_CTRUNC:
                    raise WireError("a frame carried more descriptors than the protocol allows")
            else:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("peer closed the channel")
            buf += chunk
        return bytes(buf)

    def recv(self) -> Wire:
        length, count = HEADER.unpack(self._exactly(HEADER.size, fds=True))
        if length > MAX_FRAME:
            raise WireError(f"a {length}-byte frame is over the limit")
        message = decode(self._exactly(length))
        fds, self._fds = self._fds, []
        refs = device_refs(message)
        if count != len(fds) or len(refs) != len(fds):
            close_all(fds)
            raise WireError(f"a frame announced {count} descriptors for {len(refs)} device tensors and carried {len(fds)}")
        if self.incoming is not None:
            self.incoming(refs, fds)
        else:
            close_all(fds)
        return message

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        """A toolchain request (``{"op": "build_cpp", ...}``) answered by the trusted side; returns the outcome."""
        payload = dict(header)
        op = str(payload.pop("op", ""))
        self.send(BuildRequest(op=op, request=payload))
        reply = self.recv()
        if not isinstance(reply, BuildReply):
            raise WireError(f"expected a build reply, got {type(reply).__name__}")
        return reply.outcome
