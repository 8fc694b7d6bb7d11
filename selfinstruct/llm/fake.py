"""TEST DOUBLE. A deterministic, seeded fake model that answers every stage's prompt in the format
that stage expects, so the pipeline, sweeps, resume and tracking can be tested without a model.
Never a default: select it explicitly with `llm=fake`.

Every answer is a pure function of (run seed, request id, prompt), so reruns and resumes see the same
answers. `latency_s` simulates a slow server (requests overlap up to `concurrency`); `fail_rate`
makes attempts fail so retry and error accounting can be exercised.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

from selfinstruct.llm.base import LLM, BackendConfig, Completion, Request, Sampling, Usage, check

VERBS = ["Write", "Explain", "Summarize", "Suggest", "Describe", "Compare", "List", "Classify",
         "Rewrite", "Find", "Plan", "Create", "Translate", "Identify", "Recommend", "Evaluate",
         "Outline", "Convert", "Estimate", "Design"]
OBJECTS = ["a short poem", "the main idea", "three reasons", "a weekly schedule", "a polite email",
           "the key differences", "a simple recipe", "a product description", "a study plan",
           "the sentiment", "a job posting", "a list of questions", "a budget", "the grammar errors",
           "a brief story", "the steps", "a catchy slogan", "a workout routine", "the pros and cons",
           "a tweet"]
TOPICS = ["climate change", "a new smartphone", "remote work", "healthy breakfast", "a city trip",
          "learning Spanish", "personal finance", "a birthday party", "machine learning",
          "ancient Rome", "public transport", "gardening", "a job interview", "electric cars",
          "sleep habits", "a chess opening", "volunteering", "home workouts", "a coffee shop",
          "space exploration"]
AUDIENCES = ["for children", "for a beginner", "in two sentences", "for a busy manager",
             "using simple words", "in a formal tone", "for a teenager", "as a bullet list",
             "for a blog", "in under fifty words"]


ADJECTIVES = ["short", "clear", "friendly", "detailed", "careful", "plain", "lively", "formal"]
ALPACA_PROMPT = re.compile(r"Task (\d+)\nInstruction:$|Continue the list with tasks")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def fake_instruction(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.06:
        return rng.choice(["Do it.", "Say hello", "Any ideas?"])  # too short
    if roll < 0.10:
        return f"Draw a map of {rng.choice(TOPICS)}."  # blacklisted
    text = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} about {rng.choice(TOPICS)}"
    if rng.random() < 0.7:
        text += f" {rng.choice(AUDIENCES)}"
    return text + "."


@dataclass
class FakeConfig(BackendConfig):
    latency_s: float = 0.0  # simulated latency per request
    fail_rate: float = 0.0  # share of attempts that fail (exercises retries and error accounting)

    @staticmethod
    def check(c) -> None:
        BackendConfig.check(c)
        check(0.0 <= c.fail_rate <= 1.0, "llm.fail_rate", f"must be in [0, 1], got {c.fail_rate}")
        check(c.latency_s >= 0, "llm.latency_s", f"must be >= 0, got {c.latency_s}")


@dataclass
class FakeLLM(LLM):
    name: ClassVar[str] = "fake"
    seed: int = 0
    latency_s: float = 0.0
    fail_rate: float = 0.0
    max_retries: int = FakeConfig.max_retries
    concurrency: int = FakeConfig.concurrency
    max_list_number: int = 16

    @classmethod
    def from_config(cls, c, cfg, cache) -> "FakeLLM":
        """c: the backend's config node (cfg.llm, or another such as evaluate.judge_llm)."""
        return cls(model=c.model, cache=cache, seed=cfg.seed, latency_s=c.latency_s, fail_rate=c.fail_rate,
                   max_retries=c.max_retries, concurrency=c.concurrency,
                   max_list_number=cfg.prompt.max_list_number)

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        def one(request: Request) -> Completion:
            for attempt in range(self.max_retries + 1):
                if self.latency_s:
                    time.sleep(self.latency_s)
                if _rng(self.seed, request.id, "fail", attempt).random() >= self.fail_rate:
                    return self._answer(request, params)
                if attempt < self.max_retries:
                    usage.retries += 1
            return Completion("", "error", error="fake: injected failure")

        if self.latency_s and len(requests) > 1:
            with ThreadPoolExecutor(self.concurrency) as pool:
                return list(pool.map(one, requests))
        return [one(r) for r in requests]

    def _answer(self, request: Request, params: Sampling) -> Completion:
        stage = request.id.split("/", 1)[0]
        rng = _rng(self.seed, request.id, request.prompt)
        text = getattr(self, f"_answer_{stage}")(request.prompt, rng, request.chat)
        words = text.split(" ")
        finish = "stop"
        if len(words) > params.max_tokens:
            text, finish = " ".join(words[: params.max_tokens]), "length"
        return Completion(text, finish, prompt_tokens=len(request.prompt.split()),
                          completion_tokens=min(len(words), params.max_tokens))

    def _answer_instructions(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        """Continue the numbered list from the open number at the end of the prompt."""
        if ALPACA_PROMPT.search(prompt):
            return self._answer_alpaca(prompt, rng, chat)
        if chat:
            return self._answer_instructions_chat(prompt, rng)
        match = re.search(r"(\d+)\.\s*$", prompt)
        first = int(match.group(1)) if match else 1
        lines = []
        for number in range(first, self.max_list_number):
            item = fake_instruction(rng)
            lines.append(item if number == first else f"{number}. {item}")
        return " " + "\n".join(lines)

    def _answer_instructions_chat(self, prompt: str, rng: random.Random) -> str:
        """A markdown list numbered as the chat prompt asks, the way chat models write one: a
        preamble now and then, one of the usual item markers, and under some items the model's own
        answer (an "A:" line, a sub-bullet, a run-on answer), which the chat parser must drop."""
        asked = re.search(r"numbered from (\d+) to (\d+)", prompt)
        first, last = map(int, asked.groups()) if asked else (1, self.max_list_number - 1)
        marker = rng.choice(["{}. ", "{}) ", "**{}.** "])
        lines = ["Here are some new tasks:"] if rng.random() < 0.3 else []
        for number in range(first, last + 1):
            item = f"{marker.format(number)}{fake_instruction(rng)}"
            roll, answer = rng.random(), f"{rng.choice(ADJECTIVES).capitalize()} answer about {rng.choice(TOPICS)}."
            if roll < 0.1:
                item += f"\n   A: {answer}"
            elif roll < 0.2:
                item += f"\n   - {answer}"
            elif roll < 0.25:
                item += f" Answer: {answer}"
            lines.append(item)
        return "\n".join(lines)

    def _answer_classify(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        yes = rng.random() < 0.3
        if chat:
            return rng.choice(["Yes.", "**Yes**", "Yes"] if yes else ["No.", "**No**", "No, it is not."])
        return " Yes" if yes else " No"

    def _answer_judge(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        """A Yes/No quality verdict (prompts/judge.py): mostly yes, always no for an empty output."""
        if "\nOutput: \n" in prompt:
            return " No"
        yes = rng.random() < 0.8
        return ("Yes." if yes else "No.") if chat else (" Yes" if yes else " No")

    def _answer_instances(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        """Up to five instances in prompts/instances.py's format (output-first when the prompt's
        demonstrations are). Half the tasks get one of the five flaws the instance filters exist
        for, one in 16 no instance at all."""
        output_first = "\nLabel: " in prompt or "\nClass label: " in prompt
        number = rng.randrange(160)
        topic = rng.choice(TOPICS)
        if number % 16 == 15:
            return " I am not sure what this task means."  # a parse failure
        if output_first:
            labels = rng.choice([["yes", "no"], ["positive", "negative", "neutral"], ["formal", "informal"]])
            pairs = [(f"A {rng.choice(ADJECTIVES)} note about {topic} that reads as {label}.", label)
                     for label in labels]
        else:
            needs_input = rng.random() < 0.75
            pairs = [(f"Some details about {topic}, case {k}." if needs_input else "",
                      f"A {rng.choice(ADJECTIVES)} answer about {topic} for case {k}.")
                     for k in range(1, rng.randint(2, 4) + 1)]
        flaw = number % 10
        if flaw == 1:
            pairs.append(pairs[-1])  # duplicate
        elif flaw == 3:
            pairs[-1] = (pairs[-1][0], "")  # empty output
        elif flaw == 5:
            pairs[0] = (pairs[0][0] or "x", "The answer is as follows:")  # ends with a colon
        elif flaw == 7:
            pairs.append((pairs[0][0] or "y", pairs[0][1] + " Or the opposite."))  # conflicting outputs
        elif flaw == 9:
            pairs[0] = (pairs[0][1], pairs[0][1])  # input equals output
        blocks = []
        for k, (inp, out) in enumerate(pairs, 1):
            fields = [f"Label: {out}"] + ([f"Input: {inp}"] if inp else []) if output_first else \
                ([f"Input: {inp}"] if inp else []) + [f"Output: {out}"]
            blocks.append("\n".join(([f"Example {k}"] if k > 1 or chat else []) + fields))
        text = "\n".join(blocks)
        if chat:  # what chat models do to the format: a preamble, markdown headers and fields
            header = rng.choice([r"**\1**", r"\1:", r"### \1", r"**\1:**"])
            fields = rng.choice([r"**\1:**", r"\1:", r"- \1:", r"\1 -"])
            text = re.sub(r"^(Example \d+)", header, text, flags=re.MULTILINE)
            text = "Sure! Here are some examples:\n\n" + re.sub(r"^(Label|Input|Output):", fields, text,
                                                                 flags=re.MULTILINE)
        return text + "\n"

    def _answer_evaluate(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        """An answer to an evaluation task (evaluation/answering.py's prompt): words of the task
        itself, so ROUGE-L against the reference is neither 0 nor 1, ended by the end token."""
        words = prompt.replace("\nOutput:", " ").split()
        picked = [rng.choice(words) for _ in range(rng.randint(3, 12))] if words else ["nothing"]
        return " " + " ".join(picked) + "<|endoftext|>"

    def _answer_evaluate_judge(self, prompt: str, rng: random.Random, chat: bool = False) -> str:
        """A judge's reply: a rating A-D, or for a comparison of two answers 1, 2 or tie."""
        if "Answer 2" in prompt:
            return rng.choice([" 1", " 2", " tie", " Answer 1 is better."])
        return rng.choice([" A", " B", " Rating: C", " D"])

    def _answer_alpaca(self, prompt: str, rng: random.Random, chat: bool) -> str:
        """Alpaca-style tasks (prompts/alpaca.py's format) from the open number to the last."""
        if chat:
            first, last = map(int, re.search(r"tasks (\d+) to (\d+)", prompt).groups())
        else:
            first = int(ALPACA_PROMPT.search(prompt).group(1))
            last = int(re.search(r"list of (\d+) tasks", prompt).group(1))
        blocks = []
        for number in range(first, last + 1):
            topic = rng.choice(TOPICS)
            inp = f"Some details about {topic}." if rng.random() < 0.6 else "(none)"
            block = f"Task {number}\nInstruction: {fake_instruction(rng)}\nInput: {inp}"
            if rng.random() > 0.05:  # else an incomplete task without output
                block += f"\nOutput: A {rng.choice(ADJECTIVES)} answer about {topic}."
            blocks.append(block)
        text = "\n\n".join(blocks)
        return text if chat else " " + text.split("Instruction: ", 1)[1]
