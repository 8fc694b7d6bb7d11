"""Speed of the analyze stage's parts on a real dataset: the spaCy verb-noun parse (one process and
all cores), ROUGE-L to the nearest seed, and the whole analysis (what `stages=[analyze]` computes).

    python benchmarks/bench_analyze.py [--input PATH] [--limit N] [--size N]

Default input: the largest real run in ../shared/data/runs (10,021 GPT-4o instructions); --size
100000 cycles its instructions up to 100K (each copy made distinct by a trailing number, so it is
parsed again). Target: the whole analysis at >= 1,000 instructions/s on 2 idle cores. Wall-clock
rates depend on what else the machine runs, so the CPU-time rate of the one-process parse is
printed too, with spaCy's own matrix product (blis, what we used before) beside ours (numpy's).
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
TARGET = 1000.0


def timed(fn):
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - started, time.process_time() - cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(DEFAULT))
    parser.add_argument("--limit", type=int, default=None, help="analyse only the first N instructions")
    parser.add_argument("--size", type=int, default=None, help="cycle the instructions up to N")
    args = parser.parse_args()

    from thinc.api import NumpyOps

    from selfinstruct.analysis.analyze import analyze_dataset
    from selfinstruct.analysis.diversity import VerbNounParser, rouge_to_seeds
    from selfinstruct.datasets.formats import Dataset, load_dataset
    from selfinstruct.datasets.seeds import load_seeds
    from selfinstruct.filtering.rouge import RougeIndex

    dataset = load_dataset(args.input)
    unique = list(dict.fromkeys(r["instruction"] for r in dataset.records))[: args.limit]
    # copies beyond the file's own instructions get a trailing number, so each one is parsed again
    texts = [unique[i % len(unique)] + (f" {i // len(unique)}" if i >= len(unique) else "")
             for i in range(args.size or len(unique))]
    records = [{"instruction": t, "input": None, "output": None, "is_classification": None} for t in texts]
    seeds = [t.instruction for t in load_seeds()]
    cores = os.cpu_count() or 1
    print(f"input: {args.input} ({dataset.format}), {len(texts)} unique instructions, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    vn, load_s, _ = timed(VerbNounParser)
    print(f"spaCy model load:                {load_s:6.2f} s")
    sample = texts[:3000]  # the one-process comparison: enough for a stable rate
    layers = [layer for _, pipe in vn.nlp.pipeline if hasattr(pipe, "model") for layer in pipe.model.walk()]
    ours = layers[0].ops
    for name, ops in (("blis (before)", NumpyOps()), ("numpy (now)", ours)):
        for layer in layers:
            layer.ops = ops
        pairs, wall, cpu = timed(lambda: vn.pairs(sample, workers=1))
        print(f"verb-noun parse, 1 process, {name:13s} {len(sample) / wall:6.0f} instructions/s "
              f"({len(sample) / cpu:.0f} per CPU-second)")
        if name.startswith("blis"):
            before = pairs
    differ = sum(a != b for a, b in zip(pairs, before))
    print(f"  same pairs: {'yes' if pairs == before else 'NO'} ({differ} of {len(sample)} differ)")
    children = children_cpu()
    _, wall, _ = timed(lambda: vn.pairs(texts, workers=cores))
    share = (children_cpu() - children) / (wall * cores)
    # On a busy machine the workers get less than their cores; this shows how much they got.
    print(f"verb-noun parse, {cores} processes:    {len(texts) / wall:6.0f} instructions/s "
          f"(workers got {share:.0%} of {cores} cores)")
    index = RougeIndex(seeds)
    some = texts[:20000]
    _, wall, _ = timed(lambda: [index.scores(t).argmax() for t in some])
    print(f"ROUGE-L to {len(seeds)} seeds, one text a call (before): {len(some) / wall:6.0f} instructions/s")
    _, wall, _ = timed(lambda: rouge_to_seeds(texts, seeds))
    print(f"ROUGE-L to {len(seeds)} seeds, many-vs-many (now):       {len(texts) / wall:6.0f} instructions/s")
    children = children_cpu()
    _, wall, cpu = timed(lambda: analyze_dataset(Dataset(dataset.format, records, False), seeds, parser=vn))
    share = (cpu + children_cpu() - children) / (wall * cores)
    rate, idle = len(texts) / wall, len(texts) / wall / share  # idle: what all the cores would give
    print(f"whole analysis (model loaded):   {rate:6.0f} instructions/s ({wall:.1f} s; it got {share:.0%} of "
          f"{cores} cores, so about {idle:.0f}/s on idle ones)")
    print(f"target: whole analysis >= {TARGET:.0f}/s on idle cores: {'met' if idle >= TARGET else 'NOT met'} "
          f"({rate:.0f}/s measured{'' if share > 0.9 else f', about {idle:.0f}/s idle'})")


if __name__ == "__main__":
    main()
