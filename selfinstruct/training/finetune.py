"""The finetune stage (DESIGN.md step 9): supervised fine-tuning on prompt/completion pairs, with the
loss on the completion only (the paper fine-tuned GPT-3 with prompt loss weight 0).

The pairs are the run's finetune.jsonl (the prepare stage's), or `input=PATH` in any dataset format
that stages=[analyze] reads: prompt/completion files (this project's finetune.jsonl, the original
gpt3_finetuning_data_*.jsonl) as they are, and instance files (data.jsonl, Alpaca JSON, the
original all_generated_instances.jsonl, seed tasks) encoded the way prepare encodes them.

finetune.backend=local trains with transformers + peft (training/local.py) and writes finetune/ in
the run dir (the adapter in PEFT format and as adapter.gguf for llama.cpp, train_log.jsonl,
checkpoints); finetune.backend=openai uploads the pairs to the OpenAI fine-tuning API
(training/openai_finetune.py) and records the fine-tuned model id. Either way the result (where the
tuned model is) goes to progress.json for the evaluate stage, and a killed finetune resumes: from
the last checkpoint, or by polling the same OpenAI job.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from selfinstruct.datasets.formats import load_dataset
from selfinstruct.errors import DataError
from selfinstruct.files import read_records
from selfinstruct.generation.prepare import encode

log = logging.getLogger(__name__)


def training_pairs(ctx) -> tuple[list[dict], Path]:
    """The prompt/completion pairs to train on, and the file they come from."""
    cfg, run = ctx.cfg, ctx.run
    if cfg.input is None or "prepare" in cfg.stages:  # with prepare, input is prepare's input
        if not run.finetune_data.exists():
            raise DataError(f"{run.finetune_data}: not found; the finetune stage trains on the prepare "
                            "stage's output (add `prepare` to stages), or on a dataset given as input=PATH")
        return run.records(run.finetune_data), run.finetune_data
    path = Path(cfg.input)
    dataset = load_dataset(path)
    if dataset.format == "finetuning":  # train on the very text of the file
        pairs = [{"prompt": r["prompt"], "completion": r["completion"]} for r in read_records(path)]
    else:
        if not dataset.has_instances:
            raise DataError(f"{path}: holds instructions only ({dataset.format} format); fine-tuning needs "
                            "outputs: give a file with instances (data.jsonl, Alpaca JSON, finetune.jsonl)")
        rng = random.Random(cfg.seed)
        pairs = [encode(r["instruction"], r["input"] or "", r["output"], rng,
                        random_templates=cfg.prepare.random_templates, end_token=cfg.prepare.end_token)
                 for r in dataset.records if r["output"]]
    for number, pair in enumerate(pairs, 1):
        if not isinstance(pair["prompt"], str) or not isinstance(pair["completion"], str):
            raise DataError(f"{path}: record {number}: prompt and completion must be strings")
    return pairs, path


def run_finetune(ctx) -> None:
    cfg, run = ctx.cfg, ctx.run
    f = cfg.finetune
    pairs, source = training_pairs(ctx)
    log.info("finetune: %d prompt/completion pairs from %s (backend %s)", len(pairs), source, f.backend)
    if f.backend == "local":
        result, stats = _local(ctx, pairs)
    else:
        result, stats = _openai(ctx, pairs)
    stats["finetune/num_examples"] = len(pairs)
    ctx.checkpoint.put("finetune_result", result)
    run.save_stats("finetune", stats, inputs=[source] if source.parent == run.root else [])


def _local(ctx, pairs: list[dict]) -> tuple[dict, dict]:
    from selfinstruct.llm.cache import cache_dir_for
    from selfinstruct.training.local import finetune_local

    cfg, run = ctx.cfg, ctx.run

    def on_log(record: dict) -> None:  # the loss curve in W&B, as it happens
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float))})

    stats = finetune_local(cfg.finetune, pairs, run.finetune_dir, cache_dir_for(cfg.llm), seed=cfg.seed,
                           on_log=on_log, plot_path=run.plots / "finetune_loss.png")
    adapter_gguf = run.finetune_dir / "adapter.gguf"
    result = {"backend": "local", "method": cfg.finetune.method, "dir": str(run.finetune_dir),
              "adapter_gguf": str(adapter_gguf) if adapter_gguf.exists() else None}
    return result, stats


def _openai(ctx, pairs: list[dict]) -> tuple[dict, dict]:
    from selfinstruct.secrets import api_key_of
    from selfinstruct.training.openai_finetune import finetune_openai

    cfg = ctx.cfg
    llm = cfg.llm
    openai_llm = llm.backend in ("openai", "openai_compatible")
    outcome = finetune_openai(
        pairs, cfg.finetune.openai, api_key=api_key_of(llm), base_url=llm.base_url if openai_llm else None,
        state=ctx.checkpoint.get("finetune_openai", {}),
        save_state=lambda state: ctx.checkpoint.put("finetune_openai", state),
        seed=cfg.seed, max_retries=llm.max_retries if openai_llm else 6)
    result = {"backend": "openai", "model_id": outcome.model_id, "job_id": outcome.job_id}
    return result, outcome.stats()
