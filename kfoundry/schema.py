"""Typed records that cross every boundary: tool results, worker verdicts, profile data.

Every tool returns one of the ``*Result`` models below. A candidate's failure is a
``State`` in a result, never an exception; optional fields are absent (``None``)
when a stage did not run, never filled with sentinel values.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class State(str, Enum):
    """Outcome of a compile, verify or profile job (one enum shared by every tool)."""

    compiled = "compiled"
    generation_failure = "generation_failure"
    compilation_failure = "compilation_failure"
    runtime_error = "runtime_error"
    timeout = "timeout"
    mismatch = "mismatch"
    rejected = "rejected"
    correct = "correct"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class Diagnostic(Record):
    """One compiler message, located in the candidate's source where possible."""

    file: str = Field(description="Source the message refers to (e.g. 'candidate.py' or 'kernel_3f2a.cpp').")
    line: int | None = Field(default=None, description="1-based line in that file.")
    column: int | None = None
    severity: Literal["error", "warning", "note"] = "error"
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


class KernelStats(Record):
    """Per-kernel facts reported by the toolchain at build time."""

    name: str
    registers: int | None = None
    spills_bytes: int | None = None
    shared_memory_bytes: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    build_s: float | None = Field(default=None, description="Seconds spent building (0 when served from cache).")
    cached: bool = False
    notes: list[str] = Field(default_factory=list)


class ErrorDetail(Record):
    """An exception or crash in the candidate (or the problem) while it ran."""

    type: str = Field(description="Exception class, or 'Signal' / 'Exit' for a dying process.")
    message: str
    traceback_tail: str = Field(default="", description="Last frames of the traceback, most recent last.")
    stage: str = Field(default="", description="Where it happened: load, init, trial 2, timing, ...")
    stderr_tail: str = Field(default="", description="Last lines the process wrote to stderr.")


class Sample(Record):
    index: list[int]
    expected: float | str
    got: float | str


class MismatchDetail(Record):
    """Why one output tensor did not match the reference."""

    output_index: int = 0
    trial: int = 0
    reason: Literal["shape", "dtype", "values", "nonfinite", "count", "type", "precision"]
    message: str
    input_family: str = Field(default="standard", description="Which inputs failed: 'standard' or a stress family (wide, signed, large, tiny, special).")
    expected_shape: list[int] | None = None
    got_shape: list[int] | None = None
    expected_dtype: str | None = None
    got_dtype: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    bad_fraction: float | None = None
    first_bad_index: list[int] | None = None
    samples: list[Sample] = Field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None


class PrecisionCheck(Record):
    """One output's error against the float64 oracle (the worst trial), beside an honest run's."""

    output_index: int
    trial: int
    candidate_error: float = Field(description="RMS error of the candidate against the float64 oracle.")
    honest_error: float = Field(description="RMS error of the reference run at the policy's precision (strict: the problem's dtypes).")
    bound: float | None = Field(default=None, description="Largest candidate error accepted: relaxed policies 2x the honest error; strict the "
                                "geometric midpoint of the reference's own error and one rounding to the next narrower format on the problem's inputs, that rounding on a stress family's (inside atol/rtol too).")
    passed: bool


class StressOutcome(Record):
    family: str
    status: Literal["checked", "dropped"]
    reason: str = ""


class Finding(Record):
    """An integrity or guardrail observation; ``blocking`` findings make the verdict ``rejected``."""

    code: str
    message: str
    blocking: bool = True


class CompileResult(Record):
    state: State
    backend: str
    diagnostics: list[str] = Field(default_factory=list, description="'file:line: severity: message' lines.")
    kernels: list[KernelStats] = Field(default_factory=list)
    error: ErrorDetail | None = None
    interpreted: bool = Field(default=False, description="True when the backend runs in an interpreter (e.g. Triton on CPU).")
    duration_s: float
    run_id: str
    next_step: str = Field(default="", description="What to do next, in one sentence.")


class VerifyResult(Record):
    state: State
    backend: str
    trials_passed: int = 0
    trials: int
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = Field(default_factory=list)
    error: ErrorDetail | None = None
    diagnostics: list[str] = Field(default_factory=list)
    kernels: list[KernelStats] = Field(default_factory=list)
    interpreted: bool = False
    device: str = "cpu"
    atol: float | None = None
    rtol: float | None = None
    precision: str = Field(default="strict", description="The numerics policy the candidate was judged under.")
    precision_checks: list[PrecisionCheck] = Field(default_factory=list, description="Errors against the float64 oracle, per output.")
    stress: list[StressOutcome] = Field(default_factory=list, description="Stress input families run, or dropped because the reference went non-finite.")
    cpu_time: dict[str, float] | None = Field(default=None, description="CPU: forward's sampled CPU time by where it ran (own, python, torch, numpy, libc, openmp, ...).")
    own_kernel_share: float | None = Field(default=None, description="GPU: share of one extra call's device time in this backend's own (or allowed library) kernels.")
    duration_s: float
    run_id: str
    next_step: str = ""


