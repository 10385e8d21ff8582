"""``openai:MODEL[@BASE_URL]``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, Ollama, ...).

Plain httpx2, no openai package. The base URL comes from the spec, else OPENAI_BASE_URL, else a
local vLLM's default; OPENAI_API_KEY is sent as a bearer token when set (local servers need none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2

from kfoundry.clients.providers import ModelError, ModelOptions, ModelReply, ModelRequest, Role
from kfoundry.clients.providers.retry import retry_delay, retryable_status

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


class OpenAICompatibleModel:
    def __init__(
        self,
        name: str,
        role: Role,
        options: ModelOptions,
        client: httpx2.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        model, _, base = name.partition("@")
        self.spec = f"openai:{name}"
        self.name = model
        self.role = role
        self.options = options
        self.base_url = (base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client or httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(options.timeout_s, connect=10.0))
        self._sleep = sleep

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        opts = self.options
        body: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
            "max_tokens": opts.max_tokens,
        }
        if opts.temperature is not None:
            body["temperature"] = opts.temperature
        if opts.seed is not None:
            body["seed"] = opts.seed
        if opts.effort is not None:
            body["reasoning_effort"] = opts.effort
        return body

    async def complete(self, request: ModelRequest) -> ModelReply:
        url = f"{self.base_url}/chat/completions"
        body = self._body(request)
        for attempt in range(self.options.retries + 1):
            try:
                response = await self._client.post(url, json=body)
            except httpx2.TransportError as exc:
                if attempt == self.options.retries:
                    raise ModelError(f"{self.spec}: cannot reach {url}: {exc}") from exc
                headers = None
            else:
                if response.status_code < 400:
                    return self._reply(response)
                if not retryable_status(response.status_code) or attempt == self.options.retries:
                    raise ModelError(f"{self.spec}: HTTP {response.status_code} from {url}: {response.text[:500]}")
                headers = response.headers
            delay = retry_delay(attempt, headers)
            logger.warning("%s: retry %d in %.1fs", self.spec, attempt + 1, delay)
            await self._sleep(delay)
        raise ModelError(f"{self.spec}: no reply")  # unreachable: the last attempt returns or raises

    def _reply(self, response: httpx2.Response) -> ModelReply:
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"{self.spec}: malformed chat completion: {response.text[:300]}") from exc
        usage = data.get("usage") or {}
        return ModelReply(
            text=message.get("content") or "", model=data.get("model", self.name), stop_reason=choice.get("finish_reason"),
            thinking=message.get("reasoning_content"), input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
