"""The last lines of a run: where its outputs are, what they hold, and what they are worth."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("selfinstruct")

EMBEDDED_NOTE = (
    "note: the embedded model is Gemma 3 270M, a small base model: it exercises every stage, but it "
    "does not write research-grade data. For research data use a served model "
    "(python run.py llm=openai_compatible llm.base_url=http://HOST:8000/v1 llm.model=NAME, or "
    "llm=openai llm.model=gpt-4o-mini) or a larger local GGUF (llm.model_path=FILE.gguf, with "
    "prompt=selfinstruct_chat for a chat model)")


def summary_lines(ctx, stats: dict[str, Any]) -> list[str]:
    cfg, run = ctx.cfg, ctx.run
    root = run.root.resolve()
    lines = [f"run dir: {root}"]
    if "data/num_instructions" in stats:
        parts = [f"{stats['data/num_instructions']} instructions"]
        if "quality/acceptance_rate" in stats:
            parts[0] += f" (acceptance {stats['quality/acceptance_rate']:.2f})"
        if "data/num_classification" in stats:
            parts.append(f"{stats['data/num_classification']} classification")
        if "data/num_instances" in stats:
            parts.append(f"{stats['data/num_instances']} instances")
        made = [p.name for p in (run.data, run.finetune_data, run.alpaca) if p.exists()]
        lines.append("  " + ", ".join(parts) + (f" -> {', '.join(made)}" if made else ""))
    if "eval/base/rougeL" in stats or "eval/tuned/rougeL" in stats:
        scores = [f"{m} {stats[f'eval/{m}/rougeL']:.3f}" for m in ("base", "tuned") if f"eval/{m}/rougeL" in stats]
        delta = f" (delta {stats['eval/delta/rougeL']:+.3f})" if "eval/delta/rougeL" in stats else ""
        lines.append(f"  eval ROUGE-L on {stats['eval/num_tasks']} tasks: {', '.join(scores)}{delta} -> {run.eval.name}")
    elif "eval/predictions/rougeL" in stats:
        lines.append(f"  eval ROUGE-L of the predictions on {stats['eval/num_tasks']} tasks: "
                     f"{stats['eval/predictions/rougeL']:.4f} -> {run.eval.name}")
    if "finetune/last_epoch_loss" in stats:
        lines.append(f"  finetune: mean loss {stats['finetune/first_epoch_loss']:.3f} (first epoch) -> "
                     f"{stats['finetune/last_epoch_loss']:.3f} (last) in {stats.get('cost/finetune/steps', '?')} "
                     f"steps -> {run.finetune_dir.name}/")
    elif stats.get("finetune/final_loss") is not None:
        lines.append(f"  finetune: final loss {stats['finetune/final_loss']:.3f} "
                     f"-> {run.finetune_dir.name}/")
    times = [(s, stats[f"time/{s}/seconds"]) for s in cfg.stages if f"time/{s}/seconds" in stats]
    if times:
        lines.append("  time: " + ", ".join(f"{s} {t:.1f} s" for s, t in times))
    lines.append(f"  stats: {root / run.stats.name}" + (f"   plots: {root / run.plots.name}/" if run.plots.exists() else ""))
    if run.analysis.exists():
        lines.append(f"  notebook: SELFINSTRUCT_RUN={root} jupyter lab notebooks/verb_noun_diversity.ipynb")
    offline = sorted((root / "wandb").glob("offline-run-*"))
    if offline:
        lines.append(f"  W&B (offline): wandb sync {offline[-1]}")
    if cfg.llm.backend == "llamacpp" and cfg.llm.get("model_path") is None and \
            any(s in cfg.stages for s in ("instructions", "classify", "instances")):
        lines.append(EMBEDDED_NOTE)
    return lines


def log_summary(ctx, stats: dict[str, Any]) -> None:
    for line in summary_lines(ctx, stats):
        log.info("%s", line)
