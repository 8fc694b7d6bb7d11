"""Classification identification (DESIGN.md step 4): a greedy, few-shot Yes/No request per machine
instruction. classification.jsonl records: id (of the instruction), instruction, is_classification,
raw (the model's answer as returned)."""

from __future__ import annotations

from selfinstruct.generation.per_instruction import skipped
from selfinstruct.llm import Request, Sampling
from selfinstruct.llm.loop import run_items


def run_classify(ctx) -> None:
    if skipped(ctx, "classify"):
        return
    run, style = ctx.run, ctx.style
    instructions = run.instruction_records("classify")
    done = run.done_ids("classify", run.classification)
    todo = [r for r in instructions if r["id"] not in done]

    def request(r: dict) -> Request:
        return Request(f"classify/{r['id']}", style.classify_prompt(r["instruction"]), chat=style.chat)

    def record(r: dict, completion) -> dict:
        # An answer that is neither yes nor no counts as "not classification" (as in the paper);
        # prepare counts those under quality/parse_failures/classify.
        return {"id": r["id"], "instruction": r["instruction"],
                "is_classification": style.parse_classification(completion.text) is True, "raw": completion.text}

    run_items(ctx.llm, "classify", Sampling.from_config(ctx.cfg.sampling.classify), todo, request, record,
              path=run.classification, checkpoint=run.checkpoint, window=ctx.cfg.llm.concurrency,
              total=len(instructions))
