"""The embedded model (llama.cpp): batched decoding against the sequential path, side by side.

1. Batched vs sequential, per prompt kind (classify, instances, instructions: the stages' real
   prompts and the paper's sampling, max_tokens capped by the flags): completion tokens/s of
   LlamaCppLLM.complete (batched, llm.n_parallel sequences at once) and of the sequential path it
   replaced (llama-cpp-python's Llama.create_completion, one request after another, reusing the
   previous prompt's prefix), in the same process, same threads, alternately. Targets: >= 2.5x for
   classify and instances, >= 2x for instructions. Also the share of identical greedy answers.
2. The classify stage (stages/classify.py) with llm.prefix_cache=true and =false: what evaluating
   the few-shot prefix once buys (target >= 2x), and that the answers are the same.
3. --threads-sweep: batched instance generation with 1 and with all threads, on the machine as it
   is and with --load CPU-bound processes beside it (started and stopped here): the data behind the
   llm.n_threads default.

    python benchmarks/bench_llamacpp.py [--requests 16] [--threads N] [--threads-sweep --load 2]

Other work on the machine changes every absolute number; the load average is printed with each
measurement, and only the ratios of neighbouring measurements mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import compose, fake_instructions  # noqa: E402


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def workloads(cfg, n: int, max_tokens: dict) -> dict:
    """kind -> (requests, sampling): the stages' prompts with the paper's sampling."""
    from selfinstruct.llm import Request, Sampling
    from selfinstruct.prompts import classify, instances
    from selfinstruct.prompts.instructions import build_prompt, sample_in_context
    from selfinstruct.datasets.seeds import seeds_from_config
    from selfinstruct.generation.instructions import request_rng

    records = fake_instructions(n)
    seeds = [t.instruction for t in seeds_from_config(cfg.seeds)]
    p = cfg.prompt
    out = {
        "classify": [Request(f"classify/{r['id']}", classify.build_prompt(r["instruction"], chat=False))
                     for r in records],
        "instances": [Request(f"instances/{r['id']}", instances.build_prompt(
            r["instruction"], output_first=i % 3 == 0, chat=False)) for i, r in enumerate(records)],
        "instructions": [Request(f"instructions/{i}", build_prompt(sample_in_context(
            request_rng(cfg.seed, f"instructions/{i}"), seeds, [], p.num_human, p.num_machine),
            chat=False, max_list_number=p.max_list_number)[0]) for i in range(n)],
    }
    result = {}
    for kind, requests in out.items():
        params = Sampling.from_config(getattr(cfg.sampling, kind))
        if kind in max_tokens:
            params = replace(params, max_tokens=min(params.max_tokens, max_tokens[kind]))
        result[kind] = (requests, params)
    return result


def sequential_complete(llama, requests, params, run_seed: int) -> list:
    """The sequential path batched decoding replaced, as it was: one create_completion per request;
    llama-cpp-python evaluates only the tokens after the prefix shared with the previous prompt."""
    from selfinstruct.llm import Completion
    from selfinstruct.llm.llamacpp import request_seed

    out = []
    for request in requests:
        response = llama.create_completion(
            request.prompt, max_tokens=params.max_tokens, temperature=params.temperature,
            top_p=params.top_p, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, stop=list(params.stop) or None,
            top_k=0, min_p=0.0, repeat_penalty=1.0, seed=request_seed(run_seed, request.id))
        choice, usage = response["choices"][0], response["usage"]
        out.append(Completion(choice["text"], choice.get("finish_reason") or "stop",
                              usage["prompt_tokens"], usage["completion_tokens"]))
    return out


def batched_vs_sequential(llm, llama, work: dict, rounds: int) -> dict:
    results = {}
    for kind, (requests, params) in work.items():
        seq_s = bat_s = 0.0
        for _ in range(rounds):  # alternately, so a change in load hits both
            before = load()
            started = time.perf_counter()
            seq = sequential_complete(llama, requests, params, llm.seed)
            seq_s += time.perf_counter() - started
            started = time.perf_counter()
            bat = llm.complete(requests, params, stage=f"bench_{kind}")
            bat_s += time.perf_counter() - started
        seq_tokens = sum(c.completion_tokens for c in seq) * rounds
        bat_tokens = sum(c.completion_tokens for c in bat) * rounds
        same = sum(a.text == b.text for a, b in zip(seq, bat)) / len(requests)
        ratio = (bat_tokens / bat_s) / (seq_tokens / seq_s)
        target = 2.0 if kind == "instructions" else 2.5
        print(f"  {kind:12s} {len(requests)} requests, max_tokens {params.max_tokens} ({before} before):")
        print(f"    sequential  {seq_tokens:6d} tokens {seq_s:7.1f} s {seq_tokens / seq_s:7.1f} tokens/s")
        print(f"    batched     {bat_tokens:6d} tokens {bat_s:7.1f} s {bat_tokens / bat_s:7.1f} tokens/s"
              f"   {ratio:.2f}x (target >= {target:g}x)"
              + (f"; same text as sequential: {same:.0%}" if params.temperature == 0 else ""))
        results[kind] = {"sequential_tps": seq_tokens / seq_s, "batched_tps": bat_tokens / bat_s,
                         "ratio": ratio, "same_text": same}
    return results


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


def prefix_cache(llm, n: int) -> dict:
    records = fake_instructions(n)
    classify_stage(llm, records[:2], True)  # warm-up: pages the model in
    before = load()
    off, answers_off = classify_stage(llm, records, prefix_cache=False)
    on, answers_on = classify_stage(llm, records, prefix_cache=True)
    llm.prefix_cache = True
    print(f"  classify stage, {n} requests ({before} before):")
    print(f"    prefix_cache=false  {off:6.2f} s  {n / off:6.2f} req/s")
    print(f"    prefix_cache=true   {on:6.2f} s  {n / on:6.2f} req/s")
    print(f"    speed-up: {off / on:.2f}x  (target >= 2x); same answers: {answers_on == answers_off}")
    return {"classify_rps_off": n / off, "classify_rps_on": n / on, "speedup": off / on,
            "same_answers": answers_on == answers_off}


def threads_sweep(cfg, work: dict, busy: int) -> dict:
    """Batched instance generation tokens/s per thread count, idle and beside `busy` CPU hogs."""
    from selfinstruct.llm import make_llm

    requests, params = work["instances"]
    cores = os.cpu_count() or 1
    counts = sorted({1, max(1, cores - 1), cores})
    llm = make_llm(cfg)
    llm.load()
    out = {}
    for label, hogs in (("as is", 0), (f"+{busy} busy processes", busy)):
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(2 if hogs else 0)
            for threads in counts:
                llm.load().set_threads(threads, threads)
                before, started = load(), time.perf_counter()
                done = llm.complete(requests, params, stage=f"bench_threads_{label}_{threads}")
                seconds = time.perf_counter() - started
                tps = sum(c.completion_tokens for c in done) / seconds
                out[f"{label}/{threads}"] = tps
                print(f"  {label:22s} threads={threads}: {tps:6.1f} tokens/s ({before}; uptime: "
                      f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    llm.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per prompt kind")
    parser.add_argument("--rounds", type=int, default=1, help="alternating repetitions")
    parser.add_argument("--instances-max-tokens", type=int, default=96)
    parser.add_argument("--instructions-max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None,
                        help="llm.n_threads (default: all cores but one)")
    parser.add_argument("--n-parallel", type=int, default=None, help="llm.n_parallel")
    parser.add_argument("--threads-sweep", action="store_true")
    parser.add_argument("--load", type=int, default=2, help="CPU-bound processes for --threads-sweep")
    parser.add_argument("--skip-compare", action="store_true", help="only the prefix cache (and sweep)")
    args = parser.parse_args()

    from llama_cpp import Llama

    from selfinstruct.llm import make_llm

    overrides = ["llm=llamacpp", "llm.cache=false", "tracking=none"]
    overrides += [f"llm.n_threads={args.threads}"] if args.threads else []
    overrides += [f"llm.n_parallel={args.n_parallel}"] if args.n_parallel else []
    cfg = compose(overrides)
    llm = make_llm(cfg)
    engine = llm.load()
    threads = engine.n_threads
    print(f"{load()} on {os.cpu_count()} cores; threads {threads}; n_parallel {llm.n_parallel}; "
          f"model {llm.model}")
    work = workloads(cfg, args.requests, {"instances": args.instances_max_tokens,
                                          "instructions": args.instructions_max_tokens})
    results = {}
    if not args.skip_compare:
        llama = Llama(model_path=llm.model_path, n_ctx=llm.n_ctx, n_threads=threads,
                      n_threads_batch=threads, seed=llm.seed, verbose=False)
        print("batched vs sequential (completion tokens/s):")
        results["compare"] = batched_vs_sequential(llm, llama, work, args.rounds)
        llama.close()
    print("prefix reuse:")
    results["prefix_cache"] = prefix_cache(llm, args.requests)
    llm.close()
    if args.threads_sweep:
        print("threads (batched instances):")
        results["threads"] = threads_sweep(cfg, work, args.load)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
