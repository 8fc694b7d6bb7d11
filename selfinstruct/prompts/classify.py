"""Classification identification (DESIGN.md step 4): a few-shot Yes/No prompt per instruction.

The demonstrations (selfinstruct/data/classify_demos.jsonl) come first and the instruction to judge
last, so every request shares one long prefix that llama.cpp evaluates once and then reuses.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from selfinstruct.files import DataError, read_jsonl

DEMOS = Path(__file__).resolve().parents[1] / "data" / "classify_demos.jsonl"

# The question is the paper's; the framing around it is ours.
QUESTION = "Can the following task be regarded as a classification task with finite output labels?"
HEADER = (
    "A classification task is one whose every correct answer is a label taken from a small, fixed "
    "set (for example yes/no, positive/negative, or one of a few named categories). For each task "
    f"below we ask: {QUESTION}\n\n"
)
# The chat framing asks about one task after the judged examples, and for a one-word reply: chat
# models otherwise judge the examples again or explain their answer.
CHAT_TEMPLATE = (
    "A classification task is one whose every correct answer is a label taken from a small, fixed "
    "set (for example yes/no, positive/negative, or one of a few named categories). Here are some "
    "tasks, each with the right answer:\n\n{demos}\n\nNow the task to judge. {question}\n\n"
    "Task: {instruction}\n\nReply with one word: Yes or No."
)


@lru_cache(maxsize=4)
def load_demos(path: str | Path = DEMOS) -> tuple[tuple[str, bool], ...]:
    """(instruction, is_classification) pairs; a malformed line fails naming file and line."""
    demos = []
    for number, record in enumerate(read_jsonl(path), 1):
        instruction, label = record.get("instruction"), record.get("is_classification")
        if not isinstance(instruction, str) or not isinstance(label, bool):
            raise DataError(f"{path}: record {number} needs a string `instruction` and a boolean "
                            "`is_classification`")
        demos.append((instruction.strip(), label))
    return tuple(demos)


def _block(instruction: str, answer: Optional[bool]) -> str:
    tail = "" if answer is None else (" Yes" if answer else " No")
    return f"Task: {instruction}\nClassification:{tail}"


def build_prompt(instruction: str, *, chat: bool, demos=None) -> str:
    demos = load_demos() if demos is None else demos
    shown = "\n\n".join(_block(text, label) for text, label in demos)
    if chat:
        return CHAT_TEMPLATE.format(demos=shown, question=QUESTION, instruction=instruction.strip())
    return f"{HEADER}{shown}\n\n{_block(instruction.strip(), None)}"


_ANSWER = re.compile(r"^[\s*_`\"'>#:-]*(?:(?:classification|answer)[\s*_:]*)?(yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> Optional[bool]:
    """True for a "yes" answer, False for "no", None when the answer is neither. Stripped and case
    insensitive as in the paper; punctuation or markdown around the word ("Yes.", "**No**", "No,
    the") and the demonstrations' label before it ("Classification: No") are allowed because chat
    models add them."""
    match = _ANSWER.match(text or "")
    return None if match is None else match.group(1).lower() == "yes"
