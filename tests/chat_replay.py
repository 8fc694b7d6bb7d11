"""Replay recorded chat-model responses through the pipeline, to measure the chat parsers on real
output (../shared/data/chat-responses/, see SOURCES.md there).

A local OpenAI-compatible server (tests/fake_openai_server.py with its answers replaced) gives each
chat request a recorded response of its stage instead of a model's answer:

- instructions: the unused recorded response that restates most of the request's in-context
  examples (the recorded model restated its prompt's examples, so this finds the response that
  request got when the prompts are the ones recorded); when all are used, an empty reply (which
  does not count against acceptance);
- classify: the recorded answers in turn;
- instances: the recorded response that shares most words with the request's task, unused first.

The responses were recorded for the prompts of an older commit, so a replay measures the parsers
and filters on real output, not the effect of newer prompt wording.

    python tests/chat_replay.py                      # this checkout
    python tests/chat_replay.py --repo ../before     # another checkout (e.g. the code before a change)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO.parent / "shared" / "data" / "chat-responses" / "qwen2.5-coder-0.5b-instruct_selfinstruct_chat.jsonl"
# The recorded run's settings (SOURCES.md); the cache is off so every request reaches the server.
RUN_ARGS = ["llm=openai_compatible", "llm.endpoint=chat", "llm.model=qwen2.5-coder-0.5b-instruct",
            "prompt=selfinstruct_chat", "num_instructions=10", "seed=0", "llm.concurrency=4",
            "llm.cache=false", "tracking=none", "stages=[instructions,classify,instances,prepare]"]
QUESTION = "Can the following task be regarded as a classification task with finite output labels?"
_WORD = re.compile(r"[a-z]{4,}")


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class ReplayServer(FakeOpenAIServer):
    """FakeOpenAIServer answering with recorded responses (records: stage_guess, text,
    finish_reason). Instruction requests arrive in rounds of `round_size` at once; the server
    collects a round and gives its requests their best-matching responses together, so the
    assignment does not depend on which request of the round arrives first."""

    def __init__(self, records: list[dict], round_size: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.records = {stage: [r for r in records if r["stage_guess"] == stage]
                        for stage in ("instructions", "classify", "instances")}
        self.used: dict[str, set[int]] = {stage: set() for stage in self.records}
        self.round_size = round_size
        self.classify_turn = 0
        self.cond = threading.Condition()
        self.waiting: list[tuple[str, dict]] = []  # instruction prompts of the round, with their slot

    def pick(self, prompt: str) -> dict:
        if "Example 1" not in prompt and QUESTION not in prompt:
            return self._instructions(prompt)
        with self.cond:
            if QUESTION in prompt:
                records = self.records["classify"]
                self.classify_turn += 1
                return records[(self.classify_turn - 1) % len(records)]
            score = self._instances_score(prompt)
            records, used = self.records["instances"], self.used["instances"]
            free = [k for k in range(len(records)) if k not in used] or list(range(len(records)))
            best = max(free, key=lambda k: (score(records[k]["text"]), -k))  # ties: the first recorded
            used.add(best)
            return records[best]

    def _instructions(self, prompt: str) -> dict:
        slot: dict = {}
        with self.cond:
            self.waiting.append((prompt, slot))
            if len(self.waiting) >= self.round_size:
                self._assign_round()
            elif not self.cond.wait_for(lambda: "record" in slot, timeout=1.0):
                self._assign_round()  # a round smaller than round_size
            return slot["record"]

    def _assign_round(self) -> None:
        """Best-scoring (request, response) pairs first; ties by recorded order, then prompt."""
        records, used = self.records["instructions"], self.used["instructions"]
        pairs = sorted(((-self._instructions_score(prompt)(records[k]["text"]), k, prompt, n)
                        for n, (prompt, _) in enumerate(self.waiting)
                        for k in range(len(records)) if k not in used))
        slots = dict(enumerate(slot for _, slot in self.waiting))
        for _, k, _, n in pairs:
            if n in slots and k not in used:
                used.add(k)
                slots.pop(n)["record"] = records[k]
        for slot in slots.values():  # every response used: an empty reply
            slot["record"] = {"text": "", "finish_reason": "stop"}
        self.waiting.clear()
        self.cond.notify_all()

    @staticmethod
    def _instructions_score(prompt: str):
        examples = [_norm(m) for m in re.findall(r"^\d+\.\s*(.+)$", prompt, flags=re.MULTILINE)]
        return lambda text: sum(e in _norm(text) for e in examples if e)

    @staticmethod
    def _instances_score(prompt: str):
        task = prompt.rstrip().rsplit("Task:", 1)[-1]
        words = set(_WORD.findall(task.lower()))
        return lambda text: len(words & set(_WORD.findall(text.lower())))

    def respond(self, path: str, body: dict) -> dict:
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        record = self.pick(prompt)
        text = record["text"]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        common = {"id": "cmpl-replay", "created": 0, "model": body.get("model", ""), "usage": usage}
        if chat:
            return {**common, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": record["finish_reason"]}]}
        return {**common, "object": "text_completion", "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": record["finish_reason"]}]}


def load_records(path: Path = RECORDED) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replay(repo: Path, run_dir: Path, records: list[dict]) -> dict:
    """Run `repo`'s pipeline on the replayed responses in run_dir; the measurements of the run."""
    with ReplayServer(records, round_size=4) as server:  # llm.concurrency=4: rounds of 4
        result = subprocess.run([sys.executable, "run.py", *RUN_ARGS, f"llm.base_url={server.base_url}",
                                 f"hydra.run.dir={run_dir}"], cwd=repo, capture_output=True, text=True,
                                timeout=600, env={**os.environ, "OPENAI_API_KEY": "replay"})
    if result.returncode:
        raise RuntimeError(f"run.py failed in {repo}:\n{result.stderr[-3000:]}")
    return measure(run_dir)


def measure(run_dir: Path) -> dict:
    def rows(name: str) -> list[dict]:
        path = run_dir / name
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    stats = json.loads((run_dir / "stats.json").read_text())
    accepted, rejected, data = rows("instructions.jsonl"), rows("rejected.jsonl"), rows("data.jsonl")
    no_candidate = {"request_error", "parse_failure", "empty_response"}
    with_instances = {r["id"] for r in data}
    return {
        "accepted": len(accepted),
        "candidates": len(accepted) + sum(r["rule"] not in no_candidate for r in rejected),
        "acceptance": stats.get("quality/acceptance_rate"),
        "echoes": sum(r["rule"] == "echo" for r in rejected),
        "rouge": sum(r["rule"] == "rouge" for r in rejected),
        "instances": len(data),
        "tasks_without_instances": len({r["id"] for r in rows("instances_raw.jsonl")} - with_instances),
        "outputs_starting_with_colon": sum(r["output"].lstrip().startswith(":") for r in data),
        "parse_failures": {k.removeprefix("quality/parse_failures"): v for k, v in stats.items()
                           if k.startswith("quality/parse_failures")},
        "accepted_instructions": [r["instruction"] for r in accepted],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose run.py to replay through")
    parser.add_argument("--responses", type=Path, default=RECORDED)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = replay(args.repo.resolve(), Path(tmp) / "run", load_records(args.responses))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
