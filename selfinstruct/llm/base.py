"""The one protocol every model backend implements: a batch of requests + sampling -> completions.

`LLM.submit` does what all backends share: the response-cache look-up and per-stage cost accounting
(on the returned `Ticket`); `LLM.complete` submits a list and waits for all. A backend implements
`_generate` for requests the cache did not answer, and `_submit` if it keeps requests in flight
itself (OpenAI). The stages drive all of this through one loop, selfinstruct/llm/loop.py.

`Sampling` is both the per-stage config schema (`sampling.<stage>.*`) and what backends receive;
`BackendConfig` holds the `llm.*` keys every backend has, and each backend extends it with its own
keys and checks beside its code.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from selfinstruct.errors import ConfigError


@dataclass(frozen=True)
class Request:
    id: str  # stable across reruns, e.g. "instructions/17": the cache's sample index, the fake's seed
    prompt: str
    chat: bool = False  # send as one user message to a chat endpoint


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, node: Any) -> "Sampling":
        return cls(temperature=float(node.temperature), top_p=float(node.top_p),
                   max_tokens=int(node.max_tokens), presence_penalty=float(node.presence_penalty),
                   frequency_penalty=float(node.frequency_penalty), stop=list(node.stop))

    @staticmethod
    def check(node: Any, key: str) -> None:
        """Value checks of a `sampling.<stage>` node; ConfigError names the key."""
        check(node.temperature >= 0, f"{key}.temperature", f"must be >= 0, got {node.temperature}")
        check(0 < node.top_p <= 1, f"{key}.top_p", f"must be in (0, 1], got {node.top_p}")
        check(node.max_tokens >= 1, f"{key}.max_tokens", f"must be >= 1, got {node.max_tokens}")
        check(-2 <= node.presence_penalty <= 2, f"{key}.presence_penalty",
              f"must be in [-2, 2], got {node.presence_penalty}")
        check(-2 <= node.frequency_penalty <= 2, f"{key}.frequency_penalty",
              f"must be in [-2, 2], got {node.frequency_penalty}")


def check(ok: bool, key: str, message: str) -> None:
    """The one form of a config value check: ConfigError naming the key."""
    if not ok:
        raise ConfigError(f"config key `{key}`: {message}")


@dataclass
class BackendConfig:
    """The `llm.*` keys every backend has. A backend's schema extends this one (conf/llm/NAME.yaml
    names it), and its `check` adds the checks of its own keys."""

    backend: str = MISSING
    model: str = ""
    concurrency: int = 8  # requests in flight (llama.cpp: sequences decoded together)
    # Instructions stage: requests submitted ahead of the response it applies next, which is also
    # the bootstrap lag (request k sees the pool after response k - window; see
    # generation/instructions.py). null: derived from concurrency (bootstrap_window there).
    window: Optional[int] = None
    max_retries: int = 6
    timeout_s: float = 120.0  # per request
    # Per-request response cache (SQLite), shared by the jobs of a sweep
    cache: bool = True
    cache_dir: Optional[str] = None  # default: $SELFINSTRUCT_CACHE or ~/.cache/selfinstruct

    @staticmethod
    def check(c: Any) -> None:
        check(c.concurrency >= 1, "llm.concurrency", f"must be >= 1, got {c.concurrency}")
        check(c.window is None or c.window >= 1, "llm.window", f"must be >= 1 or null, got {c.window}")
        check(c.max_retries >= 0, "llm.max_retries", f"must be >= 0, got {c.max_retries}")
        check(c.timeout_s > 0, "llm.timeout_s", f"must be > 0, got {c.timeout_s}")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    errors: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    timeouts: int = 0  # generations stopped at llm.timeout_s (llama.cpp; counted as errors too)
    repetition_stops: int = 0  # generations stopped early because they looped a phrase

    def add(self, other: "Usage") -> "Usage":
        return Usage(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return asdict(self)


class Ticket:
    """A submitted request's completion to come. `result()` waits for it (or, on backends that work
    in the caller's thread, generates every request submitted so far together) and does the
    accounting once: usage counts, and a successful fresh answer queued for the response cache."""

    __slots__ = ("llm", "request", "key", "usage", "pending", "completion")

    def __init__(self, llm: "LLM", request: Request, key: Optional[dict], usage: "Usage"):
        self.llm, self.request, self.key, self.usage = llm, request, key, usage
        self.pending: Any = None  # what the backend returned: anything with .result()
        self.completion: Optional[Completion] = None

    def result(self) -> Completion:
        if self.completion is None:
            c = self.completion = self.pending.result()
            u = self.usage
            u.requests += 1
            u.prompt_tokens += c.prompt_tokens
            u.completion_tokens += c.completion_tokens
            if c.ok:
                if self.key is not None:  # a failed request is asked again by the next run
                    self.llm._to_cache.append((self.key, c))
            else:
                u.errors += 1
        return self.completion

    def ready(self) -> bool:
        """Would result() return without waiting?"""
        return self.completion is not None or self.pending.done()

    def sent(self) -> bool:
        """Has the request reached the backend (so cancelling it would not save its cost)?"""
        sent = getattr(self.pending, "sent", None)
        return self.completion is not None or (sent() if sent is not None else self.pending.done())

    def cancel(self) -> None:
        cancel = getattr(self.pending, "cancel", None)
        if self.completion is None and cancel is not None:
            cancel()


class _Deferred:
    """The pending answer of a backend that generates in the caller's thread (llama.cpp, the fake):
    asking for one answer generates all requests queued so far in one `_generate` call, so they
    are decoded together (llama.cpp batches them) in an order fixed by the caller, not by timing."""

    __slots__ = ("llm", "value")

    def __init__(self, llm: "LLM"):
        self.llm, self.value = llm, None

    def result(self) -> Completion:
        if self.value is None:
            self.llm._drain()
        return self.value

    def done(self) -> bool:
        return self.value is not None

    def cancel(self) -> None:
        self.llm._queue.clear()


@dataclass
class LLM(ABC):
    """Base of all backends. Subclasses set `name`, implement `_generate` (and `_submit` if they
    keep requests in flight in threads of their own), and build themselves with `from_config`."""

    model: str
    cache: Any = None  # a ResponseCache, or None
    usage: dict[str, Usage] = field(default_factory=dict)
    name: ClassVar[str] = "base"
    # Does the backend hold submitted requests beyond `concurrency` back itself (a gate), so that
    # submitting ahead keeps a server busy? Backends that generate in the caller's thread do not.
    queues_ahead: ClassVar[bool] = False
    # Does it generate on this machine (a request it runs costs compute here, not a server's)?
    local: ClassVar[bool] = False
    endpoint: str = "completions"
    _queue: list = field(default_factory=list, repr=False)  # (request, params, usage, _Deferred)
    _to_cache: list = field(default_factory=list, repr=False)

    def stage_usage(self, stage: str) -> Usage:
        return self.usage.setdefault(stage, Usage())

    def submit(self, request: Request, params: Sampling, *, stage: str) -> Ticket:
        """Send a request (or answer it from the response cache); the ticket gives its completion.
        Failed requests come back with finish_reason "error" (counted, never raised), so callers
        can record and skip them."""
        usage = self.stage_usage(stage)
        key = self._cache_key(request, params) if self.cache is not None else None
        ticket = Ticket(self, request, key, usage)
        hit = self.cache.get(key) if key is not None else None
        if hit is not None:
            usage.cache_hits += 1
            ticket.completion = hit
        else:
            ticket.pending = self._submit(request, params, usage)
        return ticket

    def complete(self, requests: list[Request], params: Sampling, *, stage: str) -> list[Completion]:
        """Completions in request order (all requests submitted at once)."""
        started = time.perf_counter()
        tickets = [self.submit(r, params, stage=stage) for r in requests]
        out = [t.result() for t in tickets]
        self.flush_cache()
        self.stage_usage(stage).seconds += time.perf_counter() - started
        return out

    def flush_cache(self) -> None:
        """Store the fresh answers received so far (one transaction); callers do it before they
        commit records built on them."""
        if self._to_cache:
            self.cache.put_many(self._to_cache)
            self._to_cache = []

    def _submit(self, request: Request, params: Sampling, usage: Usage) -> Any:
        """By default: queue the request; it is generated with the others queued when any of
        their answers is asked for (see _Deferred)."""
        deferred = _Deferred(self)
        self._queue.append((request, params, usage, deferred))
        return deferred

    def _drain(self) -> None:
        queue, self._queue = self._queue, []
        start = 0
        while start < len(queue):  # runs of one sampling and stage go to _generate together
            _, params, usage, _ = queue[start]
            end = start
            while end < len(queue) and queue[end][1] is params and queue[end][2] is usage:
                end += 1
            run = queue[start:end]
            for (_, _, _, deferred), completion in zip(run, self._generate([r for r, *_ in run], params, usage)):
                deferred.value = completion
            start = end

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        # the run seed picks the sample (llama.cpp and fake use it)
        sampling = {**asdict(params), "seed": getattr(self, "seed", None)}
        return {"backend": self.name, "model": self.model,
                "endpoint": "chat" if request.chat else self.endpoint,
                "prompt": request.prompt, "sampling": sampling, "sample": request.id}

    @abstractmethod
    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        """Completions for requests the cache did not answer; add retries to usage.retries."""

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
