"""The final dataset (DESIGN.md steps 6-7): parse each task's raw completion, apply the instance
filters, and write

    data.jsonl          id (of the instruction), instruction, input, output, is_classification
    finetune.jsonl      prompt, completion: the paper's randomly varied prompt formats
    alpaca.json         a JSON list of instruction, input, output

from the run's files alone, deterministically given cfg.seed, each file replaced atomically; the
instance filter losses and parse failures go to stats.json. When the prompt style's tasks carry
their instance (prompt=alpaca) there is no classify or instances stage, and is_classification is
null: nothing asked.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from tqdm import tqdm

from selfinstruct.filtering.instance_rules import RULES, filter_instances

# The finetuning prompt formats, facts of the paper's finetuning data: an optional "Task: " prefix,
# the input with or without an "Input: " label, one or two line breaks between the parts, and the
# prompt ending in "Output:" (the completion then starts with a space) or in the line breaks alone.
# (task prefix, break after the instruction, input label, break before the output, output marker)
WITH_INPUT = [
    ("", "\n", "Input: ", "\n", "Output:"),
    ("", "\n\n", "Input: ", "\n\n", "Output:"),
    ("Task: ", "\n", "Input: ", "\n", "Output:"),
    ("", "\n\n", "", "\n\n", "Output:"),
    ("", "\n\n", "", "\n\n", ""),
    ("", "\n", "", "\n\n", ""),
    ("Task: ", "\n\n", "", "\n\n", ""),
]
# (task prefix, break before the output, output marker)
WITHOUT_INPUT = [
    ("", " ", "Output:"),
    ("", "\n", "Output:"),
    ("", "\n\n", "Output:"),
    ("", "\n", ""),
    ("", "\n\n", ""),
    ("Task: ", "\n\n", ""),
]
_FIELD_NAME = re.compile(r"(\w+):")


def vary_input(text: str, rng: random.Random) -> str:
    """Half the time, as in the paper's data: drop the field name of a single-field input
    ("Sentence: It rained." -> "It rained.") and turn blank lines into single line breaks."""
    if rng.random() < 0.5:
        if len(set(_FIELD_NAME.findall(text))) == 1:
            text = text.split(":", 1)[1].strip()
        text = text.replace("\n\n", "\n")
    return text


def encode(instruction: str, inp: str, out: str, rng: random.Random, *, random_templates: bool,
           end_token: str) -> dict:
    """One finetuning pair; a random format when random_templates, else the first of each list."""
    if inp.strip():
        if random_templates:
            inp = vary_input(inp, rng)
        prefix, after, label, before, marker = rng.choice(WITH_INPUT) if random_templates else WITH_INPUT[0]
        prompt = f"{prefix}{instruction}{after}{label}{inp}{before}{marker}"
    else:
        prefix, before, marker = rng.choice(WITHOUT_INPUT) if random_templates else WITHOUT_INPUT[1]
        prompt = f"{prefix}{instruction}{before}{marker}"
    return {"prompt": prompt, "completion": (" " if marker else "") + out + end_token}


def build_data(ctx) -> tuple[list[dict], dict]:
    """data.jsonl records in instruction order, and the statistics of how they were obtained."""
    cfg, f, run, style = ctx.cfg, ctx.cfg.filters, ctx.run, ctx.style
    instructions = run.instruction_records("prepare")
    carried = style.tasks_carry_instances
    raw = {} if carried else {r["id"]: r for r in run.records(run.instances_raw)}
    losses: Counter = Counter()
    failure_reasons: Counter = Counter()  # why a completion gave no instance
    parsed, kept_counts, data = 0, [], []
    for task in tqdm(instructions, desc="prepare", unit="inst"):
        if carried:
            pairs, truncated, is_clf = [(task.get("input", ""), task.get("output", ""))], False, None
        elif task["id"] in raw:
            r = raw[task["id"]]
            is_clf = bool(r["is_classification"])
            pairs = style.parse_instances(r["raw"], is_clf)
            truncated = r["finish_reason"] == "length"
            if not pairs:
                failure_reasons[style.why_no_instances(r["raw"], is_clf)[0]] += 1
        else:
            continue  # no instances generated yet (the instances stage has not reached it)
        parsed += len(pairs)
        # A per-task rng: the 5-per-task choice of a task does not change when the run grows.
        kept, lost = filter_instances(pairs, truncated=truncated, f=f,
                                      rng=random.Random(f"{cfg.seed}/{task['id']}"))
        losses.update(lost)
        kept_counts.append(len(kept))
        data += [{"id": task["id"], "instruction": task["instruction"], "input": i, "output": o,
                  "is_classification": is_clf} for i, o in kept]

    stats = {f"quality/instance_filter/{rule}": losses.get(rule, 0) for rule in RULES}
    clf_failures = 0 if carried else sum(style.parse_classification(r["raw"]) is None
                                         for r in run.records(run.classification))
    parse_failures = sum(failure_reasons.values())
    stats.update({f"quality/parse_failures/instances/{reason}": n for reason, n in failure_reasons.items()})
    stats.update({
        "quality/parse_failures/instances": parse_failures,
        "quality/parse_failures/classify": clf_failures,
        "data/num_parsed_instances": parsed,
        "data/num_tasks_with_completion": len(kept_counts),
        "data/num_tasks_without_instances": sum(n == 0 for n in kept_counts),
    })
    return data, stats


def run_prepare(ctx) -> None:
    cfg, run = ctx.cfg, ctx.run
    data, stats = build_data(ctx)
    examples = [(r["instruction"], r["input"], r["output"]) for r in data]
    if cfg.prepare.include_seeds:
        examples += [(t.instruction, i.input, i.output) for t in ctx.seeds for i in t.instances]
    rng = random.Random(cfg.seed)
    finetune, seen = [], set()
    for instruction, inp, out in examples:
        pair = encode(instruction.strip(), inp.strip(), out.strip(), rng,
                      random_templates=cfg.prepare.random_templates, end_token=cfg.prepare.end_token)
        key = (pair["prompt"], pair["completion"])
        if key not in seen:  # equal pairs teach nothing twice
            seen.add(key)
            finetune.append(pair)
    rng.shuffle(finetune)
    stats["data/num_finetune_pairs"] = len(finetune)
    run.replace_jsonl(run.data, data, "prepare")
    run.replace_jsonl(run.finetune_data, finetune, "prepare")
    run.replace_json(run.alpaca, [{"instruction": i, "input": x, "output": o} for i, x, o in examples], "prepare")
    run.save_stats("prepare", stats, inputs=[run.instructions, run.classification, run.instances_raw])
