"""Existing answers to score with no model (`stages=[evaluate] evaluate.predictions=FILE`).

The format is that of the paper's released `human_eval/predictions/*.jsonl`, one answer per line:

    prompt       the prompt the model was given (optional here: we score, we do not re-ask)
    instruction  the task's instruction
    input        the task's input ("" when none)
    response     the model's raw answer, as generated (often with a leading space or line break)
    target       the reference output (the task's instance output in user_oriented_instructions)

Optional fields: `id` (else `prediction_N`, N the 0-based record number, so the eight released
files, which list the 252 tasks in the same order, line up task by task) and `is_classification`
(else None: these files do not say, and a None task is not scored by exact match).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfinstruct.files import DataError, iter_jsonl
from selfinstruct.evaluation.eval_sets import EvalTask

REQUIRED = ("instruction", "input", "response", "target")


@dataclass(frozen=True)
class Prediction:
    task: EvalTask
    answer: str  # the response field exactly as in the file


def load_predictions(path: str | Path) -> list[Prediction]:
    """(task, answer) records of a predictions file; DataError naming file and line otherwise."""
    path = Path(path)
    out: list[Prediction] = []
    for number, r in iter_jsonl(path):
        where = f"{path}:{number}"
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise DataError(f"{where}: lacks {missing} of the predictions format "
                            f"({', '.join(REQUIRED)})")
        for k in REQUIRED:
            if not isinstance(r[k], str):
                raise DataError(f"{where}: field {k!r} must be a string, got {type(r[k]).__name__}")
        if not r["target"].strip():
            raise DataError(f"{where}: empty target (nothing to score the response against)")
        flag = r.get("is_classification")
        if flag is not None and not isinstance(flag, bool):
            raise DataError(f"{where}: field 'is_classification' must be true, false or absent")
        task = EvalTask(id=str(r.get("id", f"prediction_{len(out)}")),
                        instruction=r["instruction"].strip(), input=r["input"].strip(),
                        reference=r["target"].strip(), is_classification=flag,
                        source=str(path), source_format="predictions")
        out.append(Prediction(task, r["response"]))
    if not out:
        raise DataError(f"{path}: no records")
    return out
