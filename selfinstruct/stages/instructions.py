"""Instruction generation with the bootstrap loop and the filters (DESIGN.md steps 2-3).

Each round sends `llm.concurrency` requests at once and applies their responses in request order:
parse the numbered list, apply the rule filters, then the ROUGE-L novelty filter against the seeds
and every instruction accepted before. A round's records are committed together (see io.Checkpoint),
so a killed run resumes at the first unfinished round and ends as an uninterrupted run would.
A request that failed even after the backend's retries is recorded (rule request_error) and noted
in the checkpoint; the next invocation of the same run dir sends it again first.
With prompt=alpaca a request shows seed tasks and asks for whole tasks (prompts/alpaca.py); the
same filters judge their instructions, and accepted records carry the task's input and output too.
"""

from __future__ import annotations

import logging
import random

from tqdm import tqdm

from ..filters import check_degenerate, check_instruction, novelty_record, prompt_segments
from ..io import append_jsonl, read_jsonl
from ..llm import Request, Sampling
from ..prompts import alpaca
from ..prompts.instructions import build_prompt, parse_instruction_list, sample_in_context
from ..rouge import RougeIndex

log = logging.getLogger(__name__)

FILES = ["instructions.jsonl", "rejected.jsonl"]
# Stop (with a warning) after this many requests in a row accept nothing: a model that only
# repeats itself or always hits max_tokens would otherwise loop forever.
MAX_FRUITLESS_REQUESTS = 100


def request_rng(seed: int, request_id: str) -> random.Random:
    return random.Random(f"{seed}/{request_id}")


def normalize(text: str, capitalize: bool) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if capitalize and text else text


def run_instructions(ctx) -> None:
    cfg, p = ctx.cfg, ctx.cfg.prompt
    state = ctx.checkpoint.restore("instructions", FILES)
    sent = state.get("requests", 0)
    retry = list(state.get("failed", []))  # failed requests of an earlier invocation: asked again
    failed: list[str] = []
    accepted = read_jsonl(ctx.path("instructions.jsonl")) if ctx.path("instructions.jsonl").exists() else []
    machine = [r["instruction"] for r in accepted]
    seed_instructions = [t.instruction for t in ctx.seeds]
    index = RougeIndex(seed_instructions + machine)
    target = cfg.num_instructions
    sampling = Sampling.from_config(cfg.sampling.instructions)
    bar = tqdm(total=target, initial=min(len(machine), target), desc="instructions", unit="inst")
    fruitless = 0
    while len(machine) < target:
        if fruitless >= MAX_FRUITLESS_REQUESTS:
            log.warning("instructions: stopping at %d of %d; the last %d requests gave no new "
                        "instruction (see rejected.jsonl for why)", len(machine), target, fruitless)
            break
        ids, retry = retry[: cfg.llm.concurrency], retry[cfg.llm.concurrency:]
        fresh = cfg.llm.concurrency - len(ids)
        ids += [f"instructions/{sent + k}" for k in range(fresh)]
        requests, firsts = [], []
        for request_id in ids:
            if p.name == "alpaca":  # seed tasks with their instances as demonstrations, no machine ones
                demos = alpaca.sample_demos(request_rng(cfg.seed, request_id), ctx.seeds, p.num_demos)
                prompt, first = alpaca.build_prompt(demos, chat=p.chat, num_tasks=p.num_tasks_per_request)
            else:
                examples = sample_in_context(request_rng(cfg.seed, request_id), seed_instructions, machine,
                                             p.num_human, p.num_machine)
                prompt, first = build_prompt(examples, chat=p.chat, max_list_number=p.max_list_number)
            requests.append(Request(request_id, prompt, chat=p.chat))
            firsts.append(first)
        completions = ctx.llm.complete(requests, sampling, stage="instructions")
        new_accepted, new_rejected = [], []
        for request, first, completion in zip(requests, firsts, completions):
            if len(machine) >= target:
                break
            kept, rejected = filter_response(completion, first, request.id, index, cfg, request.prompt)
            if not completion.ok:
                failed.append(request.id)
            for record in kept[: target - len(machine)]:
                record["id"] = f"machine_task_{len(machine)}"
                machine.append(record["instruction"])
                new_accepted.append(record)
                bar.update(1)
            new_rejected.extend(rejected)
        sent += fresh
        fruitless = 0 if new_accepted else fruitless + len(requests)
        append_jsonl(ctx.path("instructions.jsonl"), new_accepted)
        append_jsonl(ctx.path("rejected.jsonl"), new_rejected)
        ctx.checkpoint.commit("instructions", FILES, {"requests": sent, "failed": retry + failed})
        bar.set_postfix(requests=sent)
    bar.close()


def filter_response(completion, first: int, request_id: str, index: RougeIndex, cfg, prompt: str = ""):
    """Accepted records (without id) and rejected records of one response, in response order."""
    f = cfg.filters
    if not completion.ok:
        return [], [{"candidate": "", "rule": "request_error", "detail": completion.error,
                     "request_id": request_id}]
    if not completion.text.strip():
        return [], [{"candidate": "", "rule": "empty_response", "detail": "the model returned no text",
                     "finish_reason": completion.finish_reason, "request_id": request_id}]
    if cfg.prompt.name == "alpaca":  # whole tasks: instruction, input, output
        tasks = alpaca.parse_tasks(completion.text, first, cfg.prompt.num_tasks_per_request)
    else:
        tasks = [{"instruction": c} for c in parse_instruction_list(completion.text, first)]
    candidates = [normalize(t["instruction"], cfg.prompt.capitalize) for t in tasks]
    if not candidates:
        return [], [{"candidate": completion.text[:500], "rule": "parse_failure",
                     "detail": "no numbered instruction in the response", "request_id": request_id}]
    if completion.finish_reason == "length" and f.discard_truncated_response:
        return [], [{"candidate": c, "rule": "truncated_response",
                     "detail": "the response hit max_tokens; the paper discards it whole",
                     "request_id": request_id} for c in candidates]
    rejected, passing, fields = [], [], []
    segments = prompt_segments(prompt) if f.reject_degenerate else None
    for k, (candidate, task) in enumerate(zip(candidates, tasks)):
        broken = None
        if cfg.prompt.name == "alpaca":  # Alpaca drops the cut last task and tasks without output
            if k == len(tasks) - 1 and completion.finish_reason == "length":
                broken = "truncated_response", "the last task of a response that hit max_tokens"
            elif task["output"] is None:
                broken = "incomplete_task", "no Output field"
        broken = broken or check_instruction(candidate, f)
        if not broken and segments is not None:
            broken = check_degenerate(candidate, segments)
        if broken:
            rejected.append({"candidate": candidate, "rule": broken[0], "detail": broken[1],
                             "request_id": request_id})
        else:
            passing.append(candidate)
            fields.append({key: value for key, value in task.items() if key != "instruction"})
    kept = []
    decisions = index.filter(passing, f.rouge_threshold, f.top_k_similar)
    for candidate, extra, decision in zip(passing, fields, decisions):
        accepted, record = novelty_record(candidate, decision, f.rouge_threshold)
        record["request_id"] = request_id
        if accepted:
            record.update(extra)  # alpaca: the task's input and output
        (kept if accepted else rejected).append(record)
    return kept, rejected
