"""Speed of the analyze stage's parts on a real dataset: the spaCy verb-noun parse (one process and
all cores), ROUGE-L to the nearest seed, and the whole analysis (what `stages=[analyze]` computes).

    python benchmarks/bench_analyze.py [--input PATH] [--limit N]

Default input: the largest real run in ../shared/data/runs (10,021 GPT-4o instructions). Target:
the verb-noun parse at >= 700 instructions/s. Wall-clock rates depend on what else the machine runs;
the CPU-time rate of the one-process parse is printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT = REPO.parent / "shared/data/runs/FedericoMansutti__Auto-Instruct/is_clf_or_not_gpt-4o_template_1.jsonl"
TARGET = 700.0


def timed(fn):
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(DEFAULT))
    parser.add_argument("--limit", type=int, default=None, help="analyse only the first N instructions")
    args = parser.parse_args()

    from selfinstruct.analysis.diversity import VerbNounParser, rouge_to_seeds
    from selfinstruct.datasets.formats import Dataset, load_dataset
    from selfinstruct.datasets.seeds import load_seeds
    from selfinstruct.analysis.analyze import analyze_dataset

    dataset = load_dataset(args.input)
    texts = list(dict.fromkeys(r["instruction"] for r in dataset.records))[: args.limit]
    records = [r for r in dataset.records if r["instruction"] in set(texts)]
    seeds = [t.instruction for t in load_seeds()]
    cores = os.cpu_count() or 1
    print(f"input: {args.input} ({dataset.format}), {len(texts)} unique instructions, {cores} cores")

    vn, load_s, _ = timed(VerbNounParser)
    print(f"spaCy model load:                {load_s:6.2f} s")
    _, wall, cpu = timed(lambda: vn.pairs(texts, workers=1))
    print(f"verb-noun parse, 1 process:      {len(texts) / wall:6.0f} instructions/s "
          f"({len(texts) / cpu:.0f} per CPU-second)")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, wall, _ = timed(lambda: vn.pairs(texts, workers=cores))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    rate = len(texts) / wall
    # On a busy machine the workers get less than their cores; this shows how much they got.
    print(f"verb-noun parse, {cores} processes:    {rate:6.0f} instructions/s "
          f"(workers got {worker_cpu / (wall * cores):.0%} of {cores} cores; load average "
          f"{os.getloadavg()[0]:.1f})")
    _, wall, _ = timed(lambda: rouge_to_seeds(texts, seeds))
    print(f"ROUGE-L to {len(seeds)} seeds:           {len(texts) / wall:6.0f} instructions/s")
    _, wall, _ = timed(lambda: analyze_dataset(Dataset(dataset.format, records, dataset.has_instances),
                                               seeds, parser=vn))
    print(f"whole analysis (model loaded):   {len(texts) / wall:6.0f} instructions/s ({wall:.1f} s)")
    print(f"target: verb-noun parse >= {TARGET:.0f}/s: {'met' if rate >= TARGET else 'NOT met'} ({rate:.0f}/s)")


if __name__ == "__main__":
    main()
