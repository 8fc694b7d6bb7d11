"""How a model is asked to answer an evaluation task, and how its completion becomes an answer.

The base and the tuned model get the very same prompt and stop rules, so the difference in their
scores is what tuning did. The prompt is the fixed finetuning format (`prepare.encode` with
random_templates=false): the tuned model sees exactly the format it was trained on, and the base
model a plain completion prompt ending in "Output:", as the paper's davinci baseline did.
"""

from __future__ import annotations

import random

from selfinstruct.generation.prepare import encode


def answer_prompt(instruction: str, input: str = "") -> str:
    """The prompt for one task, e.g. "Is 91 prime?\\nOutput:" or
    "Translate to French.\\nInput: Good morning\\nOutput:" (the completion starts with a space)."""
    # random_templates=False picks the first template and never draws from the rng.
    pair = encode(instruction.strip(), input.strip(), "", random.Random(0),
                  random_templates=False, end_token="")
    return pair["prompt"]


def answer_stop(end_token: str) -> list[str]:
    """Stop sequences for answer completions: the end token the tuned model was taught to write
    after each output (`prepare.end_token`), nothing else.

    Deliberately not a blank line: reference outputs have blank lines (emails, code, lists), and a
    model that learned to stop is part of what tuning buys; a base model that runs on into invented
    "Input:" examples is scored as it is, as in the paper (its davinci answers run on so, hence
    ROUGE-L 0.027). With end_token "" there is no taught marker, and the model's own end-of-sequence
    token and the length limit end the completion."""
    return [end_token] if end_token else []


def clean_answer(text: str, end_token: str) -> str:
    """The answer in a completion: cut at the first end token (a backend or a predictions file may
    include it, or go past it), then whitespace stripped from both ends (the completion starts with
    the space after "Output:"; trailing line breaks are not part of the answer)."""
    if end_token:
        text = text.split(end_token, 1)[0]
    return text.strip()
