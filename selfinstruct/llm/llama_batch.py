"""Batched decoding for the embedded model: many requests in one llama.cpp context at once.

Decoding several sequences in one step shares each pass over the weights: on 2 AVX2 cores a step
of 7 sequences of Gemma 3 270M takes about 4x one sequence's step (its 262K-token output layer
is most of the work), so about 2x the tokens/s. `LlamaEngine` serves requests from a thread of its own (continuous
batching): `submit` queues a job and returns at once; the thread keeps up to `n_parallel` jobs in
flight through llama-cpp-python's low-level API, and takes a queued job into a slot as soon as one
frees, whatever call it came from, so one long generation never holds a whole wave back. Each job
has a sequence slot with its own KV stream and its own sampler, seeded by the request; every step
is one `llama_decode` with the next token of each sequence. llama.cpp releases the GIL while it
decodes, so the stages parse and filter answers meanwhile.

Prompt reuse: a slot keeps the KV of its last prompt after its request ends. A new request goes to
the free slot whose cached prompt shares the longest prefix with its own (the few-shot
demonstrations), or, if a busy slot shares more, gets a copy of that slot's KV; either way only
the rest of its prompt is evaluated. So the demonstrations are evaluated about once per call per
prompt family (input-first and output-first instance prompts differ), and slots keep them
between calls.

An answer is a function of its request alone, not of what it is batched with or of which cache
it reused, to the last bit of the logits (tests/test_llamacpp.py checks this). That needs care,
because llama.cpp's CPU kernels round differently for different shapes. Measured on
llama-cpp-python 0.3.36 (benchmarks/bench_llamacpp.py, tests/test_llamacpp.py):
- repacked weights (`use_extra_bufts`, the default) compute one token differently from a batch of
  them, so we load the model without them (no slower here);
- a chunk of fewer than 8 prompt tokens of one sequence rounds differently from a longer chunk
  (all of which agree), so every prompt chunk has at least MIN_CHUNK tokens: a reused prefix
  leaves at least that many to evaluate, and long prompts are cut into chunks that respect it;
- each sequence has its own KV stream (`kv_unified=false`) of full size for the sliding-window
  layers too (`swa_full=true`), so its cells lie in position order whatever ran before and a
  cached prompt can be cut back safely;
- prompt tokens are evaluated in decode calls of their own, so llama.cpp never splits them
  differently because of the other sequences in the step.
- generated tokens are decoded one per sequence per step, at most MAX_STEP_ROWS = 7 of them in
  one decode call: a call of 8 rows takes another matrix kernel than one of 1-7 (measured: greedy
  100-token answers of 8 requests decoded together differed from their answers alone, those of
  batches of 2-7 never did), so llm.n_parallel is 7 by default and a larger one decodes a step in
  several calls. Prompt chunks are the other side of the same switch: always 8 tokens or more.

Sampling (`Sampler`) is done in numpy on the logits llama.cpp leaves: llama.cpp's own sampler
chain copies and sorts the whole 262K-token vocabulary of Gemma for every token (about 5 ms, as
long as a tenth of a batched decode step), where the nucleus needs only the few likely tokens.

A generation ends as the OpenAI API reports it: "stop" at an end-of-generation token or a stop
string (cut from the text), "length" at max_tokens. Two limits of our own: a generation looping a
phrase back to back (filters.repeated_ngram) ends early as "length", i.e. as it would have ended
after running to max_tokens, only sooner; one still running `timeout_s` after it started fails
("error"), so it is counted, never cached, and asked again by the next run.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import llama_cpp as lc
import numpy as np

from selfinstruct.filtering.rules import repeated_ngram
from selfinstruct.llm.base import Completion, Sampling

REPEAT_CHECK_EVERY = 16  # tokens between repetition checks (a check reads the whole completion)
MIN_CHUNK = 8  # prompt chunks of fewer tokens round differently (see the module doc)
WAVE_TAIL = 64  # prompt tails up to this long are evaluated together, one decode for several
MAX_STEP_ROWS = 7  # generated tokens per decode call: 8 rows take another kernel (module doc)


@dataclass
class Job:
    """One request for the engine: its prompt tokens, sampling, and limits."""
    tokens: list[int]
    params: Sampling
    seed: int
    max_tokens: int  # already capped to what the context leaves after the prompt
    timeout_s: Optional[float] = None
    share_prefix: bool = True  # False: evaluate the whole prompt (the prefix-cache ablation)
    on_early_stop: Callable[[str], None] = lambda reason: None  # "timeout" | "repetition"


class Pending:
    """A submitted job's completion to come, computed by the engine's thread."""

    __slots__ = ("job", "value", "cancelled", "_done")

    def __init__(self, job: Job):
        self.job, self.value, self.cancelled = job, None, False
        self._done = threading.Event()

    def resolve(self, completion: Completion) -> None:
        self.value = completion
        self._done.set()

    def result(self) -> Completion:
        self._done.wait()
        return self.value

    def done(self) -> bool:
        return self._done.is_set()

    def sent(self) -> bool:
        return False  # cancelling a local generation always saves its cost, even once it runs

    def cancel(self) -> None:
        self.cancelled = True  # the engine drops it from its queue or its slot at the next step


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _reusable(cached: list[int], tokens: list[int]) -> int:
    """How many cached prompt tokens a prompt can reuse: their common prefix, leaving at least
    MIN_CHUNK tokens to evaluate, and none if fewer than MIN_CHUNK are shared."""
    n = min(_common_prefix(cached, tokens), len(tokens) - MIN_CHUNK)
    return n if n >= MIN_CHUNK else 0


def _chunks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) in chunks of at most `size` and, if there are that many, at least MIN_CHUNK tokens."""
    out = []
    while start < end:
        n = min(size, end - start)
        if 0 < end - start - n < MIN_CHUNK:  # do not leave a short remainder
            n -= MIN_CHUNK
        out.append((start, start + n))
        start += n
    return out


