"""OpenAI API and OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, TGI).

Up to `concurrency` requests are in flight at once (async client); the results come back in
request order, so a run is deterministic given the responses. The stages' loop submits a window
ahead of the result it waits for, so the server stays busy while a result is applied. Each request is retried
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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional

from selfinstruct.errors import RunError
from selfinstruct.llm.base import LLM, BackendConfig, Completion, Request, Sampling, Usage, check

log = logging.getLogger(__name__)


DEFAULT_BASE_URL = "https://api.openai.com/v1"
# With no answer from the server yet, connection failures for this long mean it is not there; until
# it has answered, retries come at most this far apart, so the run ends soon after that.
UNREACHABLE_AFTER_S = 20.0
UNANSWERED_MAX_BACKOFF_S = 2.0


class BackendUnreachable(RunError):
    """No connection to the server at all: the run stops (one line, non-zero exit)."""


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
class OpenAIConfig(BackendConfig):
    """llm=openai and llm=openai_compatible (vLLM, llama.cpp server, Ollama, TGI)."""

    base_url: Optional[str] = None  # openai: null (api.openai.com); openai_compatible: http://HOST:PORT/v1
    api_key: Optional[str] = None  # default: OPENAI_API_KEY; never written to any output
    endpoint: str = "completions"  # completions | chat
    requests_per_minute: Optional[float] = None
    tokens_per_minute: Optional[float] = None

    @staticmethod
    def check(c) -> None:
        from selfinstruct.secrets import api_key_of

        BackendConfig.check(c)
        check(c.endpoint in ("completions", "chat"), "llm.endpoint",
              f"must be completions or chat, got {c.endpoint!r}")
        if c.backend == "openai_compatible":
            check(bool(c.base_url), "llm.base_url", "llm=openai_compatible needs llm.base_url=http://HOST:PORT/v1")
        check(bool(c.model), "llm.model", "name the served model, e.g. llm.model=gpt-4o-mini")
        if c.backend == "openai" and not c.base_url:
            check(bool(api_key_of(c)), "llm.api_key", "llm=openai needs a key: set OPENAI_API_KEY or pass llm.api_key=...")
        for key in ("requests_per_minute", "tokens_per_minute"):
            value = c[key]
            check(value is None or value > 0, f"llm.{key}", f"must be > 0 or null, got {value}")


@dataclass
class OpenAILLM(LLM):
    name: ClassVar[str] = "openai"
    queues_ahead: ClassVar[bool] = True  # the semaphore in _one keeps `concurrency` in flight
    base_url: Optional[str] = None
    api_key: Optional[str] = field(default=None, repr=False)
    concurrency: int = OpenAIConfig.concurrency
    max_retries: int = OpenAIConfig.max_retries
    timeout_s: float = OpenAIConfig.timeout_s
    requests_per_minute: Optional[float] = None
    tokens_per_minute: Optional[float] = None
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    seed: int = 0
    _answered: bool = field(default=False, repr=False)  # has the server ever answered?
    _unreachable_since: Optional[float] = field(default=None, repr=False)
    _runner: Optional[_LoopThread] = field(default=None, repr=False)
    _state: Optional[tuple] = field(default=None, repr=False)  # (client, gate, limiter), made in the loop

    @classmethod
    def from_config(cls, c, cfg, cache) -> "OpenAILLM":
        """c: the backend's config node (cfg.llm, or another such as evaluate.judge_llm)."""
        from selfinstruct.secrets import api_key_of

        return cls(model=c.model, cache=cache, endpoint=c.endpoint, base_url=c.base_url,
                   api_key=api_key_of(c), concurrency=c.concurrency, max_retries=c.max_retries,
                   timeout_s=c.timeout_s, requests_per_minute=c.requests_per_minute,
                   tokens_per_minute=c.tokens_per_minute, seed=cfg.seed)

    def _submit(self, request: Request, params: Sampling, usage: Usage) -> concurrent.futures.Future:
        """Hand the request to the event loop at once; at most `concurrency` are in flight (the
        gate), the rest wait there, so a caller that submits ahead keeps the server busy."""
        if self._runner is None:
            self._runner = _LoopThread()
        sent: list = []  # non-empty once the request passed the gate: it costs, whatever comes next
        future = self._runner.submit(self._request(request, params, usage, sent))
        future.sent = lambda: bool(sent)
        return future

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        return [f.result() for f in [self._submit(r, params, usage) for r in requests]]

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        # Two servers may serve different models under one name: their answers must not mix.
        return {**super()._cache_key(request, params), "base_url": self.base_url or DEFAULT_BASE_URL}

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

    async def _request(self, request: Request, params: Sampling, usage: Usage, sent: list) -> Completion:
        client, gate, limiter = self._setup()
        return await self._one(client, gate, limiter, request, params, usage, sent)

    async def _one(self, client, gate, limiter, request: Request, params: Sampling, usage: Usage,
                   sent: Optional[list] = None):
        last_error = "unknown"
        hint: Optional[float] = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                usage.retries += 1
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random()  # jitter: retries of one burst do not arrive together
                delay = min(self.backoff_max_s, max(delay, hint or 0.0))
                if not self._answered:
                    delay = min(delay, UNANSWERED_MAX_BACKOFF_S)
                await asyncio.sleep(delay)
            await limiter.wait(len(request.prompt) // 4 + params.max_tokens)
            async with gate:
                if sent is not None:
                    sent.append(True)
                try:
                    completion = await self._call(client, request, params)
                    self._answered = True
                    return completion
                except Exception as e:  # noqa: BLE001 - classified by is_retryable
                    last_error = self._scrub(self._describe(e))[:500]
                    hint = retry_after_s(e)
                    self._check_reachable(e, last_error)
                    if not is_retryable(e):
                        break
        log.warning("request %s failed after %d attempt(s): %s", request.id, attempt + 1, last_error)
        return Completion("", "error", error=last_error)

    def _describe(self, error: BaseException) -> str:
        """An error text that names the server and the HTTP status, for logs and rejected.jsonl."""
        import openai

        url = self.base_url or DEFAULT_BASE_URL
        if isinstance(error, openai.APIStatusError):
            return f"HTTP {error.status_code} from {url}: {type(error).__name__}: {error}"
        return f"{type(error).__name__} at {url}: {error}"

    def _check_reachable(self, error: BaseException, text: str) -> None:
        """Connection refused or unknown host while the server has never answered: after
        UNREACHABLE_AFTER_S, give up the whole run instead of retrying every request. Timeouts
        count alike: a server that takes connections and never answers (hung) ends the run after
        its second round of timeouts instead of max_retries rounds."""
        import openai

        if self._answered or not isinstance(error, openai.APIConnectionError):
            return
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since >= UNREACHABLE_AFTER_S:
            url = self.base_url or DEFAULT_BASE_URL
            if isinstance(error, openai.APITimeoutError):  # it takes connections, answers nothing
                raise BackendUnreachable(
                    f"the model server at {url} has answered no request: each timed out after "
                    f"llm.timeout_s={self.timeout_s:g} s, for {now - self._unreachable_since:.0f} s. Is it "
                    "stuck or overloaded? (a model that needs longer to answer needs a larger llm.timeout_s)")
            raise BackendUnreachable(
                f"cannot reach the model server at {url} ({text.split(': ', 1)[-1]}) for "
                f"{now - self._unreachable_since:.0f} s: is it running, and is llm.base_url right?")

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
