"""Benchmark of the ROUGE-L novelty filter (selfinstruct.rouge) against rouge-score.

    python benchmarks/bench_rouge.py            # full: ~20K real candidates, 100K synthetic (minutes)
    python benchmarks/bench_rouge.py --quick    # small version, under a minute

Jobs, each timed in a fresh child process (so start-up and peak RSS are the job's own):

1. Real: the instructions of every run under ../shared/data/runs (~17K unique) plus edited near
   duplicates (1-3 words changed, F near 0.7) to ~20K candidates, shuffled with a fixed seed,
   filtered at 0.7 against the 175 original seed tasks, top 10 kept. Compared with rouge-score:
   its pairs/s on a sample, and the decisions, max scores and top-10 of the paper's loop run with
   rouge-score itself on a prefix of the candidates (the whole job would take it hours).
2. Synthetic: 100K instruction-like word sequences (Zipf-distributed words, real length
   distribution clipped to 5-40 tokens, 10% edited copies of earlier ones), same filter; time and
   peak RSS.
3. The bit-parallel limit: rapidfuzz's raw LCS throughput (cdist, no pruning, no F) on the same
   data, and the time the naive pair count would take at that rate.

"Effective pairs/s" counts the pairs the naive algorithm compares (each candidate against the
whole pool at that moment), divided by our wall time including start-up. The reference rates
(rouge-score, raw cdist) are best of 3, our times a single run: on a shared machine this errs
against us.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD, TOP_K = 0.7, 10

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from tests.helpers import (ORIGINAL_SEEDS, SHARED_DATA, original_seed_instructions,  # noqa: E402
                           real_instructions)


# -- data ---------------------------------------------------------------------------------------


EDIT_WORDS = ["new", "short", "given", "following", "list", "simple", "please", "also", "then",
              "three", "best", "each", "your", "this", "some"]


def near_duplicates(rng: random.Random, texts: list[str], count: int) -> list[str]:
    """Copies with 1-3 words substituted / inserted / deleted, kept when 0.6 <= F <= 0.8."""
    from selfinstruct.filtering.rouge import rouge_l_f, tokenize

    pool = [t for t in texts if 5 <= len(tokenize(t)) <= 20]
    out = []
    while len(out) < count:
        src = rng.choice(pool)
        words = src.split()
        for _ in range(rng.randint(1, 3)):
            op, i = rng.choice("sid"), rng.randrange(len(words))
            if op == "s":
                words[i] = rng.choice(EDIT_WORDS)
            elif op == "i":
                words.insert(i, rng.choice(EDIT_WORDS))
            elif len(words) > 3:
                del words[i]
        edited = " ".join(words)
        if 0.6 <= rouge_l_f(src, edited) <= 0.8:
            out.append(edited)
    return out


def synthetic_instructions(n: int, real: list[str], seed: int = 0) -> list[str]:
    """Instruction-like word sequences: Zipf(1.0) over the real vocabulary (by frequency) extended
    to 60K words, lengths drawn from the real instructions' token counts clipped to 5-40; 10% are
    copies of an earlier sequence with 1-3 words replaced."""
    from collections import Counter

    from selfinstruct.filtering.rouge import tokenize

    rng = np.random.default_rng(seed)
    toks = [tokenize(t) for t in real]
    vocab = [w for w, _ in Counter(w for ts in toks for w in ts).most_common()]
    vocab += [f"syn{i}" for i in range(60_000 - len(vocab))]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    lengths = np.clip(rng.choice([len(ts) for ts in toks], size=n), 5, 40)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    out, pos = [], 0
    for L in lengths.tolist():
        out.append(" ".join(vocab[w] for w in words[pos:pos + L]))
        pos += L
    # Random word sequences are never near each other; make 10% edited copies of earlier ones
    # so that the filter also rejects (as it does on real data).
    prng = random.Random(seed)
    fresh = iter(rng.choice(len(vocab), size=3 * (n // 10), p=p).tolist())
    for i in prng.sample(range(1, n), n // 10):
        words = out[prng.randrange(i)].split()
        for _ in range(prng.randint(1, 3)):
            words[prng.randrange(len(words))] = vocab[next(fresh)]
        out[i] = " ".join(words)
    return out


# -- jobs (run in child processes) ----------------------------------------------------------------


def rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set of this process, in MB. VmHWM rather than
    ru_maxrss: Linux carries ru_maxrss over exec, so a spawned child would report its parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job_filter(seeds: list[str], candidates: list[str], workers: int, tokenizer: str = "rouge_score") -> dict:
    """Import, build the index on the seeds, filter everything; report time and memory."""
    rss0 = rss_mb()
    t0 = time.perf_counter()
    from selfinstruct.filtering.rouge import RougeIndex  # start-up is part of the measured time

    index = RougeIndex(seeds, workers=workers, tokenizer=tokenizer)
    t1 = time.perf_counter()
    decisions = index.filter(candidates, THRESHOLD, TOP_K)
    t2 = time.perf_counter()
    pool, pairs = len(seeds), 0
    for d in decisions:
        pairs += pool
        pool += d.accepted
    return {
        "startup_s": t1 - t0, "filter_s": t2 - t1, "total_s": t2 - t0, "naive_pairs": pairs,
        "accepted": sum(d.accepted for d in decisions), "rss_before_mb": rss0,
        "peak_rss_mb": rss_mb("VmHWM"),
        "decisions": [(d.accepted, d.max_score, list(d.most_similar.items())) for d in decisions],
    }


def job_raw_cdist(seeds: list[str], candidates: list[str], workers: int, nq: int, nc: int) -> dict:
    """rapidfuzz's LCS alone, in big many-vs-many calls: the bit-parallel limit."""
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    from selfinstruct.filtering.rouge import RougeIndex

    index = RougeIndex(workers=workers)
    enc = [index._encode(t) for t in seeds + candidates]  # the filter's own encoding
    rng = random.Random(0)
    queries, choices = rng.sample(enc, min(nq, len(enc))), rng.sample(enc, min(nc, len(enc)))
    cdist(queries[:64], choices[:64], scorer=LCSseq.similarity, dtype=np.int32, workers=workers)
    dt = float("inf")
    for _ in range(3):  # best of 3: the machine may be shared
        t = time.perf_counter()
        m = cdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)
        dt = min(dt, time.perf_counter() - t)
    return {"pairs": m.size, "seconds": dt, "pairs_per_s": m.size / dt}


