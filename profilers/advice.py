"""One recommendation from a digest: every rule that applies proposes a change with its expected gain; the largest wins.

Each backend kind has its own rule set (``gpu_rules``, ``cpu_rules``); a CPU digest is never shown
GPU rules, and the policy guard below drops any option the numerics policy forbids. Options whose
action was tried on this problem without paying (the run's history) are dropped too. When nothing
left promises a worthwhile gain, the answer is to stop tuning this kernel, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from kfoundry.profilers.digest import Digest, ms
from kfoundry.schema import Action, Bottleneck

GPU_ACTIONS = frozenset({
    Action.main_loop, Action.tile_config, Action.fusion, Action.launch_count, Action.host_overhead,
    Action.precision, Action.coalescing, Action.library, Action.stop,
})
CPU_ACTIONS = frozenset({
    Action.vectorise, Action.threads, Action.cache_blocking, Action.fusion, Action.launch_count,
    Action.host_overhead, Action.library, Action.stop,
})
#: Words that would ask for reduced precision; none may appear in advice under the strict policy.
STRICT_FORBIDDEN = ("tensor core", "tf32", "bf16", "bfloat16", "fp16", "float16", "half precision", "fast-math", "fast_math", "wmma")


class Option(BaseModel):
    """A change one rule proposes, with the time it should save."""

    action: Action
    bottleneck: Bottleneck
    gain_ms: float = Field(description="Expected saving per call.")
    kernel: str | None = None
    text: str = Field(description="The change, concrete, with the numbers behind it.")
    reduces_precision: bool = False


class Advice(BaseModel):
    """The chosen recommendation and what was weighed against it."""

    action: Action
    bottleneck: Bottleneck
    text: str
    expected_gain_ms: float | None = None
    expected_ms: float | None = None
    kernel: str | None = None
    considered: list[str] = Field(default_factory=list, description="Other options as 'action: gain', best first.")
    skipped: list[str] = Field(default_factory=list, description="Options dropped: tried without gain, or forbidden by the policy.")


Rules = Callable[[Digest, str], list[Option]]

#: An option must promise this fraction of the call to beat stopping.
WORTHWHILE = 0.10
#: Order among options whose gains are within 10% of each other: the surer, cheaper change first.
_PRIORITY = (
    Action.launch_count, Action.host_overhead, Action.precision, Action.main_loop, Action.fusion, Action.library,
    Action.threads, Action.vectorise, Action.cache_blocking, Action.coalescing, Action.tile_config, Action.stop,
)


def allowed(option: Option, digest: Digest) -> bool:
    """Whether the backend kind and the numerics policy permit ``option``."""
    if option.action not in (GPU_ACTIONS if digest.kind == "gpu" else CPU_ACTIONS):
        return False
    if digest.precision == "strict":
        if option.reduces_precision:
            return False
        # An fp32 problem under strict: the advice must not even mention narrower math (a bf16 problem may).
        fp32 = digest.peak is None or digest.peak.label in ("fp32 FMA", "measured")
        if fp32 and any(word in option.text.lower() for word in STRICT_FORBIDDEN):
            return False
    return True


def choose(digest: Digest, options: list[Option], tried: set[Action], stop: Option) -> Advice:
    """The option with the largest expected gain, among those allowed and not tried in vain; ``stop`` when none pays."""
    skipped: list[str] = []
    kept: list[Option] = []
    for option in options:
        if not allowed(option, digest):
            skipped.append(f"{option.action.value}: not allowed for a {digest.kind} backend under {digest.precision}")
        elif option.action in tried:
            skipped.append(f"{option.action.value}: tried on this problem without a gain")
        else:
            kept.append(option)
    median = digest.median_ms or 0.0
    floor = WORTHWHILE * median
    ranked = sorted(kept, key=lambda o: o.gain_ms, reverse=True)
    best = ranked[0] if ranked and ranked[0].gain_ms >= floor else None
    if best is not None:
        # Near-ties go to the surer change: gains are estimates, the order encodes which estimates hold best.
        close = [o for o in ranked if o.gain_ms >= 0.9 * best.gain_ms]
        best = min(close, key=lambda o: _PRIORITY.index(o.action))
    chosen = best or stop
    considered = [f"{o.action.value}: ~{ms(o.gain_ms)}" for o in ranked if o is not chosen]
    gain = chosen.gain_ms if chosen is not stop else None
    return Advice(
        action=chosen.action, bottleneck=chosen.bottleneck, text=chosen.text, kernel=chosen.kernel,
        expected_gain_ms=gain, expected_ms=(median - gain) if gain is not None and median else None,
        considered=considered, skipped=skipped,
    )


def saving(gain_ms: float, median_ms: float | None) -> str:
    """'saves ~2.4 ms of 7.7 ms (to ~5.3 ms)'."""
    if not median_ms:
        return f"saves ~{ms(gain_ms)}"
    return f"saves ~{ms(gain_ms)} of {ms(median_ms)} (to ~{ms(max(median_ms - gain_ms, 0.0))})"
