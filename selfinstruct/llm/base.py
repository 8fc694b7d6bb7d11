"""The one protocol every model backend implements: a batch of requests + sampling -> completions.

`LLM.complete` does what all backends share: response-cache look-ups, timing, and per-stage cost
accounting. A backend implements only `_generate` for the requests the cache did not answer.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional


@dataclass(frozen=True)
class Request:
    id: str  # stable across reruns, e.g. "instructions/17": the cache's sample index, the fake's seed
    prompt: str
    chat: bool = False  # send as one user message to a chat endpoint


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None

    @classmethod
    def from_config(cls, node: Any, seed: Optional[int] = None) -> "Sampling":
        return cls(temperature=float(node.temperature), top_p=float(node.top_p),
                   max_tokens=int(node.max_tokens), presence_penalty=float(node.presence_penalty),
                   frequency_penalty=float(node.frequency_penalty), stop=tuple(node.stop), seed=seed)


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

    def add(self, other: "Usage") -> "Usage":
        return Usage(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LLM(ABC):
    """Base of all backends. Subclasses set `name` and implement `_generate`."""

    model: str
    cache: Any = None  # a ResponseCache, or None
    usage: dict[str, Usage] = field(default_factory=dict)
    name: ClassVar[str] = "base"
    endpoint: str = "completions"

    def stage_usage(self, stage: str) -> Usage:
        return self.usage.setdefault(stage, Usage())

    def complete(self, requests: list[Request], params: Sampling, *, stage: str) -> list[Completion]:
        """Completions in request order. Failed requests come back with finish_reason "error"
        (they are counted, never raised), so callers can record and skip them."""
        started = time.perf_counter()
        usage = self.stage_usage(stage)
        results: list[Optional[Completion]] = [None] * len(requests)
        keys = [self._cache_key(r, params) for r in requests] if self.cache is not None else None
        if keys is not None:
            for i, hit in enumerate(self.cache.get_many(keys)):
                if hit is not None:
                    results[i] = hit
                    usage.cache_hits += 1
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            fresh = self._generate([requests[i] for i in todo], params, usage)
            for i, completion in zip(todo, fresh):
                results[i] = completion
                usage.requests += 1
                usage.prompt_tokens += completion.prompt_tokens
                usage.completion_tokens += completion.completion_tokens
                usage.errors += 0 if completion.ok else 1
            if keys is not None:
                self.cache.put_many([(keys[i], results[i]) for i in todo if results[i].ok])
        usage.seconds += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        return {"backend": self.name, "model": self.model,
                "endpoint": "chat" if request.chat else self.endpoint,
                "prompt": request.prompt, "sampling": asdict(params), "sample": request.id}

    @abstractmethod
    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        """Completions for requests the cache did not answer; add retries to usage.retries."""

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
