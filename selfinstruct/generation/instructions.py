"""Instruction generation with the bootstrap loop and the filters (DESIGN.md steps 2-3).

Requests go through the shared loop (llm/loop.py), which keeps a window of W requests submitted
ahead (the OpenAI backends run llm.concurrency of them at once and hold the rest at their gate),
and their responses are applied strictly in request order: parse the tasks of the response (the
prompt style's parser), apply the rule filters, then the ROUGE-L novelty filter against the seeds
and every instruction accepted before.

What a request's prompt shows is fixed by rule, never by timing: the request at position k of the
run samples its machine examples from the instructions accepted from the responses at positions
0..k-W, which have all been applied when request k is sent (the loop keeps at most W requests
outstanding); whether request k is sent at all is decided by the same responses (the target or
the fruitless limit reached by response k-W ends the stream). So a rerun with the same answers
gives the same files whatever the answer times, and W = 1 is the paper's strictly sequential
bootstrap. W = llm.window, by default derived from llm.concurrency (bootstrap_window): a larger W
keeps a server with uneven answer times busy (one slow answer holds back only the requests W
behind it), at the price of prompts that lag W responses behind the pool. The pool size after each
of the last W responses is saved with each commit, so a killed run resumes exactly (with the same
W; another W still resumes, the requests whose sizes are missing see the pool it resumed with).
(The original code sends batches of 5 and updates the pool between batches; W plays that role.)

Responses that are ready together are filtered in one batch (filter_responses), which gives what
filtering them one by one gives, in a fraction of the ROUGE time.

A request that failed even after the backend's retries is recorded (rule request_error) and noted
in the checkpoint; the next invocation of the same run dir sends it again first.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from typing import Optional

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


def bootstrap_window(cfg, llm) -> int:
    """The window W (= the lag of the pool rule): llm.window, or by default llm.concurrency for
    backends that generate on this machine (llama.cpp, the fake: a request beyond what the
    target needs costs nearly its full compute there, batched or not); for the OpenAI backends, which hold requests beyond concurrency at their gate, 16 x concurrency
    (enough that one slow answer rarely stalls the server), but no more than the fewest requests
    that can reach num_instructions (a response adds at most 8 tasks), so a small run is not all
    seeds and sends few requests it does not need. A function of the config only, so a resumed
    run has the same."""
    c = cfg.llm.concurrency
    if cfg.llm.get("window") is not None:
        return int(cfg.llm.window)
    if getattr(llm, "local", False) or not getattr(llm, "queues_ahead", False):
        return c
    return min(16 * c, max(c, -(-cfg.num_instructions // 8)))


def requests_needed(concurrency: int, remaining: int, accepted: int, applied: int, local: bool) -> int:
    """How many requests to keep outstanding: no more than the rest of the target may need, so
    the requests in flight when it is reached cost little. Sends are only held back, never
    skipped, so this saves cost, not content, and may depend on timing. A server: at least
    `concurrency` (keep it busy), assuming a response adds up to 8 tasks. A local model, whose
    every extra request costs nearly its full compute even in a batch: the yield so far (tasks
    accepted per response) sets it, one more for luck, at most `concurrency` (and that until
    a first task is accepted)."""
    if not local:
        return max(concurrency, -(-remaining // 8))
    if not accepted:  # no yield seen yet
        return concurrency
    return max(1, min(concurrency, math.ceil(remaining * applied / accepted) + 1))


def run_instructions(ctx) -> None:
    cfg, run, style = ctx.cfg, ctx.run, ctx.style
    files = [run.instructions, run.rejected]
    state = run.checkpoint.restore("instructions", files)
    fresh_ids = state.get("requests", 0)  # fresh request ids continue from here
    retry = list(state.get("failed", []))  # failed requests of an earlier invocation: asked again
    machine = [r["instruction"] for r in run.records(run.instructions)]
    start_size, target = len(machine), cfg.num_instructions
    if start_size >= target:
        return
    lag = bootstrap_window(cfg, ctx.llm)
    commit_every = min(lag, cfg.llm.concurrency)  # what a kill loses; also the largest batch applied
    # Pool sizes after each applied response: known[j] is the size after run position base + j.
    start = state.get("position", 0)  # responses applied by earlier invocations
    known = list(state.get("pool_sizes", []))
    base = start - len(known)
    index = RougeIndex([t.instruction for t in ctx.seeds] + machine, tokenizer=cfg.filters.tokenizer)
    filters = OmegaConf.to_object(cfg.filters)  # a plain object: read for every candidate
    accepted_buffer, rejected_buffer, failed = [], [], []
    prompts: dict[str, tuple[str, int]] = {}  # request id -> (prompt, first item number)
    rules: Counter = Counter()  # rejections of this invocation, for the message when nothing passes
    # stop_at: the run position of the response that reached the target or the fruitless limit
    progress = {"applied": 0, "fruitless": 0, "stop_at": None}
    rouge_seconds = [state.get("rouge_seconds", 0.0)]
    bar = tqdm(total=target, initial=start_size, desc="instructions", unit="inst")

    def request_id(k: int) -> str:
        return retry[k] if k < len(retry) else f"instructions/{fresh_ids + k - len(retry)}"

    def source(k: int):
        seen = start + k - lag  # the latest response this request may see (applied: see the loop)
        # Stop by the same rule, never by how many answers are in: sending depends on no timing.
        if progress["stop_at"] is not None and seen >= progress["stop_at"]:
            return None
        # (a run resumed with another window lacks older sizes: it sees what it started with)
        available = 0 if seen < 0 else known[seen - base] if seen >= base else start_size
        rid = request_id(k)
        prompt, first = style.instruction_prompt(request_rng(cfg.seed, rid), machine, available)
        prompts[rid] = (prompt, first)
        return Request(rid, prompt, chat=style.chat)

    def apply_many(results) -> None:
        todo = []
        for request, completion in results:
            prompt, first = prompts.pop(request.id)
            todo.append((completion, first, request.id, prompt))
        # responses in flight when the target was reached are not needed (None)
        outcomes = filter_responses(todo, index, filters, style, limit=max(0, target - len(machine)),
                                    timer=rouge_seconds)
        for (request, completion), outcome in zip(results, outcomes):
            if outcome is None:
                break  # after the response that reached the target: as if never sent
            kept, rejected = outcome
            if not completion.ok:
                failed.append(request.id)
            for record in kept[: target - len(machine)]:
                record["id"] = f"machine_task_{len(machine)}"
                machine.append(record["instruction"])
                accepted_buffer.append(record)
            rejected_buffer.extend(rejected)
            rules.update(r["rule"] for r in rejected)
            progress["fruitless"] = 0 if kept else progress["fruitless"] + 1
            known.append(len(machine))
            if progress["stop_at"] is None and (len(machine) >= target
                                                or progress["fruitless"] >= MAX_FRUITLESS_REQUESTS):
                progress["stop_at"] = start + progress["applied"]
            progress["applied"] += 1
        bar.update(len(machine) - bar.n)

    def commit() -> None:
        append_jsonl(run.instructions, accepted_buffer)
        append_jsonl(run.rejected, rejected_buffer)
        accepted_buffer.clear()
        rejected_buffer.clear()
        applied = progress["applied"]
        run.checkpoint.commit("instructions", files, {
            "requests": fresh_ids + max(0, applied - len(retry)), "failed": retry[applied:] + failed,
            "position": start + applied, "pool_sizes": known[-lag:], "rouge_seconds": rouge_seconds[0]})
        bar.set_postfix(requests=start + applied)

    with bar:
        sampling = style.sampling("instructions", Sampling.from_config(cfg.sampling.instructions))
        # Once the target is reached the responses still outstanding are not needed: they are
        # cancelled (most wait at the backend's gate, unsent) and the run's position stops at
        # the response that reached it, so how many were in flight never shows.
        run_requests(ctx.llm, "instructions", sampling, source, lambda r, c: apply_many([(r, c)]),
                     window=lag, commit=commit, commit_every=commit_every, apply_many=apply_many,
                     finished=lambda: len(machine) >= target,
                     ahead=lambda: requests_needed(cfg.llm.concurrency, target - len(machine),
                                                   len(machine) - start_size, progress["applied"],
                                                   getattr(ctx.llm, "local", False)))
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
    return filter_responses([(completion, first, request_id, prompt)], index, f, style)[0]


def filter_responses(responses, index: RougeIndex, f, style, limit: Optional[int] = None, timer=None):
    """filter_response of each (completion, first, request_id, prompt), in order, exactly as one
    call each would give: the candidates of all go through one ROUGE pass (index.filter settles
    them in order) and the avg_similarity_score of the accepted ones through one more
    (index.prefix_means), which batches the bit-parallel work. limit: the responses after the one
    whose accepted records reach it give None, as the one-by-one loop stops there (their candidates
    do enter the index, which the caller no longer needs). timer: a list whose [0] gets the
    seconds of the ROUGE work added."""
    screened = [_screen(*response, f, style) for response in responses]
    started = time.perf_counter()
    pool_size = len(index)
    # one pass for all ready responses, as if filtered one response after another
    decisions = iter(index.filter([c for _, cands, _, _ in screened for c in cands], f.rouge_threshold,
                                  f.top_k_similar, duplicates=f.reject_duplicates,
                                  groups=[len(cands) for _, cands, _, _ in screened]))
    out, means_of = [], []  # means_of: (record, its pool index) of every accepted record
    total = 0
    for (_, _, request_id, _), (rejected, candidates, fields, raw) in zip(responses, screened):
        if limit is not None and total >= limit:
            out.append(None)
            continue
        kept = []
        for candidate, extra, decision in zip(candidates, fields, decisions):
            accepted, record = novelty_record(candidate, decision, f.rouge_threshold)
            if accepted:
                record["avg_similarity_score"] = None  # set below, in one batch
                means_of.append((record, pool_size))
                pool_size += 1
            record["request_id"] = request_id
            if accepted:  # alpaca: the task's input and output; chat: the dropped text
                record.update({**extra, **raw})
            elif "dropped" in extra:
                record["dropped"] = extra["dropped"]
            (kept if accepted else rejected).append(record)
        total += len(kept)
        out.append((kept, rejected))
    # What the original code keeps with each instruction: the mean ROUGE-L to the pool it entered.
    for (record, _), mean in zip(means_of, index.prefix_means([p for _, p in means_of])):
        record["avg_similarity_score"] = mean
    if timer is not None:
        timer[0] += time.perf_counter() - started
    return out


def _screen(completion, first: int, request_id: str, prompt: str, f, style):
    """The checks of one response before ROUGE: (rejected records, candidates that passed them,
    their other fields, the raw fields an accepted record keeps)."""
    if not completion.ok:
        return [{"candidate": "", "rule": "request_error", "detail": completion.error,
                 "request_id": request_id}], [], [], {}
    if not completion.text.strip():  # no candidate: a degenerate-output rule, else a parse failure
        empty = {"rule": "empty_response"} if f.reject_degenerate else \
            {"rule": "parse_failure", "reason": "empty"}
        return [{"candidate": "", **empty, "detail": "the model returned no text",
                 "finish_reason": completion.finish_reason, "request_id": request_id}], [], [], {}
    tasks = style.parse_tasks(completion.text, first)
    candidates = [t["instruction"] for t in tasks]
    if not candidates:
        reason, detail = style.why_no_tasks(completion.text)
        return [{"candidate": completion.text[:500], "rule": "parse_failure", "detail": detail,
                 "reason": reason, "request_id": request_id}], [], [], {}
    if completion.finish_reason == "length" and f.discard_truncated_response:
        return [{"candidate": c, "rule": "truncated_response",
                 "detail": "the response hit max_tokens; the paper discards it whole",
                 "request_id": request_id} for c in candidates], [], [], {}
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
    # the raw response (the prompt too with prompt.keep_prompt), kept with each accepted instruction
    raw = {"response": completion.text, "finish_reason": completion.finish_reason,
           **({"prompt": prompt} if style.cfg.keep_prompt else {})}
    return rejected, passing, fields, raw
