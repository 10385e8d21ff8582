"""The generation agent's prompts, rendered from the ``kfoundry.prompts`` templates with what the server returned.

``translate_reference`` renders a first prompt, but only with its defaults (no device, tolerances, guardrails
or precision policy), and the server renders no fix or optimize prompt. So all four are rendered here,
from the same templates, with the server's word on the backend: its marker (``backends``) and its notes,
which the server states only inside ``translate_reference``'s prompt and are read back from there.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from kfoundry import prompts
from kfoundry.clients.records import PromptKind, TranslateFrom
from kfoundry.schema import AnalysisResult, ToolchainInfo, TranslateResult

logger = logging.getLogger(__name__)

#: A reply without code is fed back as the "candidate"; only its start is worth the tokens.
MAX_REPLY_FEEDBACK = 6000

#: What each precision policy allows, for the output contract. The server names its policies (verify's
#: input schema) without describing them; a name missing here gets ``_ANY_PRECISION``.
PRECISION_SUMMARIES: dict[str, str] = {
    "strict": "the problem's dtypes; no TF32, no downcasts, no fast-math",
    "tf32": "fp32 matmuls/convolutions may use TF32 tensor cores",
    "fp16": "inputs and weights may be rounded to float16; accumulate in fp32 or wider",
    "bf16": "inputs and weights may be rounded to bfloat16; accumulate in fp32 or wider",
}
_ANY_PRECISION = "the candidate may compute at {name} precision; accumulate in fp32 or wider"


class Prompt(BaseModel):
    kind: PromptKind
    text: str
    context: dict[str, Any]


def _patterns(rules: dict[str, Any], key: str) -> list[str]:
    value = rules.get(key)
    return [str(p) for p in value] if isinstance(value, list) else []


def guardrail_lines(rules: dict[str, Any]) -> list[str]:
    """The regex rules of a guardrails object, as sentences for the prompt (the server enforces them all)."""
    lines = [f"the source must match the regular expression `{p}`" for p in _patterns(rules, "required")]
    lines += [f"the source must not match the regular expression `{p}`" for p in _patterns(rules, "banned")]
    return lines


def _paragraph(text: str, head: str, end: str) -> str | None:
    start = text.find(head)
    if start < 0:
        return None
    start += len(head)
    stop = text.find(end, start)
    return text[start:stop if stop >= 0 else len(text)].strip() or None


def backend_notes(prompt: str, backend: str, marker: str) -> str | None:
    """The backend's notes in a ``translate_reference`` prompt: the paragraph after its marker line (``_backend.j2``)."""
    return _paragraph(prompt, f"A {backend} candidate must contain: {marker}.\n", f"\n\n## Worked example for {backend}")


def source_notes(prompt: str, source_backend: str) -> str | None:
    """The source backend's notes in a ``translate_reference`` translation prompt (``translate.j2``)."""
    return _paragraph(prompt, f"\nNotes on {source_backend}: ", "\n\n")


class PromptBook:
    """Fixed per run: the problem, its analysis, the backend, the device, the guardrails."""

    def __init__(
        self, toolchain: ToolchainInfo, translated: TranslateResult, reference: str, device: str | None = None,
        guardrails: dict[str, Any] | None = None, atol: float | None = None, rtol: float | None = None,
        translate_from: TranslateFrom | None = None, precision: str = "strict",
    ) -> None:
        backend, marker = toolchain.name, toolchain.marker
        notes = backend_notes(translated.prompt, backend, marker)
        if notes is None:
            logger.warning("the server's translate_reference prompt states no notes for backend %s; prompts go without them", backend)
        example_reference, example_solution = prompts.oneshot(backend)
        self.translate_from = translate_from
        self.source_notes = source_notes(translated.prompt, translated.source_backend) if translate_from else None
        self.base: dict[str, Any] = {
            "reference": reference, "backend": backend, "marker": marker, "notes": notes or "",
            "oneshot_reference": example_reference, "oneshot_solution": example_solution, "analysis": translated.analysis,
            "device": device, "guardrails": guardrail_lines(guardrails or {}), "precision": precision,
            "precision_summary": PRECISION_SUMMARIES.get(precision, _ANY_PRECISION.format(name=precision)),
        }
        if atol is not None and rtol is not None:
            self.base.update(atol=atol, rtol=rtol)

    def _render(self, kind: PromptKind, **values: Any) -> Prompt:
        context = {**self.base, **values}
        return Prompt(kind=kind, text=prompts.render(kind, **context), context=context)

    def first(self) -> Prompt:
        """generate, or translate when starting from another backend's kernel."""
        source = self.translate_from
        if source is None:
            return self._render("generate")
        return self._render("translate", source_backend=source.backend, source_candidate=source.source, source_notes=self.source_notes)

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
