"""KForge's two agents: one writes candidates, the other turns a profile digest into ONE recommendation.

Keeping them apart keeps the generation prompt short (a digest under 1K tokens, not a raw
profile) and lets each role use the model that suits it.
"""

from __future__ import annotations

from pydantic import BaseModel

from kfoundry.clients.providers import Model, ModelError, ModelReply, ModelRequest
from kfoundry.schema import AnalysisResult

GENERATION_SYSTEM = (
    "You are an expert kernel engineer working in a closed loop with a compiler, a verifier and a profiler. "
    "Each request states a PyTorch problem, the target backend and what happened to the previous candidate. "
    "Answer with one complete Python module in a single ```python block, as the request's output contract says; "
    "keep prose short and put it before the block."
)

ANALYSIS_SYSTEM = (
    "You are a performance analysis agent for GPU and CPU kernels. You read a compact profile digest of a correct "
    "kernel and its source, and you give exactly ONE recommendation: the single change most likely to make it "
    "faster, concrete enough to implement (what to change, where, and the expected effect with numbers from the "
    "digest). Do not write the kernel. Do not list alternatives. Answer in at most five sentences."
)

ANALYSIS_PROMPT = """Backend: {backend}{device}
Bottleneck (rule-based): {bottleneck}

## Profile digest
{digest}

## Evidence
{evidence}

## The rule-based suggestion
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
        """ONE recommendation; falls back to the rules' when the model fails or says nothing."""
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
        return Recommendation(text=text, source=self.spec, prompt=prompt, reply=reply)
