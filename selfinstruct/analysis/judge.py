"""Optional model judge of data quality (`analyze.judge=true`): the configured model answers the
paper's three questions (prompts/judge.py) about one instance of each of `analyze.judge_sample`
sampled instructions; the shares of Yes are the paper's Table 2 (92% / 79% / 58%, all 54%)."""

from __future__ import annotations

import random
from typing import Any

from selfinstruct.llm import Request, Sampling
from selfinstruct.llm.loop import answer_all
from selfinstruct.prompts.judge import QUESTIONS, build_prompt, parse_answer


def sample_tasks(records: list[dict], n: int, seed: int) -> list[dict]:
    """n distinct instructions (all if fewer), each with one of its records, chosen at random."""
    by_instruction: dict[str, list[dict]] = {}
    for r in records:
        by_instruction.setdefault(r["instruction"], []).append(r)
    rng = random.Random(f"{seed}/judge")
    chosen = rng.sample(list(by_instruction), min(n, len(by_instruction)))
    return [rng.choice(by_instruction[i]) for i in chosen]


def run_judge(ctx, records: list[dict]) -> tuple[dict[str, Any], list[dict]]:
    """(quality/judge/* statistics, one row per judged sample with its answers)."""
    cfg = ctx.cfg
    sample = sample_tasks(records, cfg.analyze.judge_sample, cfg.seed)
    requests, asked = [], []
    for i, r in enumerate(sample):
        # Instruction-only data has nothing for the input and output questions.
        questions = list(QUESTIONS) if r["output"] is not None else ["valid_instruction"]
        for q in questions:
            prompt = build_prompt(q, r["instruction"], r["input"] or "", r["output"] or "")
            requests.append(Request(f"judge/{i}/{q}", prompt, chat=ctx.style.chat))
            asked.append((i, q))
    completions = answer_all(ctx.llm, "judge", Sampling.from_config(cfg.sampling.judge), requests,
                             window=2 * cfg.llm.concurrency)

    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"],
             "answers": {}, "raw": {}} for r in sample]
    for (i, q), c in zip(asked, completions):
        rows[i]["raw"][q] = c.text if c.ok else None
        rows[i]["answers"][q] = parse_answer(c.text) if c.ok else None

    stats: dict[str, Any] = {"quality/judge/num_samples": len(rows),
                             "quality/judge/unanswered": sum(a is None for r in rows for a in r["answers"].values())}
    for q in QUESTIONS:
        answers = [r["answers"][q] for r in rows if r["answers"].get(q) is not None]
        if answers:
            stats[f"quality/judge/{q}"] = sum(answers) / len(answers)
    complete = [r["answers"] for r in rows
                if len(r["answers"]) == len(QUESTIONS) and None not in r["answers"].values()]
    if complete:
        stats["quality/judge/all_valid"] = sum(all(a.values()) for a in complete) / len(complete)
    return stats, rows
