"""Throughput of our stages against a bare AsyncOpenAI client, side by side.

Both send the same kind of prompts to a local OpenAI-compatible server (tests/fake_openai_server.py,
in its own process so it does not share our GIL). The stages are the real ones (prompts, the request
loop, filters, records appended and committed); the bare client is the floor any wrapper pays: an
asyncio.Semaphore around `completions.create` keeping `concurrency` requests in flight, no retries,
no files.

- classify, concurrency 32, every answer after 100 ms;
- instructions (the bootstrap loop with the ROUGE-L filter), concurrency 64, answer times that vary
  as a real server's do (lognormal, sigma 1, mean 200 ms) and novel instruction lists.

    python benchmarks/bench_throughput.py [--stage classify|instructions|both] [--repeats 2]

Targets: classify >= 0.9x the bare client's requests/s, instructions >= 0.8x (goal 0.9x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import compose, fake_instructions  # noqa: E402


def start_server(options: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai_server.py"),
                             *options, "--max-seconds", "1200"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def run_stage(base_url: str, records: list[dict], concurrency: int) -> float:
    """Seconds for our classify stage over records, in a fresh run dir, cache off."""
    from selfinstruct.files import write_jsonl_atomic
    from selfinstruct.llm import Request, Sampling
    from selfinstruct.pipeline import RunContext
    from selfinstruct.generation.classify import run_classify

    cfg = compose(["llm=openai_compatible", f"llm.base_url={base_url}", "llm.model=bench",
                   f"llm.concurrency={concurrency}", "llm.cache=false", "tracking=none"])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        write_jsonl_atomic(run_dir / "instructions.jsonl", records)
        ctx = RunContext.open(cfg, run_dir, seeds=[])
        # connect once, as the bare client does: imports and the first connection are not throughput
        ctx.llm.complete([Request("warmup/0", "Task: x")], Sampling(max_tokens=3), stage="warmup")
        started = time.perf_counter()
        run_classify(ctx)
        seconds = time.perf_counter() - started
        written = sum(1 for _ in open(run_dir / "classification.jsonl"))
        ctx.close()
    assert written == len(records), f"stage wrote {written} of {len(records)} records"
    return seconds


def run_instructions_stage(base_url: str, num_requests: int, concurrency: int) -> float:
    """Seconds per request of our instructions stage, asked for enough instructions to send about
    num_requests requests (novel answers give about 7 accepted instructions per request)."""
    import json as _json

    from selfinstruct.pipeline import run

    cfg = compose(["llm=openai_compatible", f"llm.base_url={base_url}", "llm.model=bench",
                   f"llm.concurrency={concurrency}", "llm.cache=false", "tracking=none",
                   "stages=[instructions]", f"num_instructions={num_requests * 7}"])
    with tempfile.TemporaryDirectory() as tmp:
        stats = run(cfg, tmp)
        stats = _json.loads((Path(tmp) / "stats.json").read_text())
    requests = stats["cost/instructions/requests"]
    return stats["cost/instructions/seconds"], requests


def instruction_prompts(n: int) -> list[str]:
    import random

    from selfinstruct.datasets.seeds import load_seeds
    from selfinstruct.prompts.instructions import build_prompt, sample_in_context

    seeds = [t.instruction for t in load_seeds()]
    rng = random.Random(0)
    return [build_prompt(sample_in_context(rng, seeds, [], 6, 2), chat=False, max_list_number=16)[0]
            for _ in range(n)]


def run_bare(base_url: str, prompts: list[str], concurrency: int, max_tokens: int, stop: list[str]) -> float:
    """Seconds for a bare AsyncOpenAI client sending the prompts with `concurrency` in flight."""
    from openai import AsyncOpenAI

    async def go() -> float:
        client = AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> str:
            async with gate:
                response = await client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens,
                                                           temperature=0.0, stop=stop)
                return response.choices[0].text

        await one(prompts[0])  # connect once, as the stage's warm-up does
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - started
        await client.close()
        assert len(answers) == len(prompts)
        return seconds

    return asyncio.run(go())


def compare(name: str, bare_rps: list[float], ours_rps: list[float], target: float, note: str) -> dict:
    bare, ours = max(bare_rps), max(ours_rps)
    print(f"{name}: {note}")
    print(f"  {'bare AsyncOpenAI':30s} {bare:7.1f} req/s")
    print(f"  {'selfinstruct ' + name + ' stage':30s} {ours:7.1f} req/s")
    print(f"  ratio ours/bare: {ours / bare:.2f}x  (target >= {target:.2f}x)")
    return {f"{name}_bare_rps": bare, f"{name}_ours_rps": ours, f"{name}_ratio": ours / bare}


def main() -> None:
    from selfinstruct.prompts.classify import build_prompt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["classify", "instructions", "both"], default="both")
    parser.add_argument("--requests", type=int, default=640, help="classify requests per measurement")
    parser.add_argument("--instruction-requests", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    result = {}
    if args.stage in ("classify", "both"):
        records = fake_instructions(args.requests)
        prompts = [build_prompt(r["instruction"], chat=False) for r in records]
        proc, base_url = start_server(["--latency", "0.1"])
        try:
            bare, ours = [], []
            for _ in range(args.repeats):  # interleaved, so drift on the machine hits both alike
                bare.append(args.requests / run_bare(base_url, prompts, 32, 3, ["\n", "Task:"]))
                ours.append(args.requests / run_stage(base_url, records, 32))
        finally:
            proc.kill()
        result.update(compare("classify", bare, ours, 0.9,
                              f"{args.requests} requests, concurrency 32, server latency 100 ms"))
    if args.stage in ("instructions", "both"):
        n = args.instruction_requests
        prompts = instruction_prompts(n)
        proc, base_url = start_server(["--latency", "0.2", "--sigma", "1", "--answers", "novel"])
        try:
            bare, ours = [], []
            for _ in range(args.repeats):
                bare.append(n / run_bare(base_url, prompts, 64, 1024, ["\n\n", "\n16", "16."]))
                seconds, sent = run_instructions_stage(base_url, n, 64)
                ours.append(sent / seconds)
        finally:
            proc.kill()
        result.update(compare("instructions", bare, ours, 0.8,
                              f"~{n} requests, concurrency 64, lognormal answer times (sigma 1, mean 200 ms)"))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
