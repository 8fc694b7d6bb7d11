"""The Stanford Alpaca variant (DESIGN.md step 8): one request shows `num_demos` seed tasks as
complete tasks (instruction, input, output) and the model writes further tasks of the same shape,
numbered on to `num_tasks_per_request` (the stop sequence "Task 21" ends the list of 20). Our
format:

    Task 4
    Instruction: <instruction>
    Input: <input, or (none)>
    Output: <output>
"""

from __future__ import annotations

import random
import re

from selfinstruct.datasets.seeds import SeedTask

HEADER = (
    "Below is a numbered list of {total} tasks for testing an AI assistant. Every task has an "
    "instruction, an input that the instruction refers to (\"(none)\" when the instruction stands "
    "on its own), and a good output. The tasks differ from one another: in topic, in kind (open "
    "questions, rewriting, classification, brainstorming, step-by-step reasoning, short writing, "
    "and more) and in how the instruction is phrased. Instructions are one or two sentences in "
    "English, inputs are concrete and short, and outputs answer the instruction in under 100 "
    "words.\n\n"
)
CHAT_TEMPLATE = (
    "{header}{tasks}\n\nContinue the list with tasks {first} to {last}, in exactly the same format. "
    "Reply with the tasks only."
)
NO_INPUT = "(none)"


def sample_demos(rng: random.Random, seeds: list[SeedTask], num_demos: int) -> list[tuple[str, str, str]]:
    """num_demos seed tasks, each with one of its instances, as (instruction, input, output)."""
    chosen = rng.sample(seeds, min(num_demos, len(seeds)))
    demos = []
    for task in chosen:
        instance = rng.choice(task.instances)
        demos.append((task.instruction, instance.input.strip(), instance.output.strip()))
    return demos


def render_task(number: int, instruction: str, inp: str, out: str) -> str:
    return f"Task {number}\nInstruction: {instruction}\nInput: {inp or NO_INPUT}\nOutput: {out}"


def build_prompt(demos: list[tuple[str, str, str]], *, chat: bool, num_tasks: int) -> tuple[str, int]:
    """The prompt and the number of the first task the model is to write."""
    header = HEADER.format(total=num_tasks)
    shown = "\n\n".join(render_task(k, *demo) for k, demo in enumerate(demos, 1))
    first = len(demos) + 1
    if chat:
        return CHAT_TEMPLATE.format(header=header, tasks=shown, first=first, last=num_tasks), first
    return f"{header}{shown}\n\nTask {first}\nInstruction:", first


_TASK = re.compile(r"^[ \t]*(?:#+[ \t]*)?(?:\*\*)?Task[ \t]*(\d*)[ \t]*[.:)]?(?:\*\*)?[ \t]*$", re.MULTILINE)
_FIELD = re.compile(r"^[ \t]*(?:\*\*)?(Instruction|Input|Output)[ \t]*:(?:\*\*)?[ \t]*",
                    re.MULTILINE | re.IGNORECASE)
_NO_INPUT = {"", "(none)", "none", "<noinput>", "n/a", "no input", "(no input)", "-"}


def parse_tasks(text: str, first: int, num_tasks: int) -> list[dict]:
    """Tasks in a continuation of the list: {"instruction", "input", "output"} each, with "output"
    None when the task has no Output field (an incomplete task). The completion continues right
    after "Task {first}\\nInstruction:" (a chat reply may repeat that header). Tasks numbered
    above num_tasks are past the end of the list and ignored."""
    body = text.strip()
    if not _TASK.match(body):
        if not _FIELD.match(body):
            body = f"Instruction: {body}"
        body = f"Task {first}\n{body}"
    starts = list(_TASK.finditer(body))
    tasks, number = [], first - 1
    for k, match in enumerate(starts):
        number = int(match.group(1)) if match.group(1) else number + 1  # a bare "Task" line is the next
        if number > num_tasks:
            break
        end = starts[k + 1].start() if k + 1 < len(starts) else len(body)
        fields: dict[str, str] = {}
        chunk = body[match.end():end]
        marks = list(_FIELD.finditer(chunk))
        for j, mark in enumerate(marks):
            name = mark.group(1).lower()
            value_end = marks[j + 1].start() if j + 1 < len(marks) else len(chunk)
            fields.setdefault(name, chunk[mark.end():value_end].strip())
        instruction = re.sub(r"\s+", " ", fields.get("instruction", "")).strip()
        if not instruction:
            continue
        inp = fields.get("input", "")
        tasks.append({"instruction": instruction,
                      "input": "" if inp.strip().lower() in _NO_INPUT else inp,
                      "output": fields.get("output")})
    return tasks
