"""A run at the paper's scale: 52,445 instructions, every stage, against a local OpenAI-compatible
server (tests/fake_openai_server.py in its own process) whose instruction lists are random phrases
of pseudo-words, so that almost every candidate is novel under ROUGE-L, as at the paper's scale.

    python benchmarks/bench_scale.py [--instructions 52445] [--latency 0.02] [--concurrency 64]

Prints the wall time of each stage, requests/s of the model stages, the peak RSS of the run, and
the ROUGE-L filter's share of the instructions stage (stats.json `time/instructions/rouge_seconds`).
Target: the whole run under 5 minutes on this machine (2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("instructions", "classify", "instances", "prepare", "analyze")


def main() -> None:
    from benchmarks.bench_throughput import start_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", type=int, default=52445)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repo", type=Path, default=REPO, help="another checkout's run.py (a before/after)")
    args = parser.parse_args()
    proc, base_url = start_server(["--latency", str(args.latency), "--answers", "novel",
                                   "--max-seconds", "3600"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, str(args.repo / "run.py"), "llm=openai_compatible", f"llm.base_url={base_url}",
                       "llm.model=bench", f"llm.concurrency={args.concurrency}", "llm.cache=false",
                       "tracking=none", f"num_instructions={args.instructions}", "analyze.plots=false",
                       f"hydra.run.dir={tmp}/run"]
            print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            started = time.perf_counter()
            done = subprocess.run(command, cwd=args.repo, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"the run failed:\n{done.stderr[-3000:]}")
            stats = json.loads((Path(tmp) / "run" / "stats.json").read_text())
    finally:
        proc.kill()
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{stats['data/num_instructions']} instructions, {stats.get('data/num_instances', 0)} instances; "
          f"server latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}")
    print(f"{'stage':14s} {'seconds':>8s} {'requests':>9s} {'req/s':>8s}")
    for stage in STAGES:
        seconds = stats.get(f"time/{stage}/seconds", 0.0)
        requests = stats.get(f"cost/{stage}/requests", 0)
        rate = f"{requests / seconds:8.1f}" if requests and seconds else f"{'':8s}"
        print(f"{stage:14s} {seconds:8.1f} {requests:9d} {rate}")
    rouge = stats.get("time/instructions/rouge_seconds")
    if rouge is not None:
        print(f"ROUGE-L filter: {rouge:.1f} s, {rouge / stats['time/instructions/seconds']:.0%} of the instructions stage")
    print(f"whole run: {wall:.1f} s (target < 300 s); peak RSS {peak_mb:.0f} MB")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_mb,
                      **{f"{s}_s": stats.get(f"time/{s}/seconds") for s in STAGES}}))


if __name__ == "__main__":
    main()
