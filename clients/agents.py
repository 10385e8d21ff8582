"""KForge's two agents: one writes candidates, the other turns a profile digest into ONE recommendation.

Keeping them apart keeps the generation prompt short (a digest under 1K tokens, not a raw
profile) and lets each role use the model that suits it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from kfoundry.clients.providers import Model, ModelError, ModelReply, ModelRequest
from kfoundry.schema import AnalysisResult

GENERATION_SYSTEM = (
    "You are an expert kernel engineer working in a closed loop with a compiler, a verifier and a profiler. "
    "Each request states a PyTorch problem, the target backend and what happened to the previous candidate. "
    "Answer with one complete Python module in a single ```python block, as the request's output contract says; "
    "keep prose short and put it before the block."
)

ANALYSIS_SYSTEM = (
    "You are a performance analysis agent for GPU and CPU kernels. You read a digest of a correct kernel's profile: "
    "each kernel's time, achieved FLOP/s or bytes/s and share of the peak the backend, device and precision policy "
    "allow, set against the eager baseline, and the kernel holding the gap. You give exactly ONE recommendation: the "
    "single change most likely to make it faster, concrete enough to implement (what to change, where), with the "
    "expected gain. Cite the digest's own numbers for every claim; do not invent measurements. Respect the precision "
    "policy (under strict: no TF32, bf16/fp16 rounding or fast-math for fp32 data). Give CPU advice for CPU backends "
    "and GPU advice for GPU backends. Do not repeat a change the history says did not pay. Do not write the kernel. "
    "Do not list alternatives. Answer in at most five sentences."
)

ANALYSIS_PROMPT = """Backend: {backend}{device}
Bottleneck (rule-based): {bottleneck}

## Profile digest
{digest}

## Evidence
{evidence}

## The rule-based suggestion (from the digest's numbers; yours may differ if the source shows better)
{rules}

## The current kernel
```python
{candidate}
```
{history}
Give ONE recommendation for the next version of this kernel."""


class Recommendation(BaseModel):
    text: str
    source: str
    prompt: str | None = None
    reply: ModelReply | None = None
    error: str | None = None
    cites_digest: bool | None = Field(default=None, description="Whether a model's reply quotes at least one number from the digest.")


#: a measured number: not one glued to a name (the 32 of fp32, the 90 of sm90 are no measurements)
_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?")


def cites(reply: str, digest: str) -> bool:
    """Whether ``reply`` quotes a measured number of ``digest`` (one with a decimal point or of two or more digits)."""
    measured = {n for n in _NUMBER.findall(digest) if "." in n or len(n) > 1}
    return any(n in measured for n in _NUMBER.findall(reply))


class GenerationAgent:
    def __init__(self, model: Model) -> None:
        self.model = model

    async def write(self, prompt: str, tag: str) -> ModelReply:
        """Raises ModelError when no reply can be had."""
        return await self.model.complete(ModelRequest(role="generation", system=GENERATION_SYSTEM, prompt=prompt, tag=tag))


class AnalysisAgent:
    """``model`` None means rules only: analyze_profile's own recommendation passes through."""

    def __init__(self, model: Model | None) -> None:
        self.model = model

    @property
    def spec(self) -> str:
        return self.model.spec if self.model is not None else "rules"

    @staticmethod
    def prompt(analysis: AnalysisResult, candidate: str, backend: str, device: str | None, history: list[str]) -> str:
        tried = "\n## Tried before (do not repeat what did not pay off)\n" + "\n".join(f"- {h}" for h in history) + "\n" if history else ""
        return ANALYSIS_PROMPT.format(
            backend=backend, device=f" on {device}" if device else "", bottleneck=analysis.bottleneck.value, digest=analysis.digest,
            evidence="\n".join(f"- {e}" for e in analysis.evidence) or "- (none)", rules=analysis.recommendation,
            candidate=candidate.rstrip(), history=tried,
        )

    async def recommend(self, analysis: AnalysisResult, candidate: str, backend: str, device: str | None, history: list[str], tag: str) -> Recommendation:
        """ONE recommendation; falls back to the rules' when the model fails, says nothing or cites none of the digest's numbers."""
        if self.model is None:
            return Recommendation(text=analysis.recommendation, source="rules")
        prompt = self.prompt(analysis, candidate, backend, device, history)
        try:
            reply = await self.model.complete(ModelRequest(role="analysis", system=ANALYSIS_SYSTEM, prompt=prompt, tag=tag))
        except ModelError as exc:
            return Recommendation(text=analysis.recommendation, source="rules", prompt=prompt, error=str(exc))
        text = reply.text.strip()
        if not text:
            return Recommendation(text=analysis.recommendation, source="rules", prompt=prompt, reply=reply, error="empty reply")
        if not cites(text, analysis.digest):
            # Advice that quotes none of the measurements may be invented: the rules' own, which is built from them, stands.
            return Recommendation(text=analysis.recommendation, source="rules", prompt=prompt, reply=reply, cites_digest=False,
                                  error="the reply quoted no number of the digest")
        return Recommendation(text=text, source=self.spec, prompt=prompt, reply=reply, cites_digest=True)