def as_cjk(text: str) -> str:
    """Each rouge-score token as one CJK ideograph (fixed by its CRC, so the same word maps to the
    same character), no spaces: how a Chinese text looks to the unicode tokenizer."""
    from selfinstruct.filtering.rouge import tokenize

    return "".join(chr(0x4E00 + zlib.crc32(t.encode()) % 20000) for t in tokenize(text))


def in_child(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# -- rouge-score reference ----------------------------------------------------------------------


def rouge_score_rate(texts: list[str], pairs: int) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(1)
    sample = [(rng.choice(texts), rng.choice(texts)) for _ in range(pairs)]
    best = float("inf")
    for part in (sample[0::3], sample[1::3], sample[2::3]):  # best of 3: the machine may be shared
        t = time.perf_counter()
        for target, prediction in part:
            scorer.score(target, prediction)
        best = min(best, (time.perf_counter() - t) / len(part))
    return 1.0 / best


def rouge_score_loop(seeds: list[str], candidates: list[str]) -> tuple[list, float]:
    """The paper's loop with RougeScorer.score(target=pool entry, prediction=candidate)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool, out = list(seeds), []
    t = time.perf_counter()
    for c in candidates:
        scores = [float(scorer.score(p, c)["rougeL"].fmeasure) for p in pool]
        best = max(scores, default=0.0)
        sims = {}
        for i in sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:TOP_K]:
            sims.setdefault(pool[i], scores[i])
        keep = not best > THRESHOLD
        out.append((keep, best, list(sims.items())))
        if keep:
            pool.append(c)
    return out, time.perf_counter() - t


def dedup_end_to_end(candidates: list[str], filtered: dict, ref: list, rs_rate: float) -> None:
    """`python run.py stages=[dedup] input=FILE` as a user runs it: the whole process, start-up
    included, against the original seeds; its decisions compared with the in-process filter on all
    candidates and with rouge-score's loop on the prefix it was run on."""
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "candidates.jsonl"
        data.write_text("".join(json.dumps({"instruction": c}) + "\n" for c in candidates))
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, str(repo / "run.py"), "stages=[dedup]", f"input={data}",
                        "seeds=file", f"seeds.path={ORIGINAL_SEEDS}",
                        "tracking=none", f"hydra.run.dir={run_dir}"], check=True, capture_output=True)
        wall = time.perf_counter() - started
        decisions = [None] * len(candidates)
        for name, keep in (("instructions.jsonl", True), ("rejected.jsonl", False)):
            for line in (run_dir / name).open():
                rec = json.loads(line)
                decisions[rec["source_index"]] = (keep, rec["max_rouge"])
    same = sum(d == (f[0], f[1]) for d, f in zip(decisions, filtered["decisions"]))
    same_ref = sum(d == (b[0], b[1]) for d, b in zip(decisions, ref))
    print(f"stages=[dedup] (whole process):     {wall:12.2f} s  -> {filtered['naive_pairs'] / rs_rate / wall:,.0f} x "
          f"rouge-score's ~{filtered['naive_pairs'] / rs_rate / 3600:.1f} h")
    print(f"  decisions + max scores identical to the in-process filter: {same:,} / {len(candidates):,}; "
          f"to rouge-score's loop on the prefix: {same_ref:,} / {len(ref):,}")


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small version (< 1 min)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rapidfuzz threads")
    args = ap.parse_args()
    quick = args.quick
    n_real_target = 3_000 if quick else 20_000
    n_prefix = 300 if quick else 2_000
    n_synth = 5_000 if quick else 100_000
    n_rs_pairs = 1_500 if quick else 6_000
    w = args.workers

    if not (SHARED_DATA / "runs").is_dir():
        sys.exit(f"data not found: {SHARED_DATA / 'runs'}")
    seeds, real = original_seed_instructions(), real_instructions()
    rng = random.Random(0)
    if quick:
        real = rng.sample(real, n_real_target * 5 // 6)
    candidates = real + near_duplicates(rng, real, max(0, n_real_target - len(real)))
    rng.shuffle(candidates)

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; workers={w}; "
          f"{'QUICK' if quick else 'FULL'} run")
    print(f"\n== Real instructions: {len(seeds)} seeds + {len(candidates):,} candidates "
          f"({len(real):,} unique real + {len(candidates) - len(real):,} near-duplicates), "
          f"threshold {THRESHOLD}, top {TOP_K}")

    rs_rate = rouge_score_rate(seeds + candidates, n_rs_pairs)
    print(f"rouge-score RougeScorer.score:      {rs_rate:12,.0f} pairs/s  (best of 3 x {n_rs_pairs // 3:,} "
          f"random pairs)")

    r = in_child(job_filter, seeds, candidates, w)
    ours = r["naive_pairs"] / r["total_s"]
    print(f"ours, RougeIndex.filter:            {ours:12,.0f} pairs/s  effective "
          f"({r['naive_pairs']:,} naive pairs in {r['total_s']:.2f} s = start-up {r['startup_s']:.2f} s "
          f"+ filter {r['filter_s']:.2f} s)")
    print(f"speed-up vs rouge-score:            {ours / rs_rate:12,.0f} x   (rouge-score would need "
          f"~{r['naive_pairs'] / rs_rate / 3600:.1f} h for this job)")
    print(f"accepted / rejected:                {r['accepted']:,} / {len(candidates) - r['accepted']:,}")
    print(f"peak RSS of the filter process:     {r['peak_rss_mb']:12,.0f} MB  "
          f"(RSS {r['rss_before_mb']:.0f} MB before import)")

    raw = in_child(job_raw_cdist, seeds, candidates, w, 2048, 16384)
    print(f"bit-parallel limit (raw cdist LCS): {raw['pairs_per_s']:12,.0f} pairs/s  (best of 3) -> the naive pair "
          f"count takes {r['naive_pairs'] / raw['pairs_per_s']:.2f} s at that rate; ours "
          f"{r['total_s']:.2f} s = {r['total_s'] / (r['naive_pairs'] / raw['pairs_per_s']):.2f}x of it")

    ref, ref_s = rouge_score_loop(seeds, candidates[:n_prefix])
    got = r["decisions"][:n_prefix]
    same_dec = sum(a[0] == b[0] for a, b in zip(got, ref))
    same_max = sum(a[1] == b[1] for a, b in zip(got, ref))
    same_top = sum(a[2] == b[2] for a, b in zip(got, ref))
    print(f"vs the paper's loop with rouge-score on the first {n_prefix:,} candidates "
          f"({ref_s:.0f} s for rouge-score):")
    print(f"  keep/reject decisions identical:  {same_dec:,} / {n_prefix:,} "
          f"({sum(not b[0] for b in ref)} rejections in the prefix)")
    print(f"  max scores bit-identical:         {same_max:,} / {n_prefix:,}")
    print(f"  top-{TOP_K} most_similar identical:   {same_top:,} / {n_prefix:,}")

    dedup_end_to_end(candidates, r, ref, rs_rate)

    print("\n== filters.tokenizer=unicode: the same candidates, and their words written as one CJK "
          "character each (so the same LCS structure, in a script rouge-score sees nothing of)")
    u = in_child(job_filter, seeds, candidates, w, "unicode")
    print(f"unicode tokenizer, real candidates: {u['naive_pairs'] / u['total_s']:12,.0f} pairs/s  effective "
          f"({u['total_s']:.2f} s; rouge_score tokenizer above: {r['total_s']:.2f} s)")
    c = in_child(job_filter, [as_cjk(t) for t in seeds], [as_cjk(t) for t in candidates], w, "unicode")
    print(f"unicode tokenizer, CJK candidates:  {c['naive_pairs'] / c['total_s']:12,.0f} pairs/s  effective "
          f"({c['total_s']:.2f} s; accepted {c['accepted']:,}, rouge_score tokenizer on the real ones "
          f"{r['accepted']:,})")

    print(f"\n== Synthetic: {len(seeds)} seeds + {n_synth:,} Zipf word sequences (5-40 tokens, "
          f"10% edited copies)")
    synth = synthetic_instructions(n_synth, real)
    s = in_child(job_filter, seeds, synth, w)
    s_rate = s["naive_pairs"] / s["total_s"]
    print(f"ours, RougeIndex.filter:            {s_rate:12,.0f} pairs/s  effective "
          f"({s['naive_pairs']:,} naive pairs in {s['total_s']:.1f} s)")
    print(f"speed-up vs rouge-score (rate above): {s_rate / rs_rate:10,.0f} x   (rouge-score would need "
          f"~{s['naive_pairs'] / rs_rate / 3600:.0f} h)")
    print(f"accepted / rejected:                {s['accepted']:,} / {n_synth - s['accepted']:,}")
    print(f"peak RSS of the filter process:     {s['peak_rss_mb']:12,.0f} MB  "
          f"(RSS {s['rss_before_mb']:.0f} MB before import; {len(synth):,} candidates held)")
    raw = in_child(job_raw_cdist, seeds, synth, w, 2048, 16384)
    print(f"bit-parallel limit (raw cdist LCS): {raw['pairs_per_s']:12,.0f} pairs/s  (best of 3) -> the naive pair "
          f"count takes {s['naive_pairs'] / raw['pairs_per_s']:.1f} s at that rate; ours "
          f"{s['total_s']:.1f} s = {s['total_s'] / (s['naive_pairs'] / raw['pairs_per_s']):.2f}x of it")


if __name__ == "__main__":
    main()
