"""stats.json: the statistics of a run, computed from its files, written at the end of every run.

Keys are flat and namespaced (`data/...`, `diversity/...`, `quality/...`, `cost/<stage>/...`); the
fixed keys of DESIGN.md are always present where their inputs exist: instance counts and lengths
only for data that has instances, classification counts only where every task has a label. What
the files show is computed here; what a stage computed (prepare's instance-filter losses, the
analyze stage's verb-noun structure and ROUGE-L to seeds, finetune, evaluate) it saved with
RunDir.save_stats, and it is merged here while the files it was computed from are unchanged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from selfinstruct.datasets.formats import load_run_dir

log = logging.getLogger(__name__)

COST_KEYS = ("requests", "seconds", "prompt_tokens", "completion_tokens", "retries", "errors", "cache_hits",
             "timeouts", "repetition_stops")


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def words(text: str) -> int:
    return len(text.split())


def table1_stats(records: list[dict], has_instances: Optional[bool] = None) -> dict[str, Any]:
    """The paper's Table 1 counts and average lengths (whitespace words) over normalised records
    (instruction, input, output, is_classification; see formats.py). Instructions are counted once;
    an instruction-only record (output None) adds no instance. has_instances (default: whether any
    record has an output) says whether instance counts mean anything for this data."""
    tasks: dict[str, Optional[bool]] = {}
    for r in records:
        if tasks.get(r["instruction"]) is None:
            tasks[r["instruction"]] = r.get("is_classification")
    instances = [r for r in records if r.get("output") is not None]
    if has_instances is None:
        has_instances = bool(instances)
    stats: dict[str, Any] = {
        "data/num_instructions": len(tasks),
        "data/avg_instruction_words": _mean([words(i) for i in tasks]),
    }
    if tasks and None not in tasks.values():  # unlabelled data (e.g. Alpaca) has no such count
        num_clf = sum(tasks.values())
        stats["data/num_classification"] = num_clf
        stats["data/num_non_classification"] = len(tasks) - num_clf
    if has_instances:
        inputs = [r.get("input") or "" for r in instances]
        stats.update({
            "data/num_instances": len(instances),
            "data/num_instances_empty_input": sum(1 for i in inputs if not i.strip()),
            "data/avg_input_words": _mean([words(i) for i in inputs if i.strip()]),
            "data/avg_output_words": _mean([words(r.get("output") or "") for r in instances]),
            "quality/instances_per_instruction": len(instances) / len(tasks) if tasks else 0.0,
        })
    return stats


def generation_stats(run) -> dict[str, Any]:
    """Acceptance and rejections by rule, from instructions.jsonl and rejected.jsonl."""
    if not run.instructions.exists() and not run.rejected.exists():
        return {}  # no generation here (e.g. stages=[analyze] input=PATH)
    accepted, rejected = run.records(run.instructions), run.records(run.rejected)
    stats: dict[str, Any] = {"generation/num_accepted": len(accepted),
                             "generation/num_rejected": len(rejected)}
    # rejections of whole responses that held no candidate do not count against acceptance
    no_candidate = ("request_error", "parse_failure", "empty_response")
    candidates = len(accepted) + sum(1 for r in rejected if r.get("rule") not in no_candidate)
    if candidates:
        stats["quality/acceptance_rate"] = len(accepted) / candidates
    for rule, n in Counter(r.get("rule", "unknown") for r in rejected).items():
        stats[f"quality/rejected/{rule}"] = n
    failures = [r for r in rejected if r.get("rule") == "parse_failure"]
    stats["quality/parse_failures/instructions"] = len(failures)
    for reason, n in Counter(r.get("reason", "unknown") for r in failures).items():
        stats[f"quality/parse_failures/instructions/{reason}"] = n
    # candidates whose list item carried more than the task (a chat model's answer under it)
    stats["quality/answers_dropped"] = sum("dropped" in r for r in accepted + rejected)
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
    rouge = (ctx.checkpoint.get("instructions") or {}).get("state", {}).get("rouge_seconds")
    if rouge is not None:  # the novelty filter's share of the instructions stage
        stats["time/instructions/rouge_seconds"] = rouge
    return stats


def load_analysis(run_dir: Path) -> Optional[dict]:
    """analysis.json of the analyze stage (histograms, top verb-noun pairs, its statistics) for the
    notebooks and W&B, or None if absent or stale (the run's files changed since)."""
    from selfinstruct.rundir import RunDir

    run = RunDir(run_dir)
    if not run.analysis.exists():
        return None
    analysis = json.loads(run.analysis.read_text())
    files = analysis["source"].get("files")
    if files is not None and files != run.file_sizes(run.dataset_files):
        log.warning("%s describes older run files: its statistics are left out; rerun "
                    "stages=[analyze] to refresh them", run.analysis)
        return None
    return analysis


def write_stats(ctx) -> dict[str, Any]:
    """Compute what the run's files allow, merge the stages' saved statistics, write stats.json."""
    run = ctx.run
    stats: dict[str, Any] = {}
    dataset = load_run_dir(run.root)
    if dataset.records:
        stats.update(table1_stats(dataset.records, dataset.has_instances))
    stats.update(generation_stats(run))
    stats.update(run.saved_stats())
    parts = [stats[f"quality/parse_failures/{stage}"] for stage in ("instructions", "classify", "instances")
             if f"quality/parse_failures/{stage}" in stats]
    if parts:  # responses of any stage that the prompt style's parser could not read
        stats["quality/parse_failures"] = sum(parts)
    stats.update(cost_stats(ctx))
    run.replace_json(run.stats, dict(sorted(stats.items())), "run")
    return stats
