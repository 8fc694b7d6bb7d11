"""The model layer: backends behind one protocol (base.LLM), each with its config schema beside its
code; `BACKENDS` is the one table from a backend name (`llm.backend`, the option of conf/llm/) to
its module, and `make_llm` builds the configured one with the response cache."""

from __future__ import annotations

from importlib import import_module

from selfinstruct.llm.base import LLM, BackendConfig, Completion, Request, Sampling, Usage
from selfinstruct.llm.cache import ResponseCache, cache_dir_for, default_cache_dir

__all__ = ["LLM", "BackendConfig", "Completion", "Request", "Sampling", "Usage", "BACKENDS", "make_llm",
           "backend_schema", "cache_dir_for", "default_cache_dir"]

# backend name -> (module, LLM class, config schema); modules import their heavy libraries lazily
BACKENDS: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("selfinstruct.llm.llamacpp", "LlamaCppLLM", "LlamaCppConfig"),
    "openai": ("selfinstruct.llm.openai_backend", "OpenAILLM", "OpenAIConfig"),
    "openai_compatible": ("selfinstruct.llm.openai_backend", "OpenAILLM", "OpenAIConfig"),
    "fake": ("selfinstruct.llm.fake", "FakeLLM", "FakeConfig"),
}


def _member(backend: str, which: int):
    module, *names = BACKENDS[backend]
    return getattr(import_module(module), names[which])


def backend_schema(backend: str) -> type[BackendConfig]:
    return _member(backend, 1)


def make_llm(cfg, node=None) -> LLM:
    """The backend an `llm` node names (default: cfg.llm; another such as evaluate.judge_llm), with
    the response cache when its `cache` is on."""
    node = cfg.llm if node is None else node
    cache = ResponseCache(cache_dir_for(node) / "responses.sqlite") if node.cache else None
    return _member(node.backend, 0).from_config(node, cfg, cache)
