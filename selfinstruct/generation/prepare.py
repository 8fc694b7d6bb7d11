"""The final dataset (DESIGN.md steps 6-7): parse each task's raw completion, apply the instance
filters, and write

    data.jsonl          id (of the instruction), instruction, input, output, is_classification
    finetune.jsonl      prompt, completion: the paper's randomly varied prompt formats
    alpaca.json         a JSON list of instruction, input, output

from the run's files alone (or from a dataset file given as input=PATH), deterministically given
cfg.seed, each file replaced atomically; the instance filter losses and parse failures go to
stats.json. prepare.num_instructions fine-tunes on a subsample of the instructions (the paper's
data-size curve); data.jsonl keeps them all. When the prompt style's tasks carry their instance
(prompt=alpaca) there is no classify or instances stage, and is_classification is null: nothing
asked.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from typing import Optional

from tqdm import tqdm

from selfinstruct.datasets.formats import load_dataset
from selfinstruct.errors import DataError, RunError
from selfinstruct.filtering.instance_rules import RULES, filter_instances

log = logging.getLogger(__name__)

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


def plain_input(text: str) -> str:
    """An input without the field name of a single-field input ("Sentence: It rained." -> "It
    rained.") and with blank lines turned into single line breaks."""
    if len(set(_FIELD_NAME.findall(text))) == 1:
        text = text.split(":", 1)[1].strip()
    return text.replace("\n\n", "\n")


def vary_input(text: str, rng: random.Random) -> str:
    """Half the time the plain input, as in the paper's data."""
    return plain_input(text) if rng.random() < 0.5 else text


def render(template: tuple, instruction: str, inp: str = "") -> str:
    """The prompt of one format, a WITH_INPUT or a WITHOUT_INPUT entry."""
    if len(template) == 5:
        prefix, after, label, before, marker = template
        return f"{prefix}{instruction}{after}{label}{inp}{before}{marker}"
    prefix, before, marker = template
    return f"{prefix}{instruction}{before}{marker}"


def encode(instruction: str, inp: str, out: str, rng: random.Random, *, random_templates: bool,
           end_token: str) -> dict:
    """One finetuning pair; a random format when random_templates, else the first of each list."""
    if inp.strip():
        if random_templates:
            inp = vary_input(inp, rng)
        template = rng.choice(WITH_INPUT) if random_templates else WITH_INPUT[0]
    else:
        template = rng.choice(WITHOUT_INPUT) if random_templates else WITHOUT_INPUT[1]
    space = " " if template[-1] else ""  # after an "Output:" marker the completion starts with a space
    return {"prompt": render(template, instruction, inp), "completion": space + out + end_token}


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
        kept, lost = filter_instances(pairs, truncated=truncated, f=f, instruction=task["instruction"],
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


def data_from_input(ctx) -> tuple[list[dict], dict]:
    """data.jsonl records from a dataset file (input=PATH: any format stages=[analyze] reads that
    has outputs), taken as they are: fine-tuning data, or a data-size curve, from data generated
    elsewhere (another run's data.jsonl, the original all_generated_instances.jsonl, Alpaca JSON)."""
    run, path = ctx.run, ctx.cfg.input
    if run.instructions.exists():
        raise RunError(f"{run.root} holds a generation run; preparing input={path} there would replace "
                       "its dataset: leave hydra.run.dir unset (a new run dir), or drop input=")
    dataset = load_dataset(path)
    if not dataset.has_instances:
        raise DataError(f"{path}: holds instructions only ({dataset.format} format); prepare needs instances")
    ids: dict[str, str] = {}
    data = [{"id": ids.setdefault(r["instruction"], f"input_{len(ids)}"), "instruction": r["instruction"],
             "input": r["input"] or "", "output": r["output"], "is_classification": r["is_classification"]}
            for r in dataset.records if r["output"] is not None]
    return data, {}


def subsample(data: list[dict], n: Optional[int], seed: int) -> list[dict]:
    """The records of n instructions (prepare.num_instructions; all for None): the n first in one
    fixed random order, in which each instruction's place follows from the seed and its text, so a
    smaller n keeps a subset of a larger n's instructions, and more data never reshuffles them.
    (The original's prepare_for_finetuning --num_instructions draws a fresh sample per n.)"""
    texts = list(dict.fromkeys(r["instruction"] for r in data))
    if n is None or n >= len(texts):
        if n is not None:
            log.warning("prepare: num_instructions=%d, but the data has %d instructions: using all",
                        n, len(texts))
        return data
    keep = set(sorted(texts, key=lambda text: random.Random(f"{seed}/{text}").random())[:n])
    return [r for r in data if r["instruction"] in keep]


def run_prepare(ctx) -> None:
    cfg, run = ctx.cfg, ctx.run
    data, stats = build_data(ctx) if cfg.input is None else data_from_input(ctx)
    # data.jsonl keeps every instruction; the fine-tuning files hold the subsample
    chosen = subsample(data, cfg.prepare.num_instructions, cfg.seed)
    if cfg.prepare.num_instructions is not None:
        stats["data/num_finetune_instructions"] = len({r["instruction"] for r in chosen})
    examples = [(r["instruction"], r["input"], r["output"]) for r in chosen]
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
