"""The one protocol every model backend implements: a batch of requests + sampling -> completions.

`LLM.stream` (and `LLM.complete`, one chunk of it) does what all backends share: response-cache
look-ups, timing, and per-stage cost accounting. A backend implements only `_generate` for the
requests the cache did not answer (and `_generate_iter` if it can work ahead of the caller).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterator, Optional


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
        return [c for _, chunk in self.stream(requests, params, stage=stage, chunk_size=len(requests))
                for c in chunk]

    def stream(self, requests: list[Request], params: Sampling, *, stage: str,
               chunk_size: int) -> Iterator[tuple[list[Request], list[Completion]]]:
        """(requests, completions) chunk by chunk in request order, each chunk as soon as it is
        complete. A backend that keeps requests in flight (OpenAI) goes on working on the next
        chunks while the caller writes this one, so per-item stages lose no throughput at chunk
        boundaries; a caller that commits per chunk loses at most the chunks in flight if killed."""
        usage = self.stage_usage(stage)
        started = time.perf_counter()
        keys = [self._cache_key(r, params) for r in requests] if self.cache is not None else None
        hits = self.cache.get_many(keys) if keys is not None else [None] * len(requests)
        fresh = self._generate_iter([r for r, hit in zip(requests, hits) if hit is None], params, usage,
                                    chunk_size)
        try:
            for start in range(0, len(requests), max(1, chunk_size)):
                end = min(start + max(1, chunk_size), len(requests))
                results, to_cache = [], []
                for i in range(start, end):
                    completion = hits[i]
                    if completion is not None:
                        usage.cache_hits += 1
                    else:
                        completion = next(fresh)
                        usage.requests += 1
                        usage.prompt_tokens += completion.prompt_tokens
                        usage.completion_tokens += completion.completion_tokens
                        usage.errors += 0 if completion.ok else 1
                        if keys is not None and completion.ok:  # a failed request is asked again
                            to_cache.append((keys[i], completion))
                    results.append(completion)
                if to_cache:
                    self.cache.put_many(to_cache)  # before the caller writes records built on them
                usage.seconds += time.perf_counter() - started
                yield requests[start:end], results
                started = time.perf_counter()  # the caller's time is not the model's
        finally:
            fresh.close()

    def _generate_iter(self, requests: list[Request], params: Sampling, usage: Usage,
                       chunk_size: int) -> Iterator[Completion]:
        """Completions for requests the cache did not answer, in order; by default chunk by chunk
        through `_generate`. Backends with requests in flight override this to work ahead."""
        for start in range(0, len(requests), max(1, chunk_size)):
            yield from self._generate(requests[start:start + max(1, chunk_size)], params, usage)

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        sampling = asdict(params)
        if sampling["seed"] is None:  # the run seed picks the sample (llama.cpp and fake use it)
            sampling["seed"] = getattr(self, "seed", None)
        return {"backend": self.name, "model": self.model,
                "endpoint": "chat" if request.chat else self.endpoint,
                "prompt": request.prompt, "sampling": sampling, "sample": request.id}

    @abstractmethod
    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        """Completions for requests the cache did not answer; add retries to usage.retries."""

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
