"""Model registry: a spec string ``provider:name`` -> one ``Model``, the provider module imported lazily.

    anthropic:claude-sonnet-4-5          the Messages API (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)
    openai:qwen2.5-coder@http://h:8000/v1 an OpenAI-compatible /v1/chat/completions endpoint (vLLM, Ollama, ...)
    scripted:story.json                  replays a file of responses, in order, per agent role
    rules                                no model: the analysis agent passes analyze_profile's own advice on

A bare name (``claude-opus-4-1``) means ``anthropic:<name>``. Adding a provider is one module
holding a class that satisfies ``Model`` plus one line in ``REGISTRY``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["generation", "analysis"]

REGISTRY: dict[str, str] = {
    "anthropic": "kfoundry.clients.providers.anthropic:AnthropicModel",
    "openai": "kfoundry.clients.providers.openai_compatible:OpenAICompatibleModel",
    "scripted": "kfoundry.clients.providers.scripted:ScriptedModel",
}
RULES = "rules"


class ModelError(Exception):
    """The model gave no reply (network, quota, exhausted script); the attempt is a generation_failure."""


class ModelOptions(BaseModel):
    """Knobs every provider reads; a provider ignores what its API lacks."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=16000, ge=1, description="Most tokens in one reply (thinking included).")
    thinking_budget: int | None = Field(default=None, ge=1024, description="Extended-thinking tokens (anthropic).")
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = Field(default=None, description="Reasoning effort.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    retries: int = Field(default=6, ge=0, le=20, description="Retries on 408/409/429/5xx/overloaded and connection errors.")
    timeout_s: float = Field(default=900.0, gt=0, description="Per request.")
    seed: int | None = Field(default=None, description="Sent where the API accepts one (openai).")


class ModelRequest(BaseModel):
    """One turn: a fixed system part (cached where the API can) and the varying user prompt."""

    role: Role
    system: str
    prompt: str
    tag: str = Field(default="", description="Where it comes from, e.g. 'iter_3_s1'; for logs and scripts.")


class ModelReply(BaseModel):
    text: str
    model: str
    stop_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    thinking: str | None = Field(default=None, description="Thinking text when the API returned it.")


@runtime_checkable
class Model(Protocol):
    """A text-in, text-out model. Raise ``ModelError`` when no reply can be had."""

    spec: str

    async def complete(self, request: ModelRequest) -> ModelReply: ...

    async def aclose(self) -> None: ...


def parse_spec(spec: str) -> tuple[str, str]:
    """(provider, rest) of ``spec``; a bare model name goes to anthropic.

    Raises:
        ValueError: the provider is unknown; the message lists the known ones.
    """
    provider, sep, rest = spec.partition(":")
    if not sep:
        return "anthropic", spec
    if provider not in REGISTRY:
        raise ValueError(f"unknown model provider {provider!r} in {spec!r}; known providers: {', '.join(sorted(REGISTRY))}, or {RULES!r}")
    if not rest:
        raise ValueError(f"model spec {spec!r} names no model: write {provider}:NAME")
    return provider, rest


def load_model(spec: str, role: Role, options: ModelOptions | None = None) -> Model:
    """The model for ``spec`` serving agent ``role`` (scripted models read that role's responses).

    Raises:
        ValueError: unknown provider or malformed spec.
    """
    provider, rest = parse_spec(spec)
    module_name, class_name = REGISTRY[provider].split(":")
    cls = getattr(import_module(module_name), class_name)
    return cls(rest, role=role, options=options or ModelOptions())


def slug(spec: str) -> str:
    """A folder name for ``spec``: 'anthropic:claude-x' -> 'anthropic-claude-x', 'scripted:a/b.json' -> 'scripted-b'."""
    provider, rest = (RULES, RULES) if spec == RULES else parse_spec(spec)
    if provider == "scripted":
        rest = rest.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".json")
    elif provider == "openai":
        rest = rest.split("@", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in rest).strip("-.") or "model"
    return f"{provider}-{cleaned}" if provider != RULES else RULES