class Sampler:
    """One sequence's sampling, with OpenAI's semantics: presence and frequency penalties on the raw
    logits by the counts of the tokens sampled so far (the whole completion), then greedy at
    temperature 0, else temperature, the nucleus (top_p) and a draw from a generator seeded by the
    request, so the answer is a function of the request."""

    # The nucleus is looked for among the tokens at least this likely relative to the likeliest
    # (a few dozen, usually); only if they hold less than top_p of the mass does the next tier
    # (and at last the whole vocabulary) get sorted. Exact either way.
    TIERS = (1e-3, 1e-7, 0.0)

    def __init__(self, params: Sampling, seed: int, n_vocab: int):
        self.temperature, self.top_p = params.temperature, params.top_p
        self.frequency, self.presence = params.frequency_penalty, params.presence_penalty
        penalised = bool(self.frequency or self.presence)
        self.penalty = np.zeros(n_vocab, np.float32) if penalised else None
        self.seen: set[int] = set()
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self, logits: np.ndarray) -> int:
        x = logits if self.penalty is None else logits - self.penalty
        if self.temperature <= 0:
            token = int(np.argmax(x))
        else:
            token = self._draw(x)
        if self.penalty is not None:
            self.penalty[token] += self.frequency + (0.0 if token in self.seen else self.presence)
            self.seen.add(token)
        return token

    def _draw(self, x: np.ndarray) -> int:
        weights = np.exp((x - x.max()) / self.temperature)  # the likeliest token weighs 1
        u = self.rng.random()
        if self.top_p >= 1.0:
            ids, cdf = None, np.cumsum(weights, dtype=np.float64)
        else:
            ids, cdf = nucleus(weights, self.top_p)
        i = int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))
        return i if ids is None else int(ids[i])


