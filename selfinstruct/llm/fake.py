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

from .base import LLM, Completion, Request, Sampling, Usage

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
class FakeLLM(LLM):
    name: ClassVar[str] = "fake"
    seed: int = 0
    latency_s: float = 0.0
    fail_rate: float = 0.0
    max_retries: int = 3
    concurrency: int = 8
    max_list_number: int = 16

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
        text = getattr(self, f"_answer_{stage}")(request.prompt, rng)
        words = text.split(" ")
        finish = "stop"
        if len(words) > params.max_tokens:
            text, finish = " ".join(words[: params.max_tokens]), "length"
        return Completion(text, finish, prompt_tokens=len(request.prompt.split()),
                          completion_tokens=min(len(words), params.max_tokens))

    def _answer_instructions(self, prompt: str, rng: random.Random) -> str:
        """Continue the numbered list from the open number at the end of the prompt."""
        match = re.search(r"(\d+)\.\s*$", prompt)
        first = int(match.group(1)) if match else 1
        lines = []
        for number in range(first, self.max_list_number):
            item = fake_instruction(rng)
            lines.append(item if number == first else f"{number}. {item}")
        return " " + "\n".join(lines)

    def _answer_classify(self, prompt: str, rng: random.Random) -> str:
        return " Yes" if rng.random() < 0.3 else " No"
