"""Instance generation (DESIGN.md step 5): one greedy completion of up to five instances per
classified instruction, output-first for classification tasks and input-first for the rest.
instances_raw.jsonl records: id (of the instruction), instruction, is_classification, raw (the
completion text), finish_reason. Parsing and filtering happen in the prepare stage, so they can be
changed and rerun without asking the model again."""

from __future__ import annotations

import logging

from ..io import read_jsonl
from ..llm import Request, Sampling
from ..prompts.instances import build_prompt
from .per_instruction import done_ids, read_instructions, run_requests, skipped_for_alpaca

log = logging.getLogger(__name__)
FILE = "instances_raw.jsonl"


def run_instances(ctx) -> None:
    cfg = ctx.cfg
    if skipped_for_alpaca(ctx, "instances"):
        return
    instructions = read_instructions(ctx, "instances")
    labels_path = ctx.path("classification.jsonl")
    labels = {r["id"]: r["is_classification"] for r in read_jsonl(labels_path)} if labels_path.exists() else {}
    unlabelled = sum(r["id"] not in labels for r in instructions)
    if unlabelled:
        log.warning("instances: %d instructions are not classified yet (run the classify stage); "
                    "they get no instances in this run", unlabelled)
    done = done_ids(ctx, "instances", FILE)
    todo = [r for r in instructions if r["id"] in labels and r["id"] not in done]
    # One format after the other, so consecutive prompts share their long demonstration prefix
    # (llama.cpp then evaluates it once); records are matched by id later, so order is free.
    todo.sort(key=lambda r: not labels[r["id"]])
    chat, max_instances = cfg.prompt.chat, cfg.filters.max_instances_per_task

    def request(r: dict) -> Request:
        prompt = build_prompt(r["instruction"], output_first=labels[r["id"]], chat=chat,
                              max_instances=max_instances)
        return Request(f"instances/{r['id']}", prompt, chat=chat)

    def record(r: dict, completion) -> dict:
        return {"id": r["id"], "instruction": r["instruction"], "is_classification": labels[r["id"]],
                "raw": completion.text, "finish_reason": completion.finish_reason}

    run_requests(ctx, "instances", FILE, todo, sum(r["id"] in labels for r in instructions),
                 request, record, Sampling.from_config(cfg.sampling.instances))
