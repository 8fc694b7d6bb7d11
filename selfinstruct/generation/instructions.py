"""Instruction generation with the bootstrap loop and the filters (DESIGN.md steps 2-3).

Requests go through the shared loop (llm/loop.py) and their responses are applied in request order:
parse the tasks of the response (the prompt style's parser), apply the rule filters, then the
ROUGE-L novelty filter against the seeds and every instruction accepted before. Records are
committed in batches (rundir/checkpoint.py), so a killed run resumes at the first uncommitted
request and ends as an uninterrupted run would.

What a request's prompt shows is fixed by rule, not by timing: requests go out in rounds of
`llm.concurrency`, and every request of a round samples its machine examples from the instructions
accepted before the round began.

A request that failed even after the backend's retries is recorded (rule request_error) and noted
in the checkpoint; the next invocation of the same run dir sends it again first.
"""

from __future__ import annotations

import logging
import random

from tqdm import tqdm

from selfinstruct.files import append_jsonl
from selfinstruct.filtering.rouge import RougeIndex
from selfinstruct.filtering.rules import check_degenerate, check_instruction, novelty_record, prompt_segments
from selfinstruct.llm import Request, Sampling
from selfinstruct.llm.loop import WAIT, run_requests

log = logging.getLogger(__name__)

# Stop (with a warning) after this many requests in a row accept nothing: a model that only
# repeats itself or always hits max_tokens would otherwise loop forever.
MAX_FRUITLESS_REQUESTS = 100


def request_rng(seed: int, request_id: str) -> random.Random:
    return random.Random(f"{seed}/{request_id}")


def run_instructions(ctx) -> None:
    cfg, run, style = ctx.cfg, ctx.run, ctx.style
    files = [run.instructions, run.rejected]
    state = run.checkpoint.restore("instructions", files)
    first_new = state.get("requests", 0)  # fresh request ids continue from here
    retry = list(state.get("failed", []))  # failed requests of an earlier invocation: asked again
    failed: list[str] = []
    machine = [r["instruction"] for r in run.records(run.instructions)]
    index = RougeIndex([t.instruction for t in ctx.seeds] + machine)
    target, width = cfg.num_instructions, cfg.llm.concurrency
    accepted_buffer, rejected_buffer = [], []
    prompts: dict[str, tuple[str, int]] = {}  # request id -> (prompt, first item number)
    progress = {"applied": 0, "fresh_applied": 0, "fruitless": 0, "round_pool": len(machine),
                "round_accepted": False}
    retry_ids = set(retry)
    bar = tqdm(total=target, initial=min(len(machine), target), desc="instructions", unit="inst")

    def source(k: int):
        if k % width == 0:  # a new round begins once the previous one is applied
            if k > progress["applied"]:
                return WAIT
            if k:
                progress["fruitless"] = 0 if progress["round_accepted"] else progress["fruitless"] + width
            if len(machine) >= target:
                return None
            if progress["fruitless"] >= MAX_FRUITLESS_REQUESTS:
                log.warning("instructions: stopping at %d of %d; the last %d requests gave no new "
                            "instruction (see rejected.jsonl for why)", len(machine), target, progress["fruitless"])
                return None
            progress["round_pool"], progress["round_accepted"] = len(machine), False
        request_id = retry[k] if k < len(retry) else f"instructions/{first_new + k - len(retry)}"
        prompt, first = style.instruction_prompt(request_rng(cfg.seed, request_id), machine[:progress["round_pool"]])
        prompts[request_id] = (prompt, first)
        return Request(request_id, prompt, chat=style.chat)

    def apply(request: Request, completion) -> None:
        progress["applied"] += 1
        progress["fresh_applied"] += request.id not in retry_ids
        prompt, first = prompts.pop(request.id)
        if len(machine) >= target:
            return  # the round's remaining responses are not needed
        kept, rejected = filter_response(completion, first, request.id, index, cfg, style, prompt)
        if not completion.ok:
            failed.append(request.id)
        for record in kept[: target - len(machine)]:
            record["id"] = f"machine_task_{len(machine)}"
            machine.append(record["instruction"])
            accepted_buffer.append(record)
            bar.update(1)
            progress["round_accepted"] = True
        rejected_buffer.extend(rejected)

    def commit() -> None:
        append_jsonl(run.instructions, accepted_buffer)
        append_jsonl(run.rejected, rejected_buffer)
        accepted_buffer.clear()
        rejected_buffer.clear()
        retried = min(progress["applied"], len(retry))
        run.checkpoint.commit("instructions", files, {
            "requests": first_new + progress["fresh_applied"], "failed": retry[retried:] + failed})
        bar.set_postfix(requests=progress["applied"])

    sampling = style.sampling("instructions", Sampling.from_config(cfg.sampling.instructions))
    run_requests(ctx.llm, "instructions", sampling, source, apply,
                 window=width, commit=commit, commit_every=width)
    bar.close()


def filter_response(completion, first: int, request_id: str, index: RougeIndex, cfg, style, prompt: str = ""):
    """Accepted records (without id) and rejected records of one response, in response order."""
    f = cfg.filters
    if not completion.ok:
        return [], [{"candidate": "", "rule": "request_error", "detail": completion.error,
                     "request_id": request_id}]
    if not completion.text.strip():
        return [], [{"candidate": "", "rule": "empty_response", "detail": "the model returned no text",
                     "finish_reason": completion.finish_reason, "request_id": request_id}]
    tasks = style.parse_tasks(completion.text, first)
    candidates = [t["instruction"] for t in tasks]
    if not candidates:
        reason, detail = style.why_no_tasks(completion.text)
        return [], [{"candidate": completion.text[:500], "rule": "parse_failure", "detail": detail,
                     "reason": reason, "request_id": request_id}]
    if completion.finish_reason == "length" and f.discard_truncated_response:
        return [], [{"candidate": c, "rule": "truncated_response",
                     "detail": "the response hit max_tokens; the paper discards it whole",
                     "request_id": request_id} for c in candidates]
    rejected, passing, fields = [], [], []
    segments = prompt_segments(prompt) if f.reject_degenerate else None
    for k, (candidate, task) in enumerate(zip(candidates, tasks)):
        broken = style.broken_task(k, task, len(tasks), completion.finish_reason)
        broken = broken or check_instruction(candidate, f)
        if not broken and segments is not None:
            broken = check_degenerate(candidate, segments)
        # a chat item's dropped answer lines stay beside it, accepted or not, to be audited
        dropped = {"dropped": task["dropped"]} if "dropped" in task else {}
        if broken:
            rejected.append({"candidate": candidate, "rule": broken[0], "detail": broken[1],
                             "request_id": request_id, **dropped})
        else:
            passing.append(candidate)
            fields.append({key: value for key, value in task.items() if key != "instruction"})
    kept = []
    decisions = index.filter(passing, f.rouge_threshold, f.top_k_similar)
    for candidate, extra, decision in zip(passing, fields, decisions):
        accepted, record = novelty_record(candidate, decision, f.rouge_threshold)
        record["request_id"] = request_id
        if accepted:
            record.update(extra)  # alpaca: the task's input and output; chat: the dropped text
        elif "dropped" in extra:
            record["dropped"] = extra["dropped"]
        (kept if accepted else rejected).append(record)
    return kept, rejected
