"""Instruction generation (DESIGN.md step 2): a numbered list of in-context instructions that the
model continues from the next open number."""

from __future__ import annotations

import random
import re
from typing import Optional

COMPLETION_HEADER = (
    "Below is a numbered list of tasks that people have asked an AI assistant to do. Every task is a "
    "single self-contained instruction, and the tasks differ from one another in topic and in kind.\n\n"
)
CHAT_TEMPLATE = (
    "Here is a numbered list of tasks that people have asked an AI assistant to do. Every task is a "
    "single self-contained instruction.\n\n{items}\n\nContinue the list with new tasks, numbered from "
    "{first} to {last}, one per line in the same format. Make them differ from the ones above and "
    "from each other in topic and in kind. Reply with the list only."
)


def sample_in_context(rng: random.Random, seed_instructions: list[str], machine_instructions: list[str],
                      num_human: int, num_machine: int, available: Optional[int] = None) -> list[str]:
    """num_human seed + num_machine machine instructions, shuffled; only seed ones while fewer than
    num_machine machine instructions exist (as in the paper). Machine examples come from the first
    `available` machine instructions (default: all); sampling indices picks what sampling the
    list prefix would, without copying it."""
    available = len(machine_instructions) if available is None else available
    machine = [machine_instructions[i] for i in rng.sample(range(available), num_machine)] \
        if available >= num_machine else []
    human = rng.sample(seed_instructions, min(len(seed_instructions), num_human + num_machine - len(machine)))
    chosen = machine + human
    rng.shuffle(chosen)
    return chosen


def build_prompt(examples: list[str], *, chat: bool, max_list_number: int) -> tuple[str, int]:
    """The prompt and the number of the first item the model is to write."""
    items = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
    first = len(examples) + 1
    if chat:
        return CHAT_TEMPLATE.format(items=items, first=first, last=max_list_number - 1), first
    return f"{COMPLETION_HEADER}{items}\n{first}.", first


ITEM_START = re.compile(r"(?:^|\n)[ \t]*(\d{1,3})[ \t]*[.)][ \t]*")


def parse_instruction_list(text: str, first: int) -> list[str]:
    """Instructions in a continuation of the numbered list. The completion continues right after
    "{first}." (a chat reply may repeat the number); each item runs to the next numbered line, with
    its whitespace collapsed, so line-wrapped items stay whole."""
    body = text.strip()
    if not ITEM_START.match(body):
        body = f"{first}. {body}"
    starts = list(ITEM_START.finditer(body))
    items = []
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(body)
        item = re.sub(r"\s+", " ", body[match.end():end]).strip()
        if item:
            items.append(item)
    return items
