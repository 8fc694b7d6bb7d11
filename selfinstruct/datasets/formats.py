"""Reads any instruction dataset into one record shape, for `stages=[analyze] input=PATH`.

A normalised record is one instance of a task:
    {"instruction": str, "input": str | None, "output": str | None, "is_classification": bool | None}
input/output are None for files that hold instructions only (one record per instruction), and
is_classification is None where the file does not say.

The format is detected from the keys of the first record (most specific format first); every record
must then have that format's keys. Known formats, with real examples in ../shared/data/runs:
this project's data.jsonl / alpaca.json / instructions.jsonl / finetune.jsonl, the original
self-instruct stage files (machine_generated_instructions, machine_generated_instances with
raw_instances, is_clf_or_not_*, all_generated_instances, gpt3_finetuning_data_*), seed_tasks.jsonl,
and Stanford Alpaca JSON lists (regen.json, alpaca_data.json).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from selfinstruct.files import DataError, read_located_records


def record(instruction: str, input: Optional[str] = None, output: Optional[str] = None,
           is_classification: Optional[bool] = None) -> dict:
    return {"instruction": instruction.strip(),
            "input": None if input is None else input.strip(),
            "output": None if output is None else output.strip(),
            "is_classification": is_classification}


def parse_flag(value) -> Optional[bool]:
    """is_classification as a bool: booleans as they are; the original code's raw answers (" Yes",
    "No", "No, the") mean classification only when the stripped answer is exactly yes, as there."""
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() == "yes"


# --- the original self-instruct raw instance completions (prepare_for_finetuning's parsing) -------

def _finish_reason(metadata) -> Optional[str]:
    try:
        return metadata["response"]["choices"][0]["finish_reason"]
    except (KeyError, IndexError, TypeError):
        return None  # e.g. a Hugging Face pipeline's [{generated_text}]


def parse_raw_instances(text: str, truncated: bool) -> tuple[bool, list[tuple[str, str]]]:
    """(is_classification, [(input, output)]) of one raw instance completion of the original code:
    classification tasks were prompted output-first (label lines), others input-first. The same
    parser as our prepare stage (checked against real runs in tests/test_fidelity.py). The last
    instance of a length-truncated completion is dropped, as it is usually cut off; no other filter
    is applied."""
    from selfinstruct.prompts.instances import LABEL_LINE, parse_instances

    clf = bool(LABEL_LINE.search(text))
    pairs = parse_instances(text, output_first=clf)
    if truncated:
        pairs = pairs[:-1]
    return clf, pairs


# --- prompt/completion finetuning data ------------------------------------------------------------

_TASK_PREFIX = re.compile(r"^\s*Task:\s*")
_OUTPUT_SUFFIX = re.compile(r"\s*Output:\s*$")
_INPUT_LINE = re.compile(r"\n\s*Input:\s*")


def split_finetuning_prompt(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a finetuning prompt. The original code (and ours) renders
    "[Task: ]{instruction}<sep>[Input: ]{input}<sep>[Output:]" with random separators, so: drop the
    "Task:" prefix and "Output:" suffix, split at an "Input:" line if there is one, else at the first
    line break. Instructions that themselves span several lines are split too early: no template
    marks where they end."""
    text = _OUTPUT_SUFFIX.sub("", _TASK_PREFIX.sub("", prompt)).strip()
    parts = _INPUT_LINE.split(text, maxsplit=1)
    if len(parts) == 2:
        return parts[0].strip(), parts[1].strip()
    instruction, _, inp = text.partition("\n")
    return instruction.strip(), inp.strip()


def _completion_text(completion: str) -> str:
    return completion.replace("<|endoftext|>", "").strip()


# --- the formats ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    name: str
    keys: tuple[str, ...]  # fields every record must have
    description: str
    parse: Callable[[dict], list[dict]]
    has_instances: bool = True  # False: the file holds instructions only


@dataclass
class Dataset:
    format: str
    records: list[dict]  # normalised, see the module docstring
    has_instances: bool  # whether instance counts and lengths are meaningful (0 is a count then)


def _raw_instances(r: dict) -> list[dict]:
    truncated = _finish_reason(r.get("instance_metadata")) == "length"
    clf, pairs = parse_raw_instances(r["raw_instances"] or "", truncated)
    if not pairs:  # keep the task: it counts as an instruction even with no usable instance
        return [record(r["instruction"], is_classification=clf)]
    return [record(r["instruction"], i, o, clf) for i, o in pairs]