def nucleus(weights: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of likeliest tokens holding at least top_p of the mass (ties: lower id
    first), as (token ids, their cumulative weights). Sorts only the tokens of the first tier
    (Sampler.TIERS) that holds enough mass; the result is what sorting them all gives."""
    need = top_p * weights.sum(dtype=np.float64)
    for tier in Sampler.TIERS:
        candidates = np.flatnonzero(weights >= tier)
        if tier == 0.0 or weights[candidates].sum(dtype=np.float64) >= need:
            break
    order = candidates[np.argsort(-weights[candidates], kind="stable")]
    cdf = np.cumsum(weights[order], dtype=np.float64)
    keep = min(int(np.searchsorted(cdf, need, side="left")) + 1, len(cdf))  # up to crossing top_p
    return order[:keep], cdf[:keep]


class _Sequence:
    """A request in flight in slot `slot`."""

    def __init__(self, pending: Optional[Pending], job: Job, slot: int, n_vocab: int,
                 check_repetition: bool):
        self.pending, self.job, self.slot = pending, job, slot
        self.sampler = Sampler(job.params, job.seed, n_vocab)
        self.check_repetition = check_repetition
        self.pos = len(job.tokens)  # position of the next token fed to the model
        self.token = -1  # the last sampled token, fed in the next step
        self.row = -1  # batch row with this sequence's logits after the last decode
        self.out = bytearray()
        self.n_out = 0
        self.stops = [s.encode("utf-8") for s in job.params.stop if s]
        self.deadline = time.perf_counter() + job.timeout_s if job.timeout_s else math.inf

    def completion(self, finish_reason: str, error: Optional[str] = None,
                   cut: Optional[int] = None) -> Completion:
        text = bytes(self.out[:cut]).decode("utf-8", errors="ignore")
        return Completion(text, finish_reason, prompt_tokens=len(self.job.tokens),
                          completion_tokens=self.n_out, error=error)

    def accept(self, piece: bytes) -> Optional[tuple[Completion, Optional[str]]]:
        """Add a sampled token's text; (completion, early-stop reason or None) if this ends it."""
        start = max(0, len(self.out) - max((len(s) for s in self.stops), default=0) + 1)
        self.out += piece
        self.n_out += 1
        cuts = [i for i in (self.out.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            return self.completion("stop", cut=min(cuts)), None
        if self.n_out >= self.job.max_tokens:
            return self.completion("length"), None
        if (self.check_repetition and self.n_out % REPEAT_CHECK_EVERY == 0
                and repeated_ngram(self.out.decode("utf-8", errors="ignore"))):
            return self.completion("length"), "repetition"
        if time.perf_counter() > self.deadline:
            return self.completion("error", error=f"timeout: still generating after "
                                                  f"{self.job.timeout_s:g} s (llm.timeout_s), "
                                                  f"{self.n_out} tokens"), "timeout"
        return None


class LlamaEngine:
    """A GGUF model (and optional LoRA adapter) with a context for `n_parallel` sequences of up to
    `n_ctx` tokens each."""

    def __init__(self, model_path: str, *, n_parallel: int = 7, n_ctx: int = 4096, n_threads: int = 1,
                 n_threads_batch: int = 1, n_batch: int = 512, lora_path: Optional[str] = None,
                 lora_scale: float = 1.0, stop_on_repetition: bool = True):
        # llama.cpp logs every load to stderr; llama-cpp-python routes it through this logger.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.n_parallel, self.n_batch, self.n_threads = n_parallel, n_batch, n_threads
        self.stop_on_repetition = stop_on_repetition
        self.model = self.ctx = self.adapter = None
        if not Path(model_path).is_file():
            raise ValueError(f"no such file: {model_path}")
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = False  # repacked weights are not batch-invariant (module doc)
        self.model = lc.llama_model_load_from_file(os.fsencode(model_path), mparams)
        if not self.model:
            raise ValueError(f"llama.cpp cannot load {model_path} as a GGUF model")
        try:
            self.vocab = lc.llama_model_get_vocab(self.model)
            self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
            if lora_path:
                self.adapter = lc.llama_adapter_lora_init(self.model, os.fsencode(lora_path))
                if not self.adapter:
                    raise ValueError(f"llama.cpp cannot load {lora_path} as a GGUF LoRA adapter "
                                     "for this model")
            cparams = lc.llama_context_default_params()
            cparams.n_seq_max = n_parallel
            cparams.n_ctx = n_ctx * n_parallel  # one n_ctx-cell KV stream per sequence
            cparams.n_batch = cparams.n_ubatch = n_batch
            cparams.kv_unified = False
            cparams.swa_full = True
            cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cparams.n_threads, cparams.n_threads_batch = n_threads, n_threads_batch
            cparams.no_perf = True
            self.ctx = lc.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise ValueError(f"llama.cpp cannot create a context of {cparams.n_ctx} tokens "
                                 f"({n_parallel} sequences x n_ctx={n_ctx})")
            if self.adapter:
                adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self.adapter)
                if lc.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(lora_scale)):
                    raise ValueError(f"llama.cpp cannot apply the LoRA adapter {lora_path}")
        except BaseException:
            self.close()
            raise
        self.n_ctx_seq = lc.llama_n_ctx_seq(self.ctx)  # llama.cpp may round n_ctx
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.cached: list[list[int]] = [[] for _ in range(n_parallel)]  # per slot: its prompt's tokens
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._wake = threading.Condition()  # guards _waiting and _closing
        self._waiting: deque[Pending] = deque()
        self._closing = False
        self._thread: Optional[threading.Thread] = None

    # -- tokens and text -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        buf = (lc.llama_token * (len(data) + 8))()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_bos, special)
        if n < 0:  # a larger buffer: -n tokens
            buf = (lc.llama_token * -n)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_bos, special)
        return list(buf[:n])

    def token_text(self, token: int, special: bool = True) -> str:
        return self._piece(token, special).decode("utf-8", errors="replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        piece = self._pieces.get((token, special))
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:  # a longer piece: -n bytes
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[(token, special)] = buf.raw[:n]
        return piece

    def special_token_texts(self) -> tuple[str, str]:
        """The BOS and EOS tokens as text ("" if the model has none), for chat templates."""
        bos, eos = lc.llama_vocab_bos(self.vocab), lc.llama_vocab_eos(self.vocab)
        return (self.token_text(bos) if bos >= 0 else "", self.token_text(eos) if eos >= 0 else "")

    def chat_template(self) -> Optional[str]:
        """The GGUF's own chat template (tokenizer.chat_template), if it has one."""
        template = lc.llama_model_chat_template(self.model, None)
        return template.decode("utf-8") if template else None

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        lc.llama_set_n_threads(self.ctx, n_threads, n_threads_batch)
        self.n_threads = n_threads

    # -- the KV cache ------------------------------------------------------------------------------

    def _add(self, token: int, pos: int, slot: int, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = slot
        b.n_tokens = i + 1
        return i

    def _decode(self) -> None:
        rc = lc.llama_decode(self.ctx, self.batch)
        self.batch.n_tokens = 0
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _evaluate(self, tokens: list[int], start: int, slot: int) -> int:
        """Evaluate tokens[start:] at their positions in `slot`; the batch row of the last token's logits."""
        row = -1
        for a, b in _chunks(start, len(tokens), self.n_batch):
            for pos in range(a, b):
                row = self._add(tokens[pos], pos, slot, pos == len(tokens) - 1)
            self._decode()
        return row

    def reset(self) -> None:
        lc.llama_memory_clear(self.memory, True)
        self.cached = [[] for _ in range(self.n_parallel)]

    def _place(self, job: Job, free: set[int], reuse: bool) -> tuple[int, int]:
        """Take a free slot for the job, with the cached prompt that shares the most with its own
        (in place, or copied from a busy slot); the slot and how many of its tokens it holds."""
        tokens = job.tokens
        keep, donor = 0, None
        if reuse:
            for slot in sorted(range(self.n_parallel), key=lambda s: s not in free):  # free ones first
                n = _reusable(self.cached[slot], tokens)
                if n > keep:
                    keep, donor = n, slot
        if donor in free:
            slot = donor  # reuse it in place
        else:
            slot = min(free, key=lambda s: (len(self.cached[s]) > 0, s))  # an empty one if any
            if donor is not None:  # copy a busy slot's KV stream (llama.cpp copies whole streams)
                lc.llama_memory_seq_cp(self.memory, donor, slot, -1, -1)
        free.discard(slot)
        if not lc.llama_memory_seq_rm(self.memory, slot, keep, -1):
            lc.llama_memory_seq_rm(self.memory, slot, -1, -1)  # cannot cut it back: start afresh
            keep = 0
        # what its KV holds until its prompt is in: later jobs may copy that much from it
        self.cached[slot] = list(tokens[:keep])
        return slot, keep

    def _prefill(self, group: list[tuple["_Sequence", int]]) -> None:
        """Evaluate the rest of the prompts of newly placed sequences ((sequence, tokens it holds)).
        One goes alone, in chunks; several go in one decode with tails of equal length (each
        re-evaluates held tokens up to the longest tail), because llama.cpp cuts a batch of several
        sequences into equal per-sequence chunks, which must not be short (module doc)."""
        if len(group) == 1:
            s, keep = group[0]
            s.row = self._evaluate(s.job.tokens, keep, s.slot)
        else:
            tail = max(len(s.job.tokens) - keep for s, keep in group)
            for s, _ in sorted(group, key=lambda g: g[0].slot):
                tokens = s.job.tokens
                start = len(tokens) - tail
                lc.llama_memory_seq_rm(self.memory, s.slot, start, -1)
                for pos in range(start, len(tokens)):
                    s.row = self._add(tokens[pos], pos, s.slot, pos == len(tokens) - 1)
            self._decode()
        for s, _ in group:
            self.cached[s.slot] = list(s.job.tokens)

    # -- serving -----------------------------------------------------------------------------------

    def submit(self, job: Job) -> Pending:
        """Queue a job for the serving thread; its Pending gives the completion."""
        pending = Pending(job)
        with self._wake:
            if self.ctx is None:
                raise RuntimeError("the llama.cpp engine is closed")
            self._waiting.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="llama.cpp", daemon=True)
                self._thread.start()
            self._wake.notify()
        return pending

    def generate(self, jobs: list[Job]) -> list[Completion]:
        """Completions of jobs, in order (all queued at once)."""
        pending = [self.submit(job) for job in jobs]
        return [p.result() for p in pending]

    def _serve(self) -> None:
        """The serving thread: admit queued jobs into free slots, decode a step, sample, repeat."""
        active: dict[int, _Sequence] = {}  # by slot
        free = set(range(self.n_parallel))
        while True:
            with self._wake:
                while not (self._waiting or active or self._closing):
                    self._wake.wait()
                if self._closing:
                    break
                admit = []
                while self._waiting and len(admit) < len(free):
                    pending = self._waiting.popleft()
                    if not pending.cancelled:
                        admit.append(pending)
                    else:
                        pending.resolve(Completion("", "error", error="cancelled"))
                waiting = bool(self._waiting)
            try:
                self._admit(admit, active, free)
                for s in [s for s in active.values() if s.pending.cancelled]:
                    self._retire(s, s.completion("error", error="cancelled"), active, free)
                if not waiting:
                    self._compact(active, free)
                if active:
                    self._step(active, free)
            except Exception as e:  # a failed decode fails the requests in flight, not the run
                for s in list(active.values()):
                    s.pending.resolve(s.completion("error", error=f"{type(e).__name__}: {e}"))
                for pending in admit:
                    if not pending.done():
                        pending.resolve(Completion("", "error", error=f"{type(e).__name__}: {e}"))
                active.clear()
                free = set(range(self.n_parallel))
                self.reset()
        for s in active.values():
            s.pending.resolve(s.completion("error", error="the llama.cpp engine was closed"))

    def _admit(self, admit: list[Pending], active: dict[int, "_Sequence"], free: set[int]) -> None:
        """Place new jobs in free slots and evaluate their prompts; short prompt tails of several
        jobs go in one decode (a wave), long ones alone and at once (later jobs may copy them)."""
        wave: list[tuple[_Sequence, int]] = []

        def evaluate(group: list[tuple[_Sequence, int]]) -> None:
            self._prefill(group)
            for s, _ in group:
                self._sample(s, active, free)

        for pending in admit:
            job = pending.job
            slot, keep = self._place(job, free, job.share_prefix)
            s = active[slot] = _Sequence(pending, job, slot, self.n_vocab, self.stop_on_repetition)
            # a short prompt cannot lengthen its tail to the wave's: it goes alone too
            if len(job.tokens) - keep > WAVE_TAIL or len(job.tokens) < WAVE_TAIL:
                evaluate([(s, keep)])
                continue
            wave.append((s, keep))
            # (a wave's logits rows are a step's rows: at most MAX_STEP_ROWS of them)
            if (len(wave) + 1) * WAVE_TAIL > self.n_batch or len(wave) == MAX_STEP_ROWS:
                evaluate(wave)
                wave = []
        if wave:
            evaluate(wave)

    def _step(self, active: dict[int, "_Sequence"], free: set[int]) -> None:
        """The next token of every sequence in flight: one decode per MAX_STEP_ROWS sequences."""
        slots = sorted(active)
        for start in range(0, len(slots), MAX_STEP_ROWS):
            group = [active[slot] for slot in slots[start:start + MAX_STEP_ROWS]]
            for s in group:
                s.row = self._add(s.token, s.pos, s.slot, True)
                s.pos += 1
            self._decode()
            for s in group:
                self._sample(s, active, free)

    def _sample(self, s: _Sequence, active, free) -> None:
        """Sample the sequence's next token from its logits row; retire it if that ends it."""
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, s.row), shape=(self.n_vocab,))
        token = s.sampler.sample(logits)
        if lc.llama_vocab_is_eog(self.vocab, token):
            done = (s.completion("stop"), None)
        else:
            done = s.accept(self._piece(token))
        if done is None:
            s.token = token
            return
        completion, reason = done
        if reason:
            s.job.on_early_stop(reason)
        self._retire(s, completion, active, free)

    def _retire(self, s: _Sequence, completion: Completion, active, free) -> None:
        del active[s.slot]
        free.add(s.slot)  # its prompt stays cached for the next request
        s.pending.resolve(completion)

    def _compact(self, active: dict[int, _Sequence], free: set[int]) -> None:
        """llama.cpp puts only sequences with consecutive ids into one ubatch (one pass over the
        weights); once no request waits, move the highest active sequences into lower free slots."""
        while free and active and min(free) < max(active):
            lo, hi = min(free), max(active)
            lc.llama_memory_seq_cp(self.memory, hi, lo, -1, -1)  # the whole stream, as it is
            s = active.pop(hi)
            s.slot = lo
            active[lo] = s
            self.cached[lo] = list(self.cached[hi])
            free.discard(lo)
            free.add(hi)  # it keeps its copy of the prompt, still good for reuse

    def close(self) -> None:
        """Stop the serving thread (jobs still queued or in flight fail), then free llama.cpp."""
        thread = getattr(self, "_thread", None)
        if thread is not None:
            with self._wake:
                self._closing = True
                waiting, self._waiting = list(self._waiting), deque()
                self._wake.notify()
            thread.join()
            for pending in waiting:
                pending.resolve(Completion("", "error", error="the llama.cpp engine was closed"))
            self._thread = None
        if self.ctx:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
        if self.adapter:
            lc.llama_adapter_lora_free(self.adapter)
        if self.model:
            lc.llama_model_free(self.model)
        self.model = self.ctx = self.adapter = None
