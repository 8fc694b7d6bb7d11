"""Classification identification (DESIGN.md step 4): a greedy, few-shot Yes/No request per machine
instruction. classification.jsonl records: id (of the instruction), instruction, is_classification,
raw (the model's answer as returned)."""

from __future__ import annotations

from ..llm import Request, Sampling
from ..prompts.classify import build_prompt, parse_answer
from .per_instruction import done_ids, read_instructions, run_requests, skipped_for_alpaca

FILE = "classification.jsonl"


def run_classify(ctx) -> None:
    cfg = ctx.cfg
    if skipped_for_alpaca(ctx, "classify"):
        return
    instructions = read_instructions(ctx, "classify")
    done = done_ids(ctx, "classify", FILE)
    todo = [r for r in instructions if r["id"] not in done]
    chat = cfg.prompt.chat

    def request(r: dict) -> Request:
        return Request(f"classify/{r['id']}", build_prompt(r["instruction"], chat=chat), chat=chat)

    def record(r: dict, completion) -> dict:
        # An answer that is neither yes nor no counts as "not classification" (as in the paper);
        # prepare counts those under quality/parse_failures/classify.
        return {"id": r["id"], "instruction": r["instruction"],
                "is_classification": parse_answer(completion.text) is True, "raw": completion.text}

    run_requests(ctx, "classify", FILE, todo, len(instructions), request, record,
                 Sampling.from_config(cfg.sampling.classify))
