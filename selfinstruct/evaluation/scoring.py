"""Model-free scores of an answer against a task's reference, and their means.

ROUGE-L F is the project's exact one (`selfinstruct.rouge.rouge_l_f`, bit-identical to
`rouge_score.RougeScorer(["rougeL"])` without stemming), the paper's SuperNI metric. On the paper's
released predictions of the 252 user-oriented tasks it gives the means quoted in DESIGN.md
(tests/test_evaluation_parts.py recomputes them).
"""

from __future__ import annotations

import re
import string
from typing import Iterable

from selfinstruct.filtering.rouge import rouge_l_f
from selfinstruct.evaluation.eval_sets import EvalTask

# Stripped from both ends of a label: ASCII punctuation plus typographic quotes, dashes and the
# ellipsis, which models write around labels ("**Positive**", "“spam”.", "- yes").
_EDGE = string.punctuation + "“”‘’«»–—…"
_SPACES = re.compile(r"\s+")


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F of an answer (prediction) against the reference (target)."""
    return rouge_l_f(reference, answer)


def normalize_label(text: str) -> str:
    """A text reduced for label comparison:

    1. its first non-empty line (a model often puts the label on the first line and an explanation
       below it; anything after the first line is ignored);
    2. whitespace and the characters of `_EDGE` (ASCII punctuation, typographic quotes, dashes,
       the ellipsis) stripped from both ends, repeatedly, so "**Spam.**" -> "Spam";
    3. inner runs of whitespace collapsed to one space;
    4. case-folded.

    Punctuation inside the label stays ("entry-level", "not spam").
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    previous = None
    while previous != line:  # alternate whitespace and punctuation until nothing changes
        previous = line
        line = line.strip().strip(_EDGE)
    return _SPACES.sub(" ", line).casefold()


def exact_match(answer: str, reference: str) -> bool:
    """True when normalize_label(answer) == normalize_label(reference) and the label is not empty.
    "Negative", " negative.\\n", "**NEGATIVE**" and "negative\\nThe review complains..." all match
    "negative"; "The review is negative" and "negative, because..." do not (the label must stand
    alone on the first line)."""
    label = normalize_label(reference)
    return bool(label) and normalize_label(answer) == label


def score(answer: str, task: EvalTask) -> dict:
    """{"rougeL": F, "exact_match": bool, or None unless the task is known to be classification}."""
    return {"rougeL": rouge_l(answer, task.reference),
            "exact_match": exact_match(answer, task.reference) if task.is_classification else None}


def aggregate(scores: Iterable[dict]) -> dict:
    """Means over per-task scores (as returned by `score`):

    rougeL            mean ROUGE-L F over all tasks (None for no tasks)
    exact_match       share of exact matches over the tasks scored by exact match, i.e. the
                      classification tasks (None when there are none)
    num_tasks, num_exact_match_tasks
    """
    scores = list(scores)
    em = [s["exact_match"] for s in scores if s.get("exact_match") is not None]
    return {
        "rougeL": sum(s["rougeL"] for s in scores) / len(scores) if scores else None,
        "exact_match": sum(em) / len(em) if em else None,
        "num_tasks": len(scores),
        "num_exact_match_tasks": len(em),
    }

