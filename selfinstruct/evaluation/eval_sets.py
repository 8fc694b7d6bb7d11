"""Evaluation sets: held-out tasks with a reference answer, read into one shape (`EvalTask`).

Three sources:
* our default set, `selfinstruct/data/eval_tasks.jsonl` (written for this project, with an
  `is_classification` flag per task so that exact match can be scored);
* `evaluate.path=FILE` in the original `human_eval/user_oriented_instructions.jsonl` format (id,
  motivation_app, instruction, instances: [{input, output}]). That file does not say which tasks are
  classification tasks, and we do not guess: is_classification is None there, which means "not
  scored by exact match" (ROUGE-L and the judge still apply);
* any dataset format that `stages=[analyze]` reads (`selfinstruct.formats.load_dataset`), as long as
  every record has an output to serve as the reference.

A task with several instances gives one EvalTask per instance (ids `ID/0`, `ID/1`, ...); the 252
original tasks and our default set have one instance each, so their ids stay as in the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from selfinstruct.datasets.formats import load_dataset
from selfinstruct.files import DataError, iter_jsonl, read_text

DEFAULT_EVAL_SET = Path(__file__).resolve().parents[1] / "data" / "eval_tasks.jsonl"


@dataclass(frozen=True)
class EvalTask:
    id: str
    instruction: str
    input: str  # "" when the task stands alone
    reference: str  # the reference output answers are scored against
    is_classification: Optional[bool]  # None: unknown, so not scored by exact match
    source: str = ""  # the file the task came from
    source_format: str = ""  # "user_oriented" or a formats.load_dataset format name
    motivation_app: Optional[str] = None

    def to_record(self) -> dict:
        return asdict(self)


def load_eval_set(path: str | Path | None = None) -> list[EvalTask]:
    """The tasks of an evaluation set file (None: our default set); DataError naming the file and
    line (or record) when it is malformed."""
    path = Path(path) if path is not None else DEFAULT_EVAL_SET
    text = read_text(path)  # DataError for a missing or non-UTF-8 file
    if not text.lstrip().startswith("["):  # JSONL: is it the user-oriented format?
        if "instances" in _first_record(path, text):
            return _load_user_oriented(path, text)
    return _load_any_dataset(path)


def _first_record(path: Path, text: str) -> dict:
    for _, record in iter_jsonl(path, text):
        return record
    raise DataError(f"{path}: no records")


def _string(record: dict, key: str, where: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in record else type(value).__name__
        raise DataError(f"{where}: field {key!r} must be a string ({got})")
    return value


def _load_user_oriented(path: Path, text: str) -> list[EvalTask]:
    """The original user_oriented_instructions.jsonl format (also our default set's), strictly:
    every line a task with a non-empty instruction and at least one instance with an output."""
    tasks: list[EvalTask] = []
    seen: dict[str, int] = {}
    for number, r in iter_jsonl(path, text):
        where = f"{path}:{number}"
        task_id = r.get("id", f"task_{len(seen)}")
        if not isinstance(task_id, str) or not task_id:
            raise DataError(f"{where}: field 'id' must be a non-empty string")
        if task_id in seen:
            raise DataError(f"{where}: duplicate id {task_id!r} (first on line {seen[task_id]})")
        seen[task_id] = number
        instruction = _string(r, "instruction", where).strip()
        if not instruction:
            raise DataError(f"{where}: empty instruction")
        flag = r.get("is_classification")
        if flag is not None and not isinstance(flag, bool):
            raise DataError(f"{where}: field 'is_classification' must be true, false or absent")
        app = r.get("motivation_app")
        instances = r.get("instances")
        if not isinstance(instances, list) or not instances:
            raise DataError(f"{where}: field 'instances' must be a non-empty list")
        for k, inst in enumerate(instances):
            at = f"{where} instances[{k}]"
            if not isinstance(inst, dict):
                raise DataError(f"{at}: must be an object")
            output = _string(inst, "output", at).strip()
            if not output:
                raise DataError(f"{at}: empty output (an evaluation task needs a reference)")
            tasks.append(EvalTask(
                id=task_id if len(instances) == 1 else f"{task_id}/{k}",
                instruction=instruction,
                input=_string(inst, "input", at, required=False).strip(),
                reference=output,
                is_classification=flag,
                source=str(path),
                source_format="user_oriented",
                motivation_app=app if isinstance(app, str) else None,
            ))
    if not tasks:
        raise DataError(f"{path}: no records")
    return tasks


def _load_any_dataset(path: Path) -> list[EvalTask]:
    """Any format `analyze` reads; records must carry an output (the reference)."""
    dataset = load_dataset(path)  # DataError naming file and line/record for malformed files
    tasks = []
    for n, r in enumerate(dataset.records):
        if not r["output"]:
            what = ("holds instructions only" if not dataset.has_instances
                    else "has an empty output")
            # n counts instances (a record of some formats holds several), so name the task too
            raise DataError(f"{path}: task {n + 1} ({r['instruction'][:60]!r}, {dataset.format} "
                            f"format) {what}; an evaluation set needs a reference output for "
                            f"every task")
        tasks.append(EvalTask(
            id=f"task_{n}", instruction=r["instruction"], input=r["input"] or "",
            reference=r["output"], is_classification=r["is_classification"],
            source=str(path), source_format=dataset.format,
        ))
    return tasks
