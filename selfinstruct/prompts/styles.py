"""Prompt styles: how a run talks to the model at each generation stage. The `prompt` config group
selects one by name (`STYLES`); the stages ask the style, never test its name.

A style says how to build a request of each stage (sampling the in-context demonstrations for
instruction generation), how to parse the answer into tasks, labels or instances, which stages it
makes unnecessary, and where the final dataset's instances come from. The wording of each stage
lives in its own module beside this one (instructions, classify, instances, alpaca).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Optional

from omegaconf import OmegaConf

from selfinstruct.datasets.seeds import SeedTask
from selfinstruct.prompts import alpaca, classify, instances, instructions

_EXAMPLE_STOP = re.compile(r"^\s*Example \d+\s*$")  # the stop that caps a completion's examples


class SelfInstructStyle:
    """The paper's pipeline: a numbered list of instructions to continue, then a Yes/No
    classification request and an instance request per instruction. `prompt.chat` frames every
    prompt as a chat message (prompt=selfinstruct_chat)."""

    skips: frozenset[str] = frozenset()  # stages this style makes unnecessary
    tasks_carry_instances = False  # do generated tasks come with their input and output?

    def __init__(self, prompt_cfg, seeds: list[SeedTask], *, classification_only: bool = False):
        # a plain object: the style reads it for every request and candidate
        self.cfg = OmegaConf.to_object(prompt_cfg) if OmegaConf.is_config(prompt_cfg) else prompt_cfg
        self.chat = bool(prompt_cfg.chat)
        self.seeds = seeds
        self.seed_instructions = [t.instruction for t in seeds]
        # classification seeds only (seeds.classification_only): ask for classification tasks
        self.classification = classification_only and bool(prompt_cfg.classification_header)

    # --- instruction generation ---------------------------------------------------------------

    def instruction_prompt(self, rng: random.Random, machine: list[str], available: int) -> tuple[str, int]:
        """The prompt and the number of the first item the model is to write; in-context machine
        examples come from machine[:available]."""
        p = self.cfg
        examples = instructions.sample_in_context(rng, self.seed_instructions, machine, p.num_human,
                                                  p.num_machine, available)
        if p.normalize_examples:
            examples = [instructions.one_line(e) for e in examples]
        return instructions.build_prompt(examples, chat=self.chat, max_list_number=p.max_list_number,
                                         classification=self.classification)

    def sampling(self, stage: str, params, *, output_first: bool = False):
        """The llm.Sampling of a stage's requests. Two of the paper's stops end a base model's
        continuation but cut a chat reply short: a chat reply lays its list out with blank lines
        (after a preamble, between items), and it may say the task again ("Task: ...") before its
        examples. The chat parsers read both, and the other stops and max_tokens still end a reply.
        With prompt.all_labels an output-first request goes without the "Example N" stop, so it may
        list every label (prepare then samples filters.max_instances_per_task of them)."""
        if self.chat and stage == "instructions":
            return dataclasses.replace(params, stop=[s for s in params.stop if s.strip()])
        if stage == "instances":
            stop = [s for s in params.stop if not (self.chat and s.strip() == "Task:")]
            if output_first and self.cfg.all_labels:
                stop = [s for s in stop if not _EXAMPLE_STOP.match(s)]
            return dataclasses.replace(params, stop=stop) if stop != params.stop else params
        return params

    def parse_tasks(self, text: str, first: int) -> list[dict]:
        """The generated tasks of a response, {"instruction", ...} each, in response order. A chat
        task also has "dropped": what the reply wrote under the item that is not part of the task
        (an answer, a code block, sub-bullets), when there was any."""
        if not self.chat:
            return [{"instruction": self.normalize(c)} for c in instructions.parse_instruction_list(text, first)]
        return [{"instruction": self.normalize(c), **({"dropped": dropped[:500]} if dropped else {})}
                for c, dropped in instructions.parse_chat_list(text)]

    def why_no_tasks(self, text: str) -> tuple[str, str]:
        """(reason, detail) of a non-empty response in which parse_tasks found no task."""
        if self.chat:
            return instructions.chat_parse_failure(text)
        return "no_numbered_item", "no numbered instruction in the response"

    def broken_task(self, k: int, task: dict, num_tasks: int, finish_reason: str) -> Optional[tuple[str, str]]:
        """(rule, detail) when task k of a response is unusable as a whole task (before the
        instruction filters); instruction-only tasks always are usable."""
        return None

    def normalize(self, text: str) -> str:
        """A generated instruction as the filters see it; prompt.capitalize: none, first (upper-case
        the first letter), python (str.capitalize(), which also lower-cases the rest: the original
        code's, mangling names and acronyms)."""
        text = text.strip()
        if self.cfg.capitalize == "python":
            return text.capitalize()
        return text[:1].upper() + text[1:] if self.cfg.capitalize == "first" else text

    # --- classification and instances ---------------------------------------------------------

    def classify_prompt(self, instruction: str) -> str:
        return classify.build_prompt(instruction, chat=self.chat)

    def parse_classification(self, text: str) -> Optional[bool]:
        return classify.parse_answer(text)

    def instances_prompt(self, instruction: str, output_first: bool, max_instances: int) -> str:
        return instances.build_prompt(instruction, output_first=output_first, chat=self.chat,
                                      max_instances=max_instances)

    def parse_instances(self, text: str, output_first: bool) -> list[tuple[str, str]]:
        return instances.parse_instances(text, output_first, chat=self.chat)

    def why_no_instances(self, text: str, output_first: bool) -> tuple[str, str]:
        """(reason, detail) of a completion in which parse_instances found no instance."""
        return instances.parse_failure(text, output_first)


class OriginalFormatStyle(SelfInstructStyle):
    """prompt=original_format: our completion prompts with the original code's field names, so a
    run writes (and its parsers read, as ours always do) the format of the original's raw files:
    output-first examples as "Class label: ..." lines, then the input; "Input:" / "Output:" for
    input-first ones. The wording stays ours."""

    def instances_prompt(self, instruction: str, output_first: bool, max_instances: int) -> str:
        return instances.build_prompt(instruction, output_first=output_first, chat=self.chat,
                                      max_instances=max_instances, label="Class label")


class AlpacaStyle(SelfInstructStyle):
    """The Stanford Alpaca variant: one request shows seed tasks with an instance and asks for
    whole tasks (instruction, input, output), so classify and instances have nothing to do."""

    skips = frozenset({"classify", "instances"})
    tasks_carry_instances = True

    def instruction_prompt(self, rng: random.Random, machine: list[str], available: int) -> tuple[str, int]:
        demos = alpaca.sample_demos(rng, self.seeds, self.cfg.num_demos)  # no machine tasks shown
        return alpaca.build_prompt(demos, chat=self.chat, num_tasks=self.cfg.num_tasks_per_request)

    def parse_tasks(self, text: str, first: int) -> list[dict]:
        tasks = alpaca.parse_tasks(text, first, self.cfg.num_tasks_per_request)
        return [{**t, "instruction": self.normalize(t["instruction"])} for t in tasks]

    def why_no_tasks(self, text: str) -> tuple[str, str]:
        return "no_task", "no task with an Instruction field in the response"

    def broken_task(self, k: int, task: dict, num_tasks: int, finish_reason: str) -> Optional[tuple[str, str]]:
        # Alpaca drops the cut last task and tasks without an output
        if k == num_tasks - 1 and finish_reason == "length":
            return "truncated_response", "the last task of a response that hit max_tokens"
        if task["output"] is None:
            return "incomplete_task", "no Output field"
        return None


STYLES: dict[str, type[SelfInstructStyle]] = {
    "selfinstruct": SelfInstructStyle,
    "selfinstruct_chat": SelfInstructStyle,
    "original_format": OriginalFormatStyle,
    "alpaca": AlpacaStyle,
}


def make_style(prompt_cfg, seeds: list[SeedTask], *, classification_only: bool = False) -> SelfInstructStyle:
    return STYLES[prompt_cfg.name](prompt_cfg, seeds, classification_only=classification_only)