class Timing(Record):
    """Summary of repeated timed calls (milliseconds)."""

    median_ms: float
    iqr_ms: float = Field(description="Inter-quartile range of the samples.")
    min_ms: float
    mean_ms: float
    cov: float = Field(description="Coefficient of variation (stdev / mean).")
    n: int


class KernelShare(Record):
    """One entry of the per-kernel (per-op on CPU) time breakdown."""

    name: str
    time_ms: float = Field(description="Self time per forward call.")
    share: float = Field(description="Fraction of the measured total, 0..1.")
    calls: int
    own: bool = Field(description="True for this backend's own kernels, False for library (aten/BLAS) work.")
    allowed: bool = Field(default=False, description="Library work launched by an aten op the guardrails allow (allow_torch_ops).")


class KernelCounters(Record):
    """Nsight Compute measurements of one kernel launch (percentages are 0..100)."""

    name: str
    duration_us: float | None = None
    sm_throughput_pct: float | None = Field(default=None, description="Compute (SM) throughput, % of peak.")
    memory_throughput_pct: float | None = Field(default=None, description="Memory throughput, % of peak.")
    dram_throughput_pct: float | None = None
    l1_hit_rate_pct: float | None = None
    l2_hit_rate_pct: float | None = None
    achieved_occupancy_pct: float | None = None
    theoretical_occupancy_pct: float | None = None
    registers_per_thread: float | None = None
    shared_memory_per_block_bytes: float | None = None
    block_size: float | None = None
    grid_size: float | None = None
    waves_per_sm: float | None = None
    raw: dict[str, float] = Field(default_factory=dict, description="Every numeric metric ncu reported, by its name.")


class AttributionStatus(str, Enum):
    measured = "measured"
    #: no run could be made here (no GPU, no ncu, no private network namespace)
    unavailable = "unavailable"
    #: the run was made and gave nothing to judge (the job failed, a call was wrong, too many launches): fails closed
    failed = "failed"


class DeviceAttribution(Record):
    """Where one candidate call's device time went, recorded by Nsight Compute running outside the candidate's sandbox.

    The candidate can neither rename the kernels it launches nor reach the profiler's record,
    so this share does not rest on anything the candidate's process reports about itself.
    """

    status: AttributionStatus
    own_share: float | None = Field(default=None, description="Share of the call's kernel time in kernels that are not library or framework code.")
    kernel_ms: float | None = Field(default=None, description="Kernel time of the call, summed over its launches (kernels run one at a time).")
    launches: int = 0
    kernels: list[KernelShare] = Field(default_factory=list)
    reason: str = Field(default="", description="Why it was not measured, when it was not.")


class Roofline(Record):
    flops: float
    bytes: float
    arithmetic_intensity: float
    peak_flops: float = Field(description="FLOP/s of the device at the problem's precision.")
    peak_bandwidth: float = Field(description="Bytes/s of main memory.")
    peak_source: str = Field(description="Where the peaks come from: a datasheet entry or a measurement.")
    sol_ms: float = Field(description="max(flops/peak_flops, bytes/peak_bandwidth) in ms.")
    achieved_fraction: float | None = Field(default=None, description="sol_ms / candidate median.")


class Speedup(Record):
    baseline: Literal["eager", "compile"]
    precision: str = Field(description="Policy the baseline ran under ('strict': TF32 off, the problem's dtypes).")
    median_ms: float
    speedup: float = Field(description="Baseline median / candidate median.")


class ProfileResult(Record):
    state: State
    backend: str
    device: str = "cpu"
    candidate: Timing | None = None
    eager: Timing | None = None
    compiled: Timing | None = Field(default=None, description="torch.compile baseline.")
    speedup_vs_eager: float | None = Field(default=None, description="Against eager under the same precision policy.")
    speedup_vs_compile: float | None = Field(default=None, description="Against torch.compile under the same precision policy.")
    precision: str = Field(default="strict", description="Numerics policy of the candidate and of eager/compiled.")
    speedups: list[Speedup] = Field(default_factory=list, description="Every baseline with its precision policy, labelled.")
    own_kernel_share: float | None = Field(default=None, description="GPU: share of device time in this backend's own (or allowed library) kernels.")
    timed_rechecks: int = Field(default=0, description="Timed calls whose outputs were rechecked against the reference.")
    sol_ms: float | None = None
    sol_fraction: float | None = None
    roofline: Roofline | None = None
    breakdown: list[KernelShare] = Field(default_factory=list)
    baseline_breakdown: list[KernelShare] = Field(default_factory=list, description="Eager reference's ops.")
    counters: list[KernelCounters] = Field(default_factory=list, description="Nsight Compute counters per kernel, when asked for.")
    counters_status: str = Field(default="not requested", description="'collected', 'not requested' or 'unavailable: <why>'.")
    device_attribution: DeviceAttribution | None = Field(
        default=None, description="GPU: one call's kernels as Nsight Compute recorded them from outside the sandbox, judged against the same floor."
    )
    verify: VerifyResult | None = None
    error: ErrorDetail | None = None
    findings: list[Finding] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    interpreted: bool = False
    duration_s: float
    run_id: str
    next_step: str = ""


