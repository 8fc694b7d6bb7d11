"""Instruction generation with the bootstrap loop and the filters (DESIGN.md steps 2-3).

Requests go through the shared loop (llm/loop.py), which keeps `llm.concurrency` of them in flight
at all times, and their responses are applied strictly in request order: parse the tasks of the
response (the prompt style's parser), apply the rule filters, then the ROUGE-L novelty filter
against the seeds and every instruction accepted before.

What a request's prompt shows is fixed by rule, never by timing: with W = llm.concurrency, the
request at position k of the run samples its machine examples from the instructions accepted from
the responses at positions 0..k-W, which have all been applied when request k is sent (the loop
keeps at most W requests outstanding). So a rerun with the same answers gives the same files
whatever the answer times, and W = 1 is the paper's strictly sequential bootstrap. The pool size
after each of the last W responses is saved with each commit, so a killed run resumes exactly.
(The original code sends batches of 5 and updates the pool between batches; W plays that role.)

A request that failed even after the backend's retries is recorded (rule request_error) and noted
in the checkpoint; the next invocation of the same run dir sends it again first.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from omegaconf import OmegaConf
from tqdm import tqdm

from selfinstruct.errors import RunError
from selfinstruct.files import append_jsonl
from selfinstruct.filtering.rouge import RougeIndex
from selfinstruct.filtering.rules import check_degenerate, check_instruction, novelty_record, prompt_segments
from selfinstruct.llm import Request, Sampling
from selfinstruct.llm.loop import run_requests

log = logging.getLogger(__name__)

# Stop (with a warning) after this many responses in a row accept nothing: a model that only
# repeats itself or always hits max_tokens would otherwise loop forever.
MAX_FRUITLESS_REQUESTS = 100


def request_rng(seed: int, request_id: str) -> random.Random:
    return random.Random(f"{seed}/{request_id}")


def run_instructions(ctx) -> None:
    cfg, run, style = ctx.cfg, ctx.run, ctx.style
    files = [run.instructions, run.rejected]
    state = run.checkpoint.restore("instructions", files)
    fresh_ids = state.get("requests", 0)  # fresh request ids continue from here
    retry = list(state.get("failed", []))  # failed requests of an earlier invocation: asked again
    machine = [r["instruction"] for r in run.records(run.instructions)]
    start_size, target, lag = len(machine), cfg.num_instructions, cfg.llm.concurrency
    if start_size >= target:
        return
    # Pool sizes after each applied response: known[j] is the size after run position base + j.
    start = state.get("position", 0)  # responses applied by earlier invocations
    known = list(state.get("pool_sizes", []))
    base = start - len(known)
    index = RougeIndex([t.instruction for t in ctx.seeds] + machine, tokenizer=cfg.filters.tokenizer)
    filters = OmegaConf.to_object(cfg.filters)  # a plain object: read for every candidate
    accepted_buffer, rejected_buffer, failed = [], [], []
    prompts: dict[str, tuple[str, int]] = {}  # request id -> (prompt, first item number)
    rules: Counter = Counter()  # rejections of this invocation, for the message when nothing passes
    progress = {"applied": 0, "fruitless": 0}
    bar = tqdm(total=target, initial=start_size, desc="instructions", unit="inst")

    def request_id(k: int) -> str:
        return retry[k] if k < len(retry) else f"instructions/{fresh_ids + k - len(retry)}"

    def source(k: int):
        if len(machine) >= target or progress["fruitless"] >= MAX_FRUITLESS_REQUESTS:
            return None
        seen = start + k - lag  # the latest response this request may see (applied: see the loop)
        # (a run resumed with another llm.concurrency lacks older sizes: it sees what it started with)
        available = 0 if seen < 0 else known[seen - base] if seen >= base else start_size
        rid = request_id(k)
        prompt, first = style.instruction_prompt(request_rng(cfg.seed, rid), machine, available)
        prompts[rid] = (prompt, first)
        return Request(rid, prompt, chat=style.chat)

    def apply(request: Request, completion) -> None:
        prompt, first = prompts.pop(request.id)
        if len(machine) < target:  # responses in flight when the target was reached are not needed
            kept, rejected = filter_response(completion, first, request.id, index, filters, style, prompt)
            if not completion.ok:
                failed.append(request.id)
            for record in kept[: target - len(machine)]:
                record["id"] = f"machine_task_{len(machine)}"
                machine.append(record["instruction"])
                accepted_buffer.append(record)
            rejected_buffer.extend(rejected)
            rules.update(r["rule"] for r in rejected)
            progress["fruitless"] = 0 if kept else progress["fruitless"] + 1
            bar.update(len(machine) - bar.n)
        known.append(len(machine))
        progress["applied"] += 1

    def commit() -> None:
        append_jsonl(run.instructions, accepted_buffer)
        append_jsonl(run.rejected, rejected_buffer)
        accepted_buffer.clear()
        rejected_buffer.clear()
        applied = progress["applied"]
        run.checkpoint.commit("instructions", files, {
            "requests": fresh_ids + max(0, applied - len(retry)), "failed": retry[applied:] + failed,
            "position": start + applied, "pool_sizes": known[-lag:]})
        bar.set_postfix(requests=start + applied)

    with bar:
        sampling = style.sampling("instructions", Sampling.from_config(cfg.sampling.instructions))
        run_requests(ctx.llm, "instructions", sampling, source, apply, window=lag, commit=commit,
                     commit_every=lag)
    fruitless = progress["fruitless"]
    if len(machine) < target and fruitless >= MAX_FRUITLESS_REQUESTS:
        summary = ", ".join(f"{rule} {n}" for rule, n in rules.most_common())
        if len(machine) == start_size:
            raise RunError(f"instructions: {fruitless} responses in a row gave no new instruction, so the "
                           f"stage stopped with none of the {target - start_size} asked for (rejections: "
                           f"{summary}; see {run.rejected})")
        log.warning("instructions: stopping at %d of %d; the last %d responses gave no new instruction "
                    "(rejections: %s; see %s)", len(machine), target, fruitless, summary, run.rejected)


def filter_response(completion, first: int, request_id: str, index: RougeIndex, f, style, prompt: str = ""):
    """Accepted records (without id) and rejected records of one response, in response order;
    f: the `filters` config."""
    if not completion.ok:
        return [], [{"candidate": "", "rule": "request_error", "detail": completion.error,
                     "request_id": request_id}]
    if not completion.text.strip():  # no candidate: a degenerate-output rule, else a parse failure
        empty = {"rule": "empty_response"} if f.reject_degenerate else \
            {"rule": "parse_failure", "reason": "empty"}
        return [], [{"candidate": "", **empty, "detail": "the model returned no text",
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
    pool_size = len(index)
    decisions = index.filter(passing, f.rouge_threshold, f.top_k_similar, duplicates=f.reject_duplicates)
    # What the original code keeps with each instruction: the mean ROUGE-L to the pool it entered,
    # and the raw response (the prompt too with prompt.keep_prompt).
    raw = {"response": completion.text, "finish_reason": completion.finish_reason,
           **({"prompt": prompt} if style.cfg.keep_prompt else {})}
    for candidate, extra, decision in zip(passing, fields, decisions):
        accepted, record = novelty_record(candidate, decision, f.rouge_threshold)
        if accepted:
            record["avg_similarity_score"] = index.mean_score(candidate, pool_size + len(kept))
        record["request_id"] = request_id
        if accepted:  # alpaca: the task's input and output; chat: the dropped text
            record.update({**extra, **raw})
        elif "dropped" in extra:
            record["dropped"] = extra["dropped"]
        (kept if accepted else rejected).append(record)
    return kept, rejected
