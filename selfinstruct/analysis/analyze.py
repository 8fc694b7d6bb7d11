"""The analyze stage: statistics of the run's own dataset, or of any dataset file with input=PATH
(formats.py detects its format; with stages=[dedup,analyze] the run's deduplicated instructions).

Computes the paper's Table 1 counts and lengths, the verb-noun structure (Figure 3), ROUGE-L of each
instruction to its nearest seed (Figure 4), length distributions (Figure 5), distinct-n, and with
analyze.judge=true the model judge (Table 2). Writes

    analysis.json                 {"source", "stats", "histograms", "verb_noun_top"}; its stats are
                                  merged into stats.json while it matches the run's files
    analysis_instructions.jsonl   one row per unique instruction: lengths, verb, noun, nearest seed
    judge.jsonl                   the judged samples and answers (analyze.judge=true)
    plots/*.png                   the figures (analyze.plots=true)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from selfinstruct.analysis.stats import table1_stats, words
from selfinstruct.datasets.formats import Dataset, load_dataset, load_run_dir
from selfinstruct.errors import DataError, RunError

log = logging.getLogger(__name__)


def analyze_dataset(dataset: Dataset, seed_texts: list[str], parser=None,
                    verb_noun: str = "ours") -> dict[str, Any]:
    """Everything the stage saves, computed from a normalised dataset (no model needed):
    {"stats", "histograms", "verb_noun_top", "rows"}. parser: a diversity.VerbNounParser to reuse;
    else one with the verb_noun rule (analyze.verb_noun)."""
    from selfinstruct.analysis.diversity import VerbNounParser, distinct_n, rouge_to_seeds, top_verb_nouns, verb_noun_stats

    records = dataset.records
    stats = table1_stats(records, dataset.has_instances)
    texts = list(dict.fromkeys(r["instruction"] for r in records))  # unique, in file order
    info: dict[str, dict] = {}
    for r in records:
        row = info.setdefault(r["instruction"], {"is_classification": None, "num_instances": 0})
        if row["is_classification"] is None:
            row["is_classification"] = r.get("is_classification")
        row["num_instances"] += r.get("output") is not None
        if "most_similar" in r:  # the generator's nearest pool neighbours: the 3 closest suffice
            row["most_similar"] = dict(sorted(r["most_similar"].items(), key=lambda kv: -kv[1])[:3])

    parser = parser or VerbNounParser(rule=verb_noun)
    started = time.perf_counter()
    pairs = parser.pairs(texts)
    seconds = time.perf_counter() - started
    log.info("analyze: parsed %d instructions in %.1f s (%.0f/s)", len(texts), seconds,
             len(texts) / seconds if seconds else 0.0)
    stats.update(verb_noun_stats(pairs))
    stats["diversity/distinct_1"] = distinct_n(texts, 1)
    stats["diversity/distinct_2"] = distinct_n(texts, 2)

    rouge, nearest = rouge_to_seeds(texts, seed_texts)
    if len(seed_texts) and texts:
        stats["diversity/rouge_to_seed_mean"] = float(rouge.mean())
        stats["diversity/rouge_to_seed_median"] = float(np.median(rouge))
        # A seed task repeated in the data (e.g. finetuning files that include the seeds).
        stats["diversity/num_seed_copies"] = int((rouge >= 1.0).sum())

    instances = [r for r in records if r.get("output") is not None]
    rows = []
    for text, (verb, noun), score, j in zip(texts, pairs, rouge, nearest):
        row = {"instruction": text, **info[text], "words": words(text), "verb": verb, "noun": noun,
               "rouge_to_seed": float(score), "nearest_seed": seed_texts[j] if j >= 0 else None}
        rows.append(row)
    return {
        "stats": stats,
        "histograms": {
            "instruction_words": [words(t) for t in texts],
            "input_words": [words(r["input"] or "") for r in instances if (r["input"] or "").strip()],
            "output_words": [words(r["output"] or "") for r in instances],
            "rouge_to_seed": [float(x) for x in rouge] if len(seed_texts) else [],
        },
        "verb_noun_top": [[v, c, [list(n) for n in nouns]] for v, c, nouns in top_verb_nouns(pairs)],
        "rows": rows,
    }


def _dataset(ctx) -> tuple[Optional[Dataset], dict]:
    run = ctx.run
    # With dedup in the same run, `input` is dedup's input: analyse what dedup kept instead.
    if ctx.cfg.input and "dedup" not in ctx.cfg.stages:
        if run.instructions.exists():
            raise RunError(f"{run.root} holds a generation run; analysing input={ctx.cfg.input} there would "
                           "replace its analysis: leave hydra.run.dir unset (a new run dir), or drop input= "
                           "to analyse the run itself")
        dataset = load_dataset(ctx.cfg.input)
        return dataset, {"input": str(Path(ctx.cfg.input).resolve()), "format": dataset.format}
    if not any(path.exists() for path in run.dataset_files):
        names = [path.name for path in run.dataset_files]
        raise DataError(f"{run.root}: nothing to analyse: none of {names} exists; run the "
                        "generation stages first, or analyse a dataset file with input=PATH")
    dataset = load_run_dir(run.root)
    return dataset, {"input": None, "format": dataset.format, "files": run.file_sizes(run.dataset_files)}


def run_analyze(ctx) -> None:
    cfg, run = ctx.cfg, ctx.run
    dataset, source = _dataset(ctx)
    if not dataset.records:
        log.warning("analyze: %s holds no instructions yet; nothing to analyse", run.root)
        return
    seed_texts = [t.instruction for t in ctx.seeds]
    source["num_seeds"] = len(seed_texts)
    result = analyze_dataset(dataset, seed_texts, verb_noun=cfg.analyze.verb_noun)
    if cfg.analyze.judge:
        from selfinstruct.analysis.judge import run_judge

        judge_stats, judged = run_judge(ctx, dataset.records)
        result["stats"].update(judge_stats)
        run.replace_jsonl(run.judge, judged, "analyze")
    rows = result.pop("rows")
    analysis = {"source": source, **result}
    run.replace_jsonl(run.analysis_rows, rows, "analyze")
    run.replace_json(run.analysis, analysis, "analyze", indent=None)
    inputs = run.dataset_files if source["input"] is None else []
    run.save_stats("analyze", result["stats"], inputs=inputs)
    s = result["stats"]
    log.info("analyze: %d instructions, verb-noun share %.3f, top-20x4 coverage %.3f, ROUGE-L to "
             "seed %.3f", s["data/num_instructions"], s["diversity/verb_noun_share"],
             s["diversity/top20x4_coverage"], s.get("diversity/rouge_to_seed_mean", float("nan")))
    if cfg.analyze.plots:
        from selfinstruct.analysis.plots import write_pngs

        write_pngs(analysis, run.plots, threshold=cfg.filters.rouge_threshold)
