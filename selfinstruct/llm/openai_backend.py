"""OpenAI API and OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, TGI).

A batch of requests is sent at once with up to `concurrency` in flight (async client); the results
come back in request order, so a run is deterministic given the responses. Each request is retried
with exponential backoff and jitter on rate limits, server errors, timeouts, connection errors and
unparseable bodies; a request that still fails comes back as an error completion, never a crash.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from .base import LLM, Completion, Request, Sampling, Usage


class RateLimiter:
    """Requests/min and tokens/min budgets, as a simple sliding one-minute window."""

    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float]):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.events: list[tuple[float, int]] = []
        self.lock = asyncio.Lock()

    async def wait(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.events = [(t, n) for t, n in self.events if now - t < 60]
                requests_ok = not self.rpm or len(self.events) < self.rpm
                tokens_ok = not self.tpm or sum(n for _, n in self.events) + tokens <= self.tpm or not self.events
                if requests_ok and tokens_ok:
                    self.events.append((now, tokens))
                    return
                await asyncio.sleep(max(0.05, 60 - (now - self.events[0][0])))


def is_retryable(error: Exception) -> bool:
    import openai

    if isinstance(error, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                          openai.InternalServerError, ValueError, KeyError, TypeError, IndexError)):
        return True  # ValueError & co.: a body that is not valid JSON or lacks fields
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


@dataclass
class OpenAILLM(LLM):
    name: ClassVar[str] = "openai"
    base_url: Optional[str] = None
    api_key: Optional[str] = field(default=None, repr=False)
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 120.0
    requests_per_minute: Optional[float] = None
    tokens_per_minute: Optional[float] = None
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    seed: int = 0

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # Our own retry loop counts retries and also covers bad bodies, so the client's is off.
        return AsyncOpenAI(api_key=self.api_key or "not-needed", base_url=self.base_url,
                           timeout=self.timeout_s, max_retries=0)

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        return asyncio.run(self._generate_async(requests, params, usage))

    async def _generate_async(self, requests, params, usage) -> list[Completion]:
        client = self._client()
        limiter = RateLimiter(self.requests_per_minute, self.tokens_per_minute)
        gate = asyncio.Semaphore(self.concurrency)
        try:
            return list(await asyncio.gather(
                *(self._one(client, gate, limiter, r, params, usage) for r in requests)))
        finally:
            await client.close()

    async def _one(self, client, gate, limiter, request: Request, params: Sampling, usage: Usage):
        last_error = "unknown"
        for attempt in range(self.max_retries + 1):
            if attempt:
                usage.retries += 1
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter spreads retry storms
            await limiter.wait(len(request.prompt) // 4 + params.max_tokens)
            async with gate:
                try:
                    return await self._call(client, request, params)
                except Exception as e:  # noqa: BLE001 - classified below
                    last_error = f"{type(e).__name__}: {e}"[:500]
                    if not is_retryable(e):
                        break
        return Completion("", "error", error=last_error)

    async def _call(self, client, request: Request, params: Sampling) -> Completion:
        common = dict(model=self.model, max_tokens=params.max_tokens, temperature=params.temperature,
                      top_p=params.top_p, presence_penalty=params.presence_penalty,
                      frequency_penalty=params.frequency_penalty, stop=list(params.stop)[:4] or None)
        if request.chat or self.endpoint == "chat":
            response = await client.chat.completions.create(
                messages=[{"role": "user", "content": request.prompt}], **common)
            choice = response.choices[0]
            text = choice.message.content
        else:
            response = await client.completions.create(prompt=request.prompt, **common)
            choice = response.choices[0]
            text = choice.text
        if text is None:
            raise ValueError("response has no text")
        usage = response.usage
        return Completion(text, choice.finish_reason or "stop",
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0)
