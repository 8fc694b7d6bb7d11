"""stats.json: the statistics of a run, computed from its files, written at the end of every run.

Keys are flat and namespaced (`data/...`, `diversity/...`, `quality/...`, `cost/<stage>/...`); the
fixed keys of DESIGN.md are always present where their inputs exist. The analyze stage adds the
expensive statistics (spaCy verb-noun structure, ROUGE-L to seeds) to ctx-level results saved in
analysis.json, which are merged here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .io import read_jsonl, write_json_atomic

COST_KEYS = ("requests", "seconds", "prompt_tokens", "completion_tokens", "retries", "errors", "cache_hits")


def _records(path: Path) -> list[dict]:
    return read_jsonl(path, allow_torn_tail=True) if path.exists() else []


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def words(text: str) -> int:
    return len(text.split())


def table1_stats(data: list[dict]) -> dict[str, Any]:
    """The paper's Table 1 counts and average lengths over data records
    (instruction, input, output, is_classification)."""
    instructions: dict[str, bool] = {}
    for r in data:
        instructions.setdefault(r["instruction"], bool(r.get("is_classification", False)))
    num_clf = sum(instructions.values())
    inputs = [r.get("input", "") or "" for r in data]
    return {
        "data/num_instructions": len(instructions),
        "data/num_classification": num_clf,
        "data/num_non_classification": len(instructions) - num_clf,
        "data/num_instances": len(data),
        "data/num_instances_empty_input": sum(1 for i in inputs if not i.strip()),
        "data/avg_instruction_words": _mean([words(i) for i in instructions]),
        "data/avg_input_words": _mean([words(i) for i in inputs if i.strip()]),
        "data/avg_output_words": _mean([words(r.get("output", "") or "") for r in data]),
    }


def generation_stats(run_dir: Path) -> dict[str, Any]:
    """Acceptance and rejections by rule, from instructions.jsonl and rejected.jsonl."""
    accepted = _records(run_dir / "instructions.jsonl")
    rejected = _records(run_dir / "rejected.jsonl")
    stats: dict[str, Any] = {"generation/num_accepted": len(accepted),
                             "generation/num_rejected": len(rejected)}
    candidates = len(accepted) + sum(1 for r in rejected if r.get("rule") not in ("request_error", "parse_failure"))
    if candidates:
        stats["quality/acceptance_rate"] = len(accepted) / candidates
    for rule, n in Counter(r.get("rule", "unknown") for r in rejected).items():
        stats[f"quality/rejected/{rule}"] = n
    if accepted:
        stats["generation/max_rouge_mean"] = _mean([r.get("max_rouge", 0.0) for r in accepted])
    return stats


def cost_stats(ctx) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    total = {k: 0.0 for k in COST_KEYS}
    for stage, usage in ctx.usage_so_far().items():
        u = usage.as_dict()
        for key in COST_KEYS:
            stats[f"cost/{stage}/{key}"] = u[key]
            total[key] += u[key]
        if u["seconds"] > 0:
            stats[f"cost/{stage}/tokens_per_s"] = u["completion_tokens"] / u["seconds"]
    for key, value in total.items():
        stats[f"cost/total/{key}"] = value
    for stage, seconds in ctx.stage_seconds.items():
        stats[f"time/{stage}/seconds"] = seconds
    return stats


def write_stats(ctx) -> dict[str, Any]:
    """Compute what the run's files allow, merge the analyze stage's results, write stats.json."""
    run_dir = ctx.run_dir
    stats: dict[str, Any] = {}
    data_path = run_dir / "data.jsonl"
    if data_path.exists():
        stats.update(table1_stats(_records(data_path)))
    stats.update(generation_stats(run_dir))
    analysis = run_dir / "analysis.json"
    if analysis.exists():
        stats.update(json.loads(analysis.read_text()))
    stats.update(cost_stats(ctx))
    write_json_atomic(run_dir / "stats.json", dict(sorted(stats.items())))
    return stats
