"""OpenAI API and OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, TGI).

Up to `concurrency` requests are in flight at once (async client); the results come back in
request order, so a run is deterministic given the responses. With `LLM.stream` the backend works a
window ahead of the caller, so per-item stages keep the server busy while they write a chunk. Each request is retried
with exponential backoff and jitter on rate limits, server errors, timeouts, connection errors and
unparseable bodies (the openai client's own retries are off: it does not retry bad bodies and does
not count what it retries); a request that still fails comes back as an error completion, never a
crash. Optional requests/min and tokens/min budgets hold requests back before they are sent.

The async client lives on an event loop in a private thread for the backend's whole life, so its
connections are reused between batches, and `complete` works from code that already runs an event
loop (Jupyter notebooks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections import deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional

from .base import LLM, Completion, Request, Sampling, Usage

log = logging.getLogger(__name__)


class BadResponse(Exception):
    """A 2xx answer whose body is not valid JSON or lacks the fields of a completion."""


class RateLimiter:
    """Requests/min and tokens/min budgets over a sliding one-minute window. Requests pass in
    arrival order (the lock is held while waiting), so none starves."""

    WINDOW_S = 60.0

    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float]):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.events: deque[tuple[float, int]] = deque()  # (send time, estimated tokens)
        self.tokens_in_window = 0
        self.lock = asyncio.Lock()

    async def wait(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.events and now - self.events[0][0] >= self.WINDOW_S:
                    self.tokens_in_window -= self.events.popleft()[1]
                requests_ok = not self.rpm or len(self.events) < self.rpm
                # A request larger than the whole budget still goes alone into an empty window.
                tokens_ok = (not self.tpm or not self.events
                             or self.tokens_in_window + tokens <= self.tpm)
                if requests_ok and tokens_ok:
                    self.events.append((now, tokens))
                    self.tokens_in_window += tokens
                    return
                await asyncio.sleep(max(0.01, self.WINDOW_S - (now - self.events[0][0])))


def is_retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, (BadResponse, openai.APIConnectionError, openai.APIResponseValidationError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False  # 400, 401, 403, 404, 422: asking again gives the same answer


def retry_after_s(error: BaseException) -> Optional[float]:
    """The server's Retry-After hint, in seconds, if it sent one."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


class _LoopThread:
    """An asyncio event loop running in a daemon thread; `run` blocks until a coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-backend", daemon=True)
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro) -> Any:
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


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
    _runner: Optional[_LoopThread] = field(default=None, repr=False)
    _state: Optional[tuple] = field(default=None, repr=False)  # (client, gate, limiter), made in the loop

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        return list(self._generate_iter(requests, params, usage, len(requests)))

    def _generate_iter(self, requests: list[Request], params: Sampling, usage: Usage,
                       chunk_size: int) -> Iterator[Completion]:
        """Results in request order while up to `concurrency` requests stay in flight: requests
        are handed to the event loop a window ahead of the one the caller waits for, so the
        server never idles while the caller writes a chunk (bounded, so a stopped caller leaves
        little work behind: the rest is cancelled)."""
        if self._runner is None:
            self._runner = _LoopThread()
        ahead = max(chunk_size, 2 * self.concurrency)
        pending = iter(requests)
        futures: deque = deque()

        def submit(n: int) -> None:
            for request in islice(pending, n):
                futures.append(self._runner.submit(self._request(request, params, usage)))

        submit(ahead)
        try:
            while futures:
                completion = futures.popleft().result()
                submit(1)
                yield completion
        finally:
            for future in futures:
                future.cancel()

    def _setup(self) -> tuple:
        """Client, concurrency gate and rate limiter, made once on the backend's loop."""
        if self._state is None:
            from openai import AsyncOpenAI

            for name in ("httpx", "httpx2"):  # one INFO line per HTTP request would flood run.log
                logging.getLogger(name).setLevel(logging.WARNING)
            # max_retries=0: our loop below retries (and counts) every kind of transient failure.
            client = AsyncOpenAI(api_key=self.api_key or "not-needed", base_url=self.base_url,
                                 timeout=self.timeout_s, max_retries=0)
            self._state = (client, asyncio.Semaphore(self.concurrency),
                           RateLimiter(self.requests_per_minute, self.tokens_per_minute))
        return self._state

    async def _request(self, request: Request, params: Sampling, usage: Usage) -> Completion:
        client, gate, limiter = self._setup()
        return await self._one(client, gate, limiter, request, params, usage)

    async def _one(self, client, gate, limiter, request: Request, params: Sampling, usage: Usage):
        last_error = "unknown"
        hint: Optional[float] = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                usage.retries += 1
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random()  # jitter: retries of one burst do not arrive together
                await asyncio.sleep(min(self.backoff_max_s, max(delay, hint or 0.0)))
            await limiter.wait(len(request.prompt) // 4 + params.max_tokens)
            async with gate:
                try:
                    return await self._call(client, request, params)
                except Exception as e:  # noqa: BLE001 - classified by is_retryable
                    last_error = self._scrub(f"{type(e).__name__}: {e}")[:500]
                    hint = retry_after_s(e)
                    if not is_retryable(e):
                        break
        log.warning("request %s failed after %d attempt(s): %s", request.id, attempt + 1, last_error)
        return Completion("", "error", error=last_error)

    def _scrub(self, message: str) -> str:
        """Error texts go into rejected.jsonl and logs; a server may quote the key in them."""
        return message.replace(self.api_key, "***") if self.api_key else message

    async def _call(self, client, request: Request, params: Sampling) -> Completion:
        common = dict(model=self.model, max_tokens=params.max_tokens, temperature=params.temperature,
                      top_p=params.top_p, presence_penalty=params.presence_penalty,
                      frequency_penalty=params.frequency_penalty, stop=list(params.stop)[:4] or None)
        chat = request.chat or self.endpoint == "chat"
        try:
            if chat:
                response = await client.chat.completions.create(
                    messages=[{"role": "user", "content": request.prompt}], **common)
                choice = response.choices[0]
                text = choice.message.content
            else:
                response = await client.completions.create(prompt=request.prompt, **common)
                choice = response.choices[0]
                text = choice.text
            finish = choice.finish_reason
            tokens = response.usage
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            # json.JSONDecodeError is a ValueError; a body without choices fails on attribute access.
            raise BadResponse(f"unparseable response body ({type(e).__name__}: {e})") from e
        if not isinstance(text, str):
            raise BadResponse("response has no text")
        return Completion(text, finish or "stop",
                          prompt_tokens=getattr(tokens, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(tokens, "completion_tokens", 0) or 0)

    def close(self) -> None:
        super().close()
        if self._runner is not None:
            if self._state is not None:
                try:
                    self._runner.run(self._state[0].close())
                except Exception:  # noqa: BLE001 - closing sockets of a dead server is no error
                    pass
            self._runner.close()
            self._runner, self._state = None, None