FORMATS: tuple[Format, ...] = (
    Format("selfinstruct_raw_instances", ("instruction", "raw_instances"),
           "self-instruct machine_generated_instances.jsonl (raw instance completions)", _raw_instances),
    Format("class_label_instances", ("instruction", "instance", "class_label"),
           "one input per class label (instruction, instance, class_label)",
           lambda r: [record(r["instruction"], r["instance"] or "", r["class_label"] or "",
                             parse_flag(r.get("is_classification", True)))]),
    Format("seed_tasks", ("instruction", "instances"),
           "seed_tasks.jsonl (instruction, instances: [{input, output}])",
           lambda r: [record(r["instruction"], i.get("input", "") or "", i.get("output", "") or "",
                             parse_flag(r.get("is_classification"))) for i in r["instances"]]
           or [record(r["instruction"], is_classification=parse_flag(r.get("is_classification")))]),
    Format("instances", ("instruction", "output"),
           "instruction/input/output records: data.jsonl, all_generated_instances.jsonl, Alpaca JSON",
           lambda r: [record(r["instruction"], r.get("input", "") or "", r["output"] or "",
                             parse_flag(r.get("is_classification")))]),
    Format("finetuning", ("prompt", "completion"),
           "prompt/completion finetuning data (gpt3_finetuning_data_*.jsonl, finetune.jsonl)",
           lambda r: [record(*split_finetuning_prompt(r["prompt"]), _completion_text(r["completion"]))]),
    Format("classification", ("instruction", "is_classification"),
           "is_clf_or_not_*.jsonl (instruction, is_classification)",
           lambda r: [record(r["instruction"], is_classification=parse_flag(r["is_classification"]))],
           has_instances=False),
    Format("instructions", ("instruction",),
           "instruction lists: machine_generated_instructions.jsonl, instructions.jsonl",
           lambda r: [record(r["instruction"])], has_instances=False),
)


def detect_format(first: dict) -> Optional[Format]:
    for fmt in FORMATS:
        if all(k in first for k in fmt.keys):
            return fmt
    return None


def _expected() -> str:
    return "; ".join(f"{f.description} [{', '.join(f.keys)}]" for f in FORMATS)


_TEXT_FIELDS = ("instruction", "prompt", "completion")  # what every reader of a record strips


def check_text_fields(where: str, r: dict, keys: tuple[str, ...]) -> None:
    """DataError naming the record (FILE:LINE) unless its text fields among `keys` are strings."""
    for key in keys:
        if key in _TEXT_FIELDS and not isinstance(r.get(key), str):
            raise DataError(f"{where}: field '{key}' is {json.dumps(r.get(key))[:40]}, not a string")


def load_instructions(path: str | Path) -> list[dict]:
    """The raw records of a file of instructions (any format with a string `instruction` field),
    for `stages=[dedup] input=PATH`."""
    located = read_located_records(path)
    for where, r in located:
        check_text_fields(where, r, ("instruction",))
    return [r for _, r in located]


def load_dataset(path: str | Path) -> Dataset:
    """The normalised records of a dataset file; DataError naming the file otherwise."""
    path = Path(path)
    located = read_located_records(path)
    if not located:
        raise DataError(f"{path}: no records")
    fmt = detect_format(located[0][1])
    if fmt is None:
        raise DataError(f"{path}: unknown dataset format: the first record has fields "
                        f"{sorted(located[0][1])}; expected one of: {_expected()}")
    records: list[dict] = []
    for where, r in located:
        missing = [k for k in fmt.keys if k not in r]
        if missing:
            raise DataError(f"{where}: the record lacks {missing} of the {fmt.name} format "
                            f"({fmt.description}) detected from the first record")
        check_text_fields(where, r, fmt.keys)
        try:
            parsed = fmt.parse(r)
        except (AttributeError, TypeError) as e:  # another field of the wrong type, e.g. a number
            raise DataError(f"{where}: malformed {fmt.name} record ({e})") from None
        similar = r.get("most_similar", r.get("most_similar_instructions"))
        if isinstance(similar, dict):  # the generator's nearest pool neighbours, for sample tables
            for p in parsed:
                p["most_similar"] = similar
        records.extend(parsed)
    return Dataset(fmt.name, records, fmt.has_instances)


def load_run_dir(run_dir: str | Path) -> Dataset:
    """A run's dataset from its own files: every accepted instruction (instructions.jsonl) with its
    classification (classification.jsonl) and instances (data.jsonl, once prepare has run). Tasks
    without a valid instance count as instructions, as in the paper's Table 1."""
    from selfinstruct.rundir import RunDir

    run = RunDir(run_dir)
    accepted, labels, data = (run.records(path) for path in run.dataset_files)
    flags = {r.get("id"): parse_flag(r.get("is_classification")) for r in labels}
    records = [record(r["instruction"], r.get("input", "") or "", r.get("output", "") or "",
                      parse_flag(r.get("is_classification"))) for r in data]
    with_instances = {r["instruction"] for r in records}
    records += [record(r["instruction"], is_classification=flags.get(r.get("id")))
                for r in accepted if r["instruction"].strip() not in with_instances]
    similar = {r["instruction"].strip(): r["most_similar"] for r in accepted
               if isinstance(r.get("most_similar"), dict)}
    for r in records:
        if r["instruction"] in similar:
            r["most_similar"] = similar[r["instruction"]]
    return Dataset("run_dir", records, has_instances=run.data.exists())
