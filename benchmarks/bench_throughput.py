"""Throughput of our classify stage against a bare AsyncOpenAI client, side by side.

Both send the same classify prompts at concurrency 32 to a local OpenAI-compatible server
(tests/fake_openai_server.py, in its own process so it does not share our GIL) that answers each
request after a fixed latency. The stage is the real one (stages/classify.py: prompts, batching,
records appended and committed per batch); the bare client is the floor any wrapper pays: an
asyncio.Semaphore around `completions.create`, no retries, no files.

    python benchmarks/bench_throughput.py [--requests 640] [--latency 0.1] [--concurrency 32]

Target: our requests/s >= 0.9x the bare client's.
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


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai_server.py"),
                             "--latency", str(latency), "--max-seconds", "600"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def instructions(n: int) -> list[dict]:
    from selfinstruct.llm.fake import fake_instruction
    import random

    rng = random.Random(0)
    return [{"id": f"machine_task_{i}", "instruction": fake_instruction(rng)} for i in range(n)]


def run_stage(base_url: str, records: list[dict], concurrency: int) -> float:
    """Seconds for our classify stage over records, in a fresh run dir, cache off."""
    from hydra import compose, initialize_config_dir

    import selfinstruct.config  # noqa: F401
    from selfinstruct.files import write_jsonl_atomic
    from selfinstruct.llm import Request, Sampling
    from selfinstruct.pipeline import RunContext
    from selfinstruct.generation.classify import run_classify

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["llm=openai_compatible", f"llm.base_url={base_url}",
                                           "llm.model=bench", f"llm.concurrency={concurrency}",
                                           "llm.cache=false", "tracking=none"])
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


def run_bare(base_url: str, records: list[dict], concurrency: int) -> float:
    """Seconds for a bare AsyncOpenAI client sending the same prompts."""
    from openai import AsyncOpenAI

    from selfinstruct.prompts.classify import build_prompt

    prompts = [build_prompt(r["instruction"], chat=False) for r in records]

    async def go() -> float:
        client = AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> str:
            async with gate:
                response = await client.completions.create(model="bench", prompt=prompt, max_tokens=3,
                                                           temperature=0.0, stop=["\n", "Task:"])
                return response.choices[0].text

        await one(prompts[0])  # connect once, as the stage's warm-up does
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - started
        await client.close()
        assert len(answers) == len(prompts)
        return seconds

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    records = instructions(args.requests)
    proc, base_url = start_server(args.latency)
    try:
        bare, ours = [], []
        for _ in range(args.repeats):  # interleaved, so drift on the machine hits both alike
            bare.append(run_bare(base_url, records, args.concurrency))
            ours.append(run_stage(base_url, records, args.concurrency))
    finally:
        proc.kill()
    ideal = args.requests / args.concurrency * args.latency
    rows = [("bare AsyncOpenAI", min(bare)), ("selfinstruct classify stage", min(ours))]
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{args.requests} classify requests, concurrency {args.concurrency}, "
          f"server latency {args.latency * 1000:.0f} ms (ideal {args.requests / ideal:.0f} req/s)")
    for name, seconds in rows:
        print(f"  {name:30s} {seconds:6.2f} s  {args.requests / seconds:7.1f} req/s")
    ratio = min(bare) / min(ours)
    print(f"  ratio ours/bare: {ratio:.2f}x  (target >= 0.90x)")
    print(json.dumps({"bare_rps": args.requests / min(bare), "ours_rps": args.requests / min(ours),
                      "ratio": ratio}))


if __name__ == "__main__":
    main()
