"""The model judge of data quality: the paper's three questions (Sec. 3.3, Table 2), asked one per
request with a Yes/No answer. The questions follow the paper; the wording around them is ours."""

from __future__ import annotations

import re
from typing import Optional

# name -> (question, which fields the judge sees)
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "valid_instruction": (
        "Does the instruction describe a valid task, one that is clear and that a language model "
        "could carry out?", ("instruction",)),
    "appropriate_input": (
        "Is the input an appropriate input for the instruction? An empty input is appropriate when "
        "the task needs none.", ("instruction", "input")),
    "correct_output": (
        "Is the output a correct and acceptable response to the instruction and the input?",
        ("instruction", "input", "output")),
}

HEADER = ("We are checking machine-written examples for training a model to follow instructions. "
          "Read the example and answer the question with Yes or No.\n\n")


def build_prompt(question: str, instruction: str, input: str, output: str) -> str:
    text, fields = QUESTIONS[question]
    values = {"instruction": instruction, "input": input.strip() or "(empty)", "output": output}
    shown = "\n".join(f"{name.capitalize()}: {values[name].strip()}" for name in fields)
    return f"{HEADER}{shown}\n\nQuestion: {text}\nAnswer (Yes or No):"


_ANSWER = re.compile(r"^[\s*_`\"'>#:-]*(yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> Optional[bool]:
    """True for yes, False for no, None for anything else (counted as unparsed, not as no)."""
    match = _ANSWER.match(text or "")
    return None if match is None else match.group(1).lower() == "yes"
