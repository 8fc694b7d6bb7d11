"""Instance generation (DESIGN.md step 5): one greedy completion of up to five instances per
classified instruction, output-first for classification tasks and input-first for the rest.
instances_raw.jsonl records: id (of the instruction), instruction, is_classification, raw (the
completion text), finish_reason, and with prompt.keep_prompt the prompt. Parsing and filtering
happen in the prepare stage, so they can be changed and rerun without asking the model again."""

from __future__ import annotations

import dataclasses
import logging

from selfinstruct.generation.per_instruction import skipped
from selfinstruct.llm import Request, Sampling
from selfinstruct.llm.loop import run_items

log = logging.getLogger(__name__)


def run_instances(ctx) -> None:
    if skipped(ctx, "instances"):
        return
    cfg, run, style = ctx.cfg, ctx.run, ctx.style
    instructions = run.instruction_records("instances")
    labels = {r["id"]: r["is_classification"] for r in run.records(run.classification)}
    unlabelled = sum(r["id"] not in labels for r in instructions)
    if unlabelled:
        log.warning("instances: %d instructions are not classified yet (run the classify stage); "
                    "they get no instances in this run", unlabelled)
    done = run.done_ids("instances", run.instances_raw)
    todo = [r for r in instructions if r["id"] in labels and r["id"] not in done]
    # One format after the other, so consecutive prompts share their long demonstration prefix
    # (llama.cpp then evaluates it once); records are matched by id later, so order is free.
    todo.sort(key=lambda r: not labels[r["id"]])
    max_instances = cfg.filters.max_instances_per_task
    sampling = {clf: style.sampling("instances", params, output_first=clf)
                for clf, params in instance_sampling(cfg.sampling).items()}
    if sampling[True] == sampling[False]:  # one object: the backend batches both kinds together
        sampling[True] = sampling[False]

    def prompt(r: dict) -> str:
        return style.instances_prompt(r["instruction"], labels[r["id"]], max_instances)

    def request(r: dict) -> Request:
        return Request(f"instances/{r['id']}", prompt(r), chat=style.chat)

    def record(r: dict, completion) -> dict:
        return {"id": r["id"], "instruction": r["instruction"], "is_classification": labels[r["id"]],
                "raw": completion.text, "finish_reason": completion.finish_reason,
                **({"prompt": prompt(r)} if cfg.prompt.keep_prompt else {})}

    def params(req: Request) -> Sampling:
        return sampling[labels[req.id.removeprefix("instances/")]]

    run_items(ctx.llm, "instances", params, todo, request, record, path=run.instances_raw,
              checkpoint=run.checkpoint, window=cfg.llm.concurrency,
              total=sum(r["id"] in labels for r in instructions))


def instance_sampling(s) -> dict[bool, Sampling]:
    """The instance requests' Sampling by is_classification: classification tasks may get their
    own max_tokens (sampling.instances_classification_max_tokens; the original's 300, else 350)."""
    params = Sampling.from_config(s.instances)
    n = s.instances_classification_max_tokens
    return {False: params, True: params if n is None else dataclasses.replace(params, max_tokens=n)}
