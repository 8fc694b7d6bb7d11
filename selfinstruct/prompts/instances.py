"""Instance generation (DESIGN.md step 5) and the parser of its completions.

Two prompt formats, as in the paper. Input-first (most tasks): each example gives the input, then
the output; a task that needs no input shows the output only. Output-first (classification tasks):
each example gives the class label first, then an input that belongs to it, so the model does not
drift towards one label. Our format:

    Task: <instruction>
    Example 1
    Input: <input>             (input-first; omitted when the task needs no input)
    Output: <output>
    Example 2
    ...

    Task: <classification instruction>
    Example 1
    Label: <output>            (output-first)
    Input: <input>

The demonstrations come first and the task last, so requests of one format share a prefix that
llama.cpp evaluates once. The prompt ends with "Example 1" and the stop sequence "Example 6" caps a
completion at five instances (the paper's limit); "Task:" stops a model that starts another task.

`parse_instances` reads this format, chat replies of it (markdown emphasis, code fences, header and
field variants such as "**Example 1:**" or "Input -", a preamble; see _clean_chat), and also the
original self-instruct completions ("Class label:" lines, inputs under their own field names such
as "Sentence:"), so real runs of the original code can be checked against ours
(tests/test_fidelity.py).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from selfinstruct.files import DataError, read_jsonl

DATA = Path(__file__).resolve().parents[1] / "data"
DEMOS = {False: DATA / "instance_demos_input_first.jsonl", True: DATA / "instance_demos_output_first.jsonl"}

HEADERS = {
    False: (
        "Each task below comes with up to {max_instances} worked examples. An example shows an input "
        "for the task and then the correct output for that input. When a task needs no input, its "
        "examples show only the output.\n\n"
    ),
    True: (
        "Each classification task below comes with one worked example per possible label. An "
        "example names the label first and then shows an input that belongs to that label. When a "
        "task needs no input, its examples list only the possible labels.\n\n"
    ),
}
# The chat framing spells the format out: a chat model otherwise invents headers ("Example 1:"),
# repeats the header inside a field, restates the task or explains its examples.
CHAT_TEMPLATE = (
    "{header}{demos}\n\nNow write up to {max_instances} new examples for the task below, in the same "
    "format as above: each example starts with a line \"Example N\" (N from 1 up), followed by "
    "{fields}. Do not write the task again and add no explanations: reply with the examples only."
    "\n\nTask: {instruction}"
)
CHAT_FIELDS = {
    False: "a line \"Input: ...\" (left out when the task needs no input) and a line \"Output: ...\" "
           "with the correct output",
    True: "a line \"Label: ...\" with one possible label and a line \"Input: ...\" with an input that "
          "has this label; give each label its own example",
}


@lru_cache(maxsize=4)
def load_demos(path: str | Path) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """(instruction, ((input, output), ...)) per demonstration task; fails naming the bad record."""
    demos = []
    for number, record in enumerate(read_jsonl(path), 1):
        instances = record.get("instances")
        ok = isinstance(record.get("instruction"), str) and isinstance(instances, list) and instances
        ok = ok and all(isinstance(i, dict) and isinstance(i.get("input"), str)
                        and isinstance(i.get("output"), str) for i in instances)
        if not ok:
            raise DataError(f"{path}: record {number} needs `instruction` and a non-empty list "
                            "`instances` of {input, output} strings")
        demos.append((record["instruction"].strip(),
                      tuple((i["input"].strip(), i["output"].strip()) for i in instances)))
    return tuple(demos)


def render_task(instruction: str, instances, output_first: bool, label: str = "Label") -> str:
    """One task with its examples; label: the output-first field name ("Class label" in the
    original code's format, prompt=original_format)."""
    lines = [f"Task: {instruction}"]
    for number, (inp, out) in enumerate(instances, 1):
        lines.append(f"Example {number}")
        if output_first:
            lines.append(f"{label}: {out}")
            if inp:
                lines.append(f"Input: {inp}")
        else:
            if inp:
                lines.append(f"Input: {inp}")
            lines.append(f"Output: {out}")
    return "\n".join(lines)


def build_prompt(instruction: str, *, output_first: bool, chat: bool, max_instances: int = 5,
                 demos=None, label: str = "Label") -> str:
    demos = load_demos(DEMOS[output_first]) if demos is None else demos
    shown = "\n\n".join(render_task(text, instances, output_first, label) for text, instances in demos)
    header = HEADERS[output_first].format(max_instances=max_instances)
    if chat:
        return CHAT_TEMPLATE.format(header=header, demos=shown, max_instances=max_instances,
                                    fields=CHAT_FIELDS[output_first], instruction=instruction.strip())
    return f"{header}{shown}\n\nTask: {instruction.strip()}\nExample 1\n"


# --- parsing ----------------------------------------------------------------------------------

# Markers count only at the start of a line, where every format puts them.
_EXAMPLE = re.compile(r"^[ \t]*Example[ \t]*\d*[ \t]*[.:)]?[ \t]*$", re.MULTILINE)
_NEXT_TASK = re.compile(r"^[ \t]*Task[ \t]*:", re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t]*Output[ \t]*\d*[ \t]*:", re.MULTILINE)
_RUN_ON = re.compile(r"^[ \t]*(?:Input|Output)[ \t]*\d*[ \t]*:", re.MULTILINE)
LABEL_LINE = re.compile(r"^[ \t]*(?:Class[ \t]+)?Label[ \t]*\d*[ \t]*:", re.MULTILINE | re.IGNORECASE)
_INPUT_PREFIX = re.compile(r"^\s*Input[ \t]*\d*[ \t]*:")


# What chat models make of the format: headers "Example 1:", "Example 1 -", "### Example 1",
# "**Example 1:**", "Example #1: Input: ..." on one line; fields "**Input:**", "- Input:", "Input -",
# "input:"; a field that repeats its example's header ("Output: Example 1"). _clean_chat rewrites
# them to our format before the completion parser reads it.
# (text after a header on its line counts only after the header's punctuation: "Example 2 is
# better" inside an output is no header)
_CHAT_HEADER = re.compile(r"^[ \t]*(?:[-*#>]+[ \t]*)*Example[ \t]*#?[ \t]*(\d+)[ \t]*"
                          r"(?:[-\u2013\u2014.:)][ \t]*(.*)|)$", re.MULTILINE | re.IGNORECASE)
_CHAT_FIELD = re.compile(r"^[ \t]*(?:[-*#>]+[ \t]*)*(Input|Output|Label|Class label)[ \t]*(\d*)"
                         r"(?:[ \t]*:|[ \t]+[-\u2013\u2014](?=[ \t]))[ \t]*", re.MULTILINE | re.IGNORECASE)
_REPEATED_HEADER = re.compile(r"^((?:Input|Output|Label|Class label)\d*: )Example[ \t]*#?\d+[ \t]*[.:)-]?[ \t]*",
                              re.MULTILINE)
_FORMAT_START = re.compile(r"^(?:Example\b|(?:Input|Output|Label|Class label)\d*:)", re.MULTILINE)


def _clean_chat(text: str) -> str:
    """Undo what chat models wrap around the format: a code block, bold or heading markers and
    bullets at line starts, header and field variants, a preamble."""
    fenced = re.search(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, flags=re.MULTILINE | re.DOTALL)
    if fenced:  # the reply is inside a code block; chatter around it is not
        text = fenced.group(1)
    text = text.replace("**", "")
    # a header's own punctuation ("Example 1:") is no part of the example; what follows it on the
    # line ("Example 1: Input: 2 + 2") is
    text = _CHAT_HEADER.sub(lambda m: f"Example {m.group(1)}" + (f"\n{m.group(2)}" if (m.group(2) or "").strip()
                                                                 else ""), text)
    text = _CHAT_FIELD.sub(lambda m: f"{m.group(1).capitalize()}{m.group(2)}: ", text)
    text = _REPEATED_HEADER.sub(r"\1", text)
    first = _FORMAT_START.search(text)
    return text[first.start():] if first else text  # drop a preamble ("Sure! Here are...", the task again)


_FIELD_LINE = re.compile(r"^[A-Z][\w ]{0,30}:[ \t]*\S")


def _missing_output(chunk: str) -> str:
    """A chat example without an "Output:" field but with "Name: value" input lines, a blank line
    and then a paragraph ("Premise: ...\nHypothesis: ...\n\nEntailment.") has its output last."""
    head, sep, tail = chunk.rpartition("\n\n")
    if sep and tail.strip() and not _OUTPUT.search(chunk) and \
            all(_FIELD_LINE.match(line) for line in head.strip().splitlines()):
        return f"{head}\nOutput: {tail}"
    return chunk


def _input_first(chunk: str) -> tuple[str, str]:
    """(input, output) of one example: the input is what precedes "Output:" (minus an "Input:"
    marker; other field names such as "Sentence:" stay), the output what follows it up to a
    run-on "Input:" or "Output:" (another example without its "Example" line, which is dropped as
    the original code does). With no "Output:" the whole example is the output of an input-less
    task."""
    marker = _OUTPUT.search(chunk)
    inp, out = (chunk[:marker.start()], chunk[marker.end():]) if marker else ("", chunk)
    out = _RUN_ON.split(out, maxsplit=1)[0]
    return _INPUT_PREFIX.sub("", inp, count=1).strip(), out.strip()


def _output_first(text: str) -> list[tuple[str, str]]:
    """(input, label) per label line: the label is the rest of its line, the input the lines up to
    the next label (minus an "Input:" marker). Text before the first label is not an instance."""
    text = _EXAMPLE.sub("", text)
    starts = list(LABEL_LINE.finditer(text))
    pairs = []
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        label, _, inp = text[match.end():end].partition("\n")  # an empty label stays empty
        pairs.append((_INPUT_PREFIX.sub("", inp, count=1).strip(), label.strip()))
    return pairs


def parse_instances(text: str, output_first: bool, *, chat: bool = False) -> list[tuple[str, str]]:
    """(input, output) pairs of one completion, in order, before any filter. Empty when the text
    holds no instance (a parse failure)."""
    if chat:
        text = _clean_chat(text)
    # A "Task:" line starts another task: everything from it on belongs to that one (this is what
    # the stop sequence does; it also drops a prompt echoed by a backend that repeats it).
    next_task = _NEXT_TASK.search(text)
    text = text[:next_task.start()] if next_task else text
    if output_first:
        return _output_first(text)
    chunks = [c.strip() for c in _EXAMPLE.split(text)]
    if len(chunks) == 1 and not _OUTPUT.search(text):
        return []  # neither an example nor an output marker: not this format
    if chat:
        chunks = [_missing_output(c) for c in chunks]
    return [_input_first(c) for c in chunks if c]


def parse_failure(text: str, output_first: bool) -> tuple[str, str]:
    """(reason, detail) of a completion in which parse_instances found no instance."""
    if not text.strip():
        return "empty", "the completion is empty"
    if output_first:
        return "no_label", "no Label line"
    if not _EXAMPLE.search(text) and not _OUTPUT.search(text) and not _CHAT_HEADER.search(text):
        return "no_example", "no Example header and no Output field"
    return "empty_examples", "Example headers with nothing under them"
