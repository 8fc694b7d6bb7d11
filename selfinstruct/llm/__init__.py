"""Model backends behind one protocol (see base.LLM); `make_llm` builds the configured one."""

from __future__ import annotations

from pathlib import Path

from .base import LLM, Completion, Request, Sampling, Usage
from .cache import ResponseCache, default_cache_dir

__all__ = ["LLM", "Completion", "Request", "Sampling", "Usage", "make_llm", "cache_dir_for"]


def cache_dir_for(llm_cfg) -> Path:
    return Path(llm_cfg.cache_dir) if llm_cfg.cache_dir else default_cache_dir()


def make_llm(cfg) -> LLM:
    """The backend named by cfg.llm.backend, with the response cache when cfg.llm.cache is on."""
    c = cfg.llm
    cache = ResponseCache(cache_dir_for(c) / "responses.sqlite") if c.cache else None
    if c.backend == "fake":
        from .fake import FakeLLM

        return FakeLLM(model=c.model, cache=cache, seed=cfg.seed, latency_s=c.latency_s,
                       fail_rate=c.fail_rate, max_retries=c.max_retries, concurrency=c.concurrency,
                       max_list_number=cfg.prompt.max_list_number)
    if c.backend == "llamacpp":
        from .llamacpp import LlamaCppLLM, packaged_model_path

        path = c.model_path or str(packaged_model_path(cache_dir_for(c)))
        return LlamaCppLLM(model=c.model, cache=cache, model_path=path, n_ctx=c.n_ctx,
                           n_threads=c.n_threads, n_threads_batch=c.n_threads_batch,
                           prefix_cache=c.prefix_cache, seed=cfg.seed, n_parallel=c.n_parallel,
                           timeout_s=c.timeout_s, chat_format=c.chat_format, lora_path=c.lora_path,
                           stop_on_repetition=c.stop_on_repetition)
    if c.backend in ("openai", "openai_compatible"):
        from ..config import resolve_api_key
        from .openai_backend import OpenAILLM

        return OpenAILLM(model=c.model, cache=cache, endpoint=c.endpoint, base_url=c.base_url,
                         api_key=resolve_api_key(cfg), concurrency=c.concurrency,
                         max_retries=c.max_retries, timeout_s=c.timeout_s,
                         requests_per_minute=c.requests_per_minute,
                         tokens_per_minute=c.tokens_per_minute, seed=cfg.seed)
    raise ValueError(f"config key `llm.backend`: unknown backend {c.backend!r}")
