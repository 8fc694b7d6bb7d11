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
# With only classification seeds shown (seeds.classification_only), the original code also asks for
# classification tasks, and for their labels to be named; this is our wording of that.
CLASSIFICATION_HEADER = (
    "Below is a numbered list of classification tasks that people have asked an AI assistant to do. "
    "Every task is a single self-contained instruction whose answer is one of a few labels, and it "
    "names the possible labels where it can. The tasks differ from one another in topic and in "
    "kind.\n\n"
)
# A chat model reads the examples as a request to restate (or answer) them unless told otherwise,
# so the chat wording says what the examples are for, numbers the new tasks after them, and asks
# for bare tasks: no repeats, no rephrasings, no answers under the items.
CHAT_TEMPLATE = (
    "Below are {count} example tasks that people have asked an AI assistant to do. They are only "
    "here to show the format and how varied the tasks should be: each is one self-contained "
    "instruction or question.\n\n{items}\n\nWrite new tasks of your own, different from the "
    "examples and from each other in topic and in kind. Do not repeat, rephrase or answer the "
    "examples. Write only the tasks, one per line, with no answers, solutions, sample inputs or "
    "explanations under them, numbered from {first} to {last} so that they continue the list."
    "{classification} Reply with the numbered list only."
)
CHAT_CLASSIFICATION = (
    " Every new task must be a classification task: its answer is one of a few labels, and it names "
    "the possible labels where it can."
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


def one_line(text: str) -> str:
    """An in-context instruction as one list item: whitespace runs collapsed and a trailing ":"
    removed, as the original code does. Verbatim, a seed such as "Question: ...\nAnswer:" puts a
    line into the list that is no item, and its colon invites an answer instead of the next task."""
    return re.sub(r"\s+", " ", text).strip().rstrip(":").rstrip()


def build_prompt(examples: list[str], *, chat: bool, max_list_number: int,
                 classification: bool = False) -> tuple[str, int]:
    """The prompt and the number of the first item the model is to write; classification: ask
    for classification tasks."""
    items = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
    first = len(examples) + 1
    if chat:
        return CHAT_TEMPLATE.format(count=len(examples), items=items, first=first, last=max_list_number - 1,
                                    classification=CHAT_CLASSIFICATION if classification else ""), first
    header = CLASSIFICATION_HEADER if classification else COMPLETION_HEADER
    return f"{header}{items}\n{first}.", first


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


# --- chat replies ---------------------------------------------------------------------------------
#
# A chat model answers with a markdown list rather than continuing ours, and often writes more than
# the task under an item: its answer ("   A: Sydney", "Answer: ..."), sub-bullets, a code block, an
# example input. Only the task is an instruction, so the parser keeps the item's first line and its
# plain continuation lines (a long instruction wrapped over lines) and drops, up to the next item:
#   - a line that starts with an answer label (A:, B), Answer:, Output:, Input:, Solution:, ...),
#   - a sub-item (a bullet under a numbered item, or any item indented deeper than the list),
#   - a code block,
#   - anything after a blank line (an answer paragraph, or chatter after the list),
# and on the item's own line an answer run on after the end of the sentence ("... healthily.
# A: Eat more vegetables", "... a vegetable? - A tomato is"). Text before the first item is a
# preamble ("Sure! Here are ..."). Items are "9.", "9)", "9:", "**9.**", "### 9.", "Task 9:", or,
# in a reply without numbers, top-level bullets "- ", "* ", "• ".

_CHAT_ITEM = re.compile(
    r"^(?P<indent>[ \t]*)(?:#{1,6}[ \t]*)?(?:\*\*|__)?"
    r"(?:(?:Task[ \t]*)?(?P<number>\d{1,3})[ \t]*[.):]|(?P<bullet>[-*\u2022+]))"
    r"(?:\*\*|__)?[ \t]+(?P<text>\S.*)$")
# Labels that start an answer, a solution or an instance rather than continue a task. A single
# capital letter counts only with ":" or ")" (answer choices "A: ..." / "B) ...").
_LABEL_WORDS = (r"(?i:answers?|output|outputs|response|solution|result|explanation|input"
                r"|(?:example|sample)(?:[ \t]+(?:input|output|answer|response))?|expected[ \t]+output)")
_ANSWER_LINE = re.compile(rf"^[ \t]*(?:[-*\u2022+>][ \t]*)?(?:\*\*|__)?(?:[A-Z][ \t]*[:)]|{_LABEL_WORDS}[ \t]*[:)])")
_INLINE_ANSWER = re.compile(
    rf"(?<=[.?!])[ \t]+(?:[A-Z]|{_LABEL_WORDS})[ \t]*:[ \t]"  # "... sentence. A: answer"
    r"|(?<=[.?!:])[ \t]+[-\u2013\u2014][ \t]+(?=\S)")         # "... question? - answer"
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_TASK_LABEL = re.compile(r"^(?:Task|Instruction|New task)[ \t]*:[ \t]*", re.IGNORECASE)


def _finish_item(lines: list[str]) -> tuple[str, str]:
    """(instruction, what was cut from its own line) of an item's kept lines."""
    text = re.sub(r"\s+", " ", " ".join(lines).replace("**", "").replace("__", "")).strip()
    cut = ""
    answer = _INLINE_ANSWER.search(text)
    if answer:
        text, cut = text[:answer.start()].rstrip(), text[answer.start():].strip()
    text = _TASK_LABEL.sub("", text)
    if len(text) > 1 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()  # an item written as a quotation
    return text, cut


def parse_chat_list(text: str) -> list[tuple[str, str]]:
    """(instruction, dropped text) per item of a chat reply, in reply order; the dropped text is
    what came under the item and is not part of the task (empty when nothing was)."""
    items: list[tuple[list[str], list[str]]] = []  # (kept lines, dropped lines) per item
    kind = base = None  # the list's marker kind ("number" or "bullet") and indentation
    closed = in_code = False  # closed: the current item's instruction is complete
    for line in text.expandtabs(4).splitlines():
        if _FENCE.match(line):
            if items:  # a code block under an item; before the first item: a wrapper, ignored
                in_code = not in_code
                items[-1][1].append(line)
                closed = True
            continue
        match = _CHAT_ITEM.match(line)
        this_kind = match and ("number" if match.group("number") else "bullet")
        if match and kind is None:
            kind, base = this_kind, len(match.group("indent"))
        if match and this_kind == kind and len(match.group("indent")) <= base + 1:
            items.append(([match.group("text")], []))  # the next item (it also ends an unclosed code block)
            closed = in_code = False
            continue
        if in_code:
            items[-1][1].append(line)
            continue
        if not items:
            continue  # a preamble
        if not line.strip():
            closed = True
        elif closed or match or _ANSWER_LINE.match(line):
            items[-1][1].append(line.strip())
            closed = True
        else:
            items[-1][0].append(line)
    parsed = []
    for kept, dropped in items:
        instruction, cut = _finish_item(kept)
        if instruction:
            parsed.append((instruction, re.sub(r"\s+", " ", " ".join([cut] + dropped)).strip()))
    return parsed


def chat_parse_failure(text: str) -> tuple[str, str]:
    """(reason, detail) of a chat reply in which parse_chat_list found no instruction."""
    if any(_CHAT_ITEM.match(line) for line in text.expandtabs(4).splitlines()):
        return "no_instruction_in_items", "the reply's list items hold no instruction"
    return "no_list", "no numbered or bulleted list item in the reply"