class Bottleneck(str, Enum):
    memory = "memory"
    compute = "compute"
    latency = "latency"
    launch_overhead = "launch_overhead"
    host_overhead = "host_overhead"
    unknown = "unknown"


class Action(str, Enum):
    """The class of change a recommendation asks for."""

    main_loop = "main_loop"  # GPU: the GEMM main loop itself (FMA vs tl.dot/mma, matching the library's rate)
    tile_config = "tile_config"  # GPU: tile shape, warps, stages, BLOCK size
    fusion = "fusion"  # fuse passes that round-trip memory
    launch_count = "launch_count"  # fewer launches / calls per forward
    host_overhead = "host_overhead"  # host work in forward
    precision = "precision"  # GPU: use (or use better) the precision the policy allows
    coalescing = "coalescing"  # GPU: contiguous accesses across a warp
    library = "library"  # replace library kernels the candidate left in place
    vectorise = "vectorise"  # CPU: SIMD
    threads = "threads"  # CPU: all cores
    cache_blocking = "cache_blocking"  # CPU: blocking / loop order for reuse
    stop = "stop"  # nothing left that pays: at the roofline or the launch floor


class AnalysisResult(Record):
    bottleneck: Bottleneck
    digest: str = Field(description="Short summary of the measurements (well under 1K tokens).")
    recommendation: str = Field(description="The ONE change most likely to pay off next.")
    evidence: list[str] = Field(default_factory=list)
    source: Literal["rules", "sampling", "model"] = "rules"
    action: Action | None = None
    expected_gain_ms: float | None = None
    expected_ms: float | None = None
    gap_kernel: str | None = None
    considered: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    history: list[str] = Field(default_factory=list)
    profile_run_id: str | None = None
    run_id: str


class OpInfo(Record):
    op: str
    count: int
    input_shapes: list[list[int]] = Field(default_factory=list)
    dtypes: list[str] = Field(default_factory=list)
    flops: float = 0.0


class ProblemAnalysis(Record):
    ops: list[OpInfo] = Field(default_factory=list)
    input_shapes: list[list[int]] = Field(default_factory=list)
    input_dtypes: list[str] = Field(default_factory=list)
    output_shapes: list[list[int]] = Field(default_factory=list)
    output_dtypes: list[str] = Field(default_factory=list)
    parameter_count: int = 0
    dtype: str = Field(default="float32", description="Floating dtype holding most of the data: sets the peak used for speed of light.")
    flops: float = 0.0
    bytes: float = Field(default=0.0, description="Compulsory bytes: inputs + parameters read once, outputs written once.")
    arithmetic_intensity: float = 0.0
    sol_ms: dict[str, float] = Field(default_factory=dict, description="Speed-of-light ms per known device.")


class TranslateResult(Record):
    prompt: str
    analysis: ProblemAnalysis | None = None
    analysis_error: ErrorDetail | None = None
    target_backend: str
    source_backend: str = "pytorch"
    translation: str | None = Field(default=None, description="A candidate written by the client's model when it offered sampling.")
    translation_source: Literal["none", "sampling", "model"] = "none"
    run_id: str


class ToolchainInfo(Record):
    name: str
    available: bool
    reason: str = Field(default="", description="Why it is unavailable, or notes about how it runs.")
    version: str = ""
    device: str = ""
    interpreted: bool = False
    compile_only: bool = Field(default=False, description="The backend can compile here but not run: `compile` works, verify/profile need a device.")
    marker: str = Field(default="", description="What a candidate for this backend must contain.")


class ArtifactUsage(Record):
    """What one caller's runs hold on disk now."""

    bytes: int = 0
    runs: int = 0


class Limits(Record):
    """Caps in force for every job on this server."""

    worker_memory_mb: int
    file_mb: int = Field(description="Largest file a worker may write.")
    processes: int = Field(description="Processes/threads per worker.")
    payload_bytes: int = Field(description="Largest source accepted.")
    frame_bytes: int = Field(description="Largest worker message.")
    build_memory_mb: int
    build_cpu_s: int
    artifact_quota_mb: int = Field(description="Your runs past this go, oldest first.")
    artifact_ttl_hours: float
    artifacts: ArtifactUsage = Field(description="Your runs now.")


class BackendsResult(Record):
    backends: list[ToolchainInfo]
    best: str = Field(description="The backend a user on this host should try first.")
    devices: list[str]
    queues: dict[str, dict[str, int | bool]] = Field(
        default_factory=dict, description="Per device now: jobs running, queued, timing (held alone), warm spares."
    )
    limits: Limits | None = None
    sandbox: str = Field(default="unknown", description="How untrusted code is isolated here.")
