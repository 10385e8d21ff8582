"""What the client keeps per attempt and per run, and what a run is configured with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kfoundry.clients.edits import PromptEdits
from kfoundry.schema import State

Mode = Literal["iterative", "single", "sampling"]
Phase = Literal["functional", "optimization"]
PromptKind = Literal["generate", "translate", "fix", "optimize"]
Stage = Literal["compile", "verify", "profile"]

#: How far a failed candidate got: the most promising failure is the one to fix next.
PROGRESS: dict[State, int] = {
    State.generation_failure: 0, State.compilation_failure: 1, State.rejected: 2, State.timeout: 3,
    State.runtime_error: 3, State.mismatch: 4, State.correct: 5,
}


class TranslateFrom(BaseModel):
    backend: str
    path: str
    source: str


class RunSettings(BaseModel):
    """One ``kfoundry optimize`` invocation's knobs, shared by every problem and model it runs."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    mode: Mode = "iterative"
    iterations: int = Field(default=10, ge=1, description="Rounds; each round is one candidate, or `samples` of them.")
    samples: int = Field(default=1, ge=1, description="Candidates per round (repeated sampling).")
    concurrency: int = Field(default=4, ge=1, description="Samples in flight at once.")
    target_sol: float | None = Field(default=None, gt=0, description="Stop once the best reaches this fraction of speed of light.")
    patience: int | None = Field(default=None, ge=1, description="Stop after this many optimization rounds without a better candidate.")
    guardrails: dict[str, Any] = Field(
        default_factory=dict,
        description="A JSON object sent to verify and profile as is (the server validates it): required/banned regexes, "
        "rules, allow_torch_ops, min_own_kernel_share. Empty: the server's defaults.",
    )
    edits: PromptEdits = Field(default_factory=PromptEdits)
    hooks: list[str] = Field(default_factory=list)
    hook_timeout_s: float = 300.0
    baselines: list[Literal["eager", "compile"]] = Field(default_factory=lambda: ["eager", "compile"])
    reps: int | None = Field(default=None, ge=1, description="Timed calls per contender; None: planned by the server.")
    warmup: int = Field(default=3, ge=0)
    trials: int = Field(default=5, ge=1, description="verify trials.")
    profile_trials: int = Field(default=3, ge=1, description="Correctness trials profile runs before timing.")
    atol: float | None = None
    rtol: float | None = None
    precision: str = Field(default="strict", description="Numerics policy for verify and profile; the server's verify schema lists them.")
    tool_timeout_s: float = Field(default=900.0, gt=0, description="Bound on one tool call, queueing included.")
    translate_from: TranslateFrom | None = None
    resume: bool = False
    seed: int | None = None

    @property
    def rounds(self) -> int:
        return 1 if self.mode == "single" else self.iterations


class Attempt(BaseModel):
    """One candidate's story, written last into its folder as attempt.json (a finished attempt)."""

    iteration: int
    sample: int | None = None
    folder: str
    phase: Phase
    prompt_kind: PromptKind
    state: State
    detail: str = Field(default="", description="One line: what went wrong, or how fast it is.")
    feedback: Stage | None = Field(default=None, description="Which result file explains a failure.")
    based_on: str | None = Field(default=None, description="Folder of the candidate this one was asked to fix or improve.")
    recommendation: str | None = Field(default=None, description="The analysis agent's advice this attempt applied.")
    candidate_ms: float | None = None
    eager_ms: float | None = None
    compile_ms: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    sol_fraction: float | None = None
    bottleneck: str | None = None
    run_ids: dict[str, str] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict, description="What measurement hooks returned, merged.")
    output_tokens: int | None = None
    duration_s: float = 0.0

    @property
    def correct(self) -> bool:
        return self.state is State.correct

    @property
    def rank(self) -> float | None:
        """Higher is faster: speedup vs eager, else vs torch.compile, else 1/ms; None unless correct and timed."""
        if not self.correct:
            return None
        for value in (self.speedup_vs_eager, self.speedup_vs_compile):
            if value is not None:
                return value
        return 1.0 / self.candidate_ms if self.candidate_ms else None

    @property
    def label(self) -> str:
        return f"iter {self.iteration}" + (f" s{self.sample}" if self.sample is not None else "")


class RunSummary(BaseModel):
    """One problem with one model: every attempt, the best, and why it stopped."""

    problem: str
    model: str
    analysis_model: str
    backend: str
    mode: Mode
    folder: str
    attempts: list[Attempt] = Field(default_factory=list)
    best: str | None = Field(default=None, description="Folder of the fastest correct attempt.")
    stop_reason: str = ""
    duration_s: float = 0.0
    error: str | None = Field(default=None, description="Why the run could not go on (server gone, backend missing).")

    def best_attempt(self) -> Attempt | None:
        return next((a for a in self.attempts if a.folder == self.best), None)


class Event(BaseModel):
    """Progress of a run, for whoever watches (the terminal UI, tests)."""

    kind: Literal["run_started", "round_started", "stage", "attempt_finished", "run_finished"]
    problem: str
    model: str
    iteration: int | None = None
    sample: int | None = None
    stage: str | None = None
    state: State | None = None
    detail: str = ""
    speedup: float | None = Field(default=None, description="The attempt's (attempt_finished) or the best's (run_finished).")
    sol_fraction: float | None = None
