"""``anthropic:MODEL``: the Messages API through the anthropic SDK.

The key and endpoint come from ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL (the SDK reads them). The
fixed system part carries ``cache_control`` so that repeated iterations pay for it once. Retries
are ours rather than the SDK's so that rate limits may wait as long as the server's retry-after
asks (capped), and so that the policy is one visible loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import anyio
import httpx2

from kfoundry.clients.providers import ModelError, ModelOptions, ModelReply, ModelRequest, Role
from kfoundry.clients.providers.retry import retry_delay, retryable_status

logger = logging.getLogger(__name__)

#: Above this many tokens the SDK refuses a non-streaming call (it could run past 10 minutes).
STREAM_ABOVE_TOKENS = 21_000


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, anthropic.APIConnectionError):
        return True
    return isinstance(exc, anthropic.APIStatusError) and retryable_status(exc.status_code)


class AnthropicModel:
    def __init__(
        self,
        name: str,
        role: Role,
        options: ModelOptions,
        client: anthropic.AsyncAnthropic | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.spec = f"anthropic:{name}"
        self.name = name
        self.role = role
        self.options = options
        self._sleep = sleep
        self._client = client or anthropic.AsyncAnthropic(max_retries=0, timeout=httpx2.Timeout(options.timeout_s, connect=10.0))

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        opts = self.options
        arguments: dict[str, Any] = {
            "model": self.name,
            "max_tokens": opts.max_tokens,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if opts.thinking_budget is not None:
            arguments["thinking"] = {"type": "enabled", "budget_tokens": min(opts.thinking_budget, opts.max_tokens - 1)}
        elif opts.temperature is not None:
            # The API accepts a temperature only without extended thinking.
            arguments["temperature"] = opts.temperature
        if opts.effort is not None:
            arguments["output_config"] = {"effort": opts.effort}
        return arguments

    async def _once(self, arguments: dict[str, Any]) -> Any:
        if arguments["max_tokens"] > STREAM_ABOVE_TOKENS:
            async with self._client.messages.stream(**arguments) as stream:
                return await stream.get_final_message()
        return await self._client.messages.create(**arguments, timeout=self.options.timeout_s)

    async def complete(self, request: ModelRequest) -> ModelReply:
        arguments = self._arguments(request)
        for attempt in range(self.options.retries + 1):
            try:
                message = await self._once(arguments)
                break
            except anthropic.AnthropicError as exc:
                if not _retryable(exc) or attempt == self.options.retries:
                    raise ModelError(f"{self.spec}: {type(exc).__name__}: {exc}") from exc
                response = getattr(exc, "response", None)
                delay = retry_delay(attempt, response.headers if response is not None else None)
                logger.warning("%s: %s; retry %d in %.1fs", self.spec, type(exc).__name__, attempt + 1, delay)
                await self._sleep(delay)
        text = "".join(block.text for block in message.content if block.type == "text")
        thinking = "".join(getattr(block, "thinking", "") for block in message.content if block.type == "thinking") or None
        usage = message.usage
        return ModelReply(
            text=text, model=message.model, stop_reason=message.stop_reason, thinking=thinking,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=getattr(usage, "cache_read_input_tokens", None),
        )

    async def aclose(self) -> None:
        await self._client.close()
