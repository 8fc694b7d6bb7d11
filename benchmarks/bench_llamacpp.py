"""The embedded model (llama.cpp): what prefix reuse buys, and what our layer costs.

1. The classify stage (stages/classify.py, its real few-shot prompt) over the same instructions with
   llm.prefix_cache=true and =false: requests/s and the ratio. Every classify prompt starts with the
   same demonstrations; with prefix reuse llama.cpp evaluates them once and then only each request's
   own tail. Target: >= 2x.
2. Decoding speed: tokens/s of raw llama.cpp greedy decoding (Llama.generate on an evaluated
   prompt), of our layer (LlamaCppLLM.complete) on the same prompt, and of the pipeline on
   instance-style requests (few-shot prompt evaluation included).

    python benchmarks/bench_llamacpp.py [--requests 16] [--decode-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import selfinstruct.config  # noqa: F401

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def instructions(n: int) -> list[dict]:
    from selfinstruct.llm.fake import fake_instruction

    rng = random.Random(0)
    return [{"id": f"machine_task_{i}", "instruction": fake_instruction(rng)} for i in range(n)]


def classify_stage(llm, records: list[dict], prefix_cache: bool) -> tuple[float, list[str]]:
    """Seconds for the classify stage over records in a fresh run dir; its raw answers."""
    from selfinstruct.files import write_jsonl_atomic
    from selfinstruct.pipeline import RunContext
    from selfinstruct.generation.classify import run_classify

    cfg = compose(["llm=llamacpp", f"llm.prefix_cache={str(prefix_cache).lower()}", "llm.cache=false",
                   "tracking=none"])
    llm.prefix_cache = prefix_cache
    llm.load().reset()  # no state carried over from the previous measurement
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        write_jsonl_atomic(run_dir / "instructions.jsonl", records)
        ctx = RunContext.open(cfg, run_dir, seeds=[])
        ctx._llm = llm
        started = time.perf_counter()
        run_classify(ctx)
        seconds = time.perf_counter() - started
        answers = [json.loads(line)["raw"] for line in open(run_dir / "classification.jsonl")]
    return seconds, answers


STORY = "Write a long story about a lighthouse keeper and the sea.\n\n"


def raw_decode(llama, tokens: int) -> float:
    """tokens/s of greedy decoding alone (the prompt is evaluated before the clock starts)."""
    prompt = llama.tokenize(STORY.encode())
    llama.reset()
    generated, started = 0, None
    for _ in llama.generate(prompt, temp=0.0, top_k=1, reset=True):
        if started is None:  # the first token comes after evaluating the prompt
            started = time.perf_counter()
        generated += 1
        if generated > tokens:
            break
    return (generated - 1) / (time.perf_counter() - started)


def layer_decode(llm, tokens: int) -> tuple[float, int]:
    """Completion tokens/s of LlamaCppLLM.complete on raw_decode's prompt (its tiny prompt
    evaluation included): what our layer adds to llama.cpp's decoding."""
    from selfinstruct.llm import Request, Sampling

    llm.prefix_cache = False
    before = llm.stage_usage("bench_layer").completion_tokens
    started = time.perf_counter()
    llm.complete([Request("bench/0", STORY)], Sampling(max_tokens=tokens), stage="bench_layer")
    seconds = time.perf_counter() - started
    generated = llm.stage_usage("bench_layer").completion_tokens - before
    return generated / seconds, generated


def pipeline_decode(llm, n: int) -> tuple[float, int, float]:
    """Completion tokens/s of LlamaCppLLM.complete on instance-style requests (prompt included)."""
    from selfinstruct.llm import Request, Sampling
    from selfinstruct.prompts.instances import build_prompt

    cfg = compose([])
    params = Sampling.from_config(cfg.sampling.instances)
    records = instructions(n)
    requests = [Request(f"instances/{r['id']}", build_prompt(r["instruction"], output_first=False, chat=False))
                for r in records]
    llm.prefix_cache = True
    before = llm.stage_usage("bench_decode").completion_tokens
    started = time.perf_counter()
    llm.complete(requests, params, stage="bench_decode")
    seconds = time.perf_counter() - started
    tokens = llm.stage_usage("bench_decode").completion_tokens - before
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="classify requests per measurement")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--instance-requests", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="llm.n_threads (default: all cores). On a busy machine 1 thread can beat "
                             "2: llama.cpp's threads wait for each other at every layer")
    args = parser.parse_args()

    from selfinstruct.llm import make_llm
    from selfinstruct.prompts.classify import build_prompt

    threads = [] if args.threads is None else [f"llm.n_threads={args.threads}"]
    cfg = compose(["llm=llamacpp", "llm.cache=false", "tracking=none", *threads])
    llm = make_llm(cfg)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"threads: {llm.n_threads or os.cpu_count()}")
    llama = llm.load()
    records = instructions(args.requests)
    prompt_tokens = len(llama.tokenize(build_prompt(records[0]["instruction"], chat=False).encode()))
    classify_stage(llm, records[:2], True)  # warm-up: pages the model in

    off, answers_off = classify_stage(llm, records, prefix_cache=False)
    on, answers_on = classify_stage(llm, records, prefix_cache=True)
    n = args.requests
    print(f"classify stage, {n} requests, prompt {prompt_tokens} tokens (embedded {llm.model}):")
    print(f"  prefix_cache=false  {off:6.2f} s  {n / off:6.2f} req/s")
    print(f"  prefix_cache=true   {on:6.2f} s  {n / on:6.2f} req/s")
    print(f"  speed-up: {off / on:.2f}x  (target >= 2x); same answers: {answers_on == answers_off}")

    raw = raw_decode(llama, args.decode_tokens)
    layer, layer_tokens = layer_decode(llm, args.decode_tokens)
    ours, tokens, seconds = pipeline_decode(llm, args.instance_requests)
    print("decoding:")
    print(f"  raw llama.cpp greedy decoding       {raw:6.1f} tokens/s")
    print(f"  our layer, same prompt              {layer:6.1f} tokens/s  ({layer_tokens} tokens)")
    print(f"  pipeline (instances requests)       {ours:6.1f} tokens/s  ({tokens} tokens in {seconds:.1f} s, "
          f"few-shot prompt evaluation included)")
    print(json.dumps({"classify_rps_off": n / off, "classify_rps_on": n / on, "speedup": off / on,
                      "same_answers": answers_on == answers_off, "raw_decode_tps": raw,
                      "layer_decode_tps": layer, "pipeline_tps": ours}))
    llm.close()


if __name__ == "__main__":
    main()
