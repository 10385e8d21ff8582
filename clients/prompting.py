"""The generation agent's prompts, rendered locally from ``kfoundry.prompts`` with what the tools returned."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kfoundry import prompts
from kfoundry.backends import get_backend
from kfoundry.clients.records import PromptKind, TranslateFrom
from kfoundry.schema import AnalysisResult, ProblemAnalysis
from kfoundry.tools.translate import prompt_context
from kfoundry.verify import precision as numerics
from kfoundry.verify.guardrails import Guardrails

#: A reply without code is fed back as the "candidate"; only its start is worth the tokens.
MAX_REPLY_FEEDBACK = 6000


class Prompt(BaseModel):
    kind: PromptKind
    text: str
    context: dict[str, Any]


def guardrail_lines(rules: Guardrails) -> list[str]:
    lines = [f"the source must match the regular expression `{p}`" for p in rules.required]
    lines += [f"the source must not match the regular expression `{p}`" for p in rules.banned]
    return lines


class PromptBook:
    """Fixed per run: the problem, its analysis, the backend, the device, the guardrails."""

    def __init__(
        self, backend: str, reference: str, analysis: ProblemAnalysis | None = None, device: str | None = None,
        guardrails: Guardrails | None = None, atol: float | None = None, rtol: float | None = None,
        translate_from: TranslateFrom | None = None, precision: str = "strict",
    ) -> None:
        self.backend = backend
        self.translate_from = translate_from
        self.base = prompt_context(backend, reference, analysis, device=device, guardrails=guardrail_lines(guardrails or Guardrails()))
        if atol is not None and rtol is not None:
            self.base.update(atol=atol, rtol=rtol)
        self.base.update(precision=precision, precision_summary=numerics.policy(precision).summary)

    def _render(self, kind: PromptKind, **values: Any) -> Prompt:
        context = {**self.base, **values}
        return Prompt(kind=kind, text=prompts.render(kind, **context), context=context)

    def first(self) -> Prompt:
        """generate, or translate when starting from another backend's kernel."""
        source = self.translate_from
        if source is None:
            return self._render("generate")
        notes = get_backend(source.backend).notes
        return self._render("translate", source_backend=source.backend, source_candidate=source.source, source_notes=notes)

    def fix(self, candidate: str | None, reply: str, failure: Any | None, state: str, attempt: int) -> Prompt:
        """A fix prompt from a failed attempt; ``failure`` is its compile/verify/profile result (None for no code)."""
        context = prompts.failure_context(failure) if failure is not None else {"state": state}
        if candidate is None:
            candidate = reply[:MAX_REPLY_FEEDBACK] or "(the reply was empty)"
        return self._render("fix", candidate=candidate, attempt=attempt, **context)

    def optimize(self, candidate: str, analysis: AnalysisResult, recommendation: str, history: list[str]) -> Prompt:
        return self._render(
            "optimize", candidate=candidate, digest=analysis.digest, bottleneck=analysis.bottleneck,
            evidence=analysis.evidence, recommendation=recommendation, history=history,
        )
