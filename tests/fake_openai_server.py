"""A local OpenAI-compatible HTTP server for tests and benchmarks (binds 127.0.0.1 only).

Serves POST /v1/completions and /v1/chat/completions with answers in the formats our stages parse
(the fake model's answers, see `default_answer`), and injects faults at a configurable rate:
429 (rate limit), 500, a 200 whose body is not valid JSON, a dropped connection, and a slow answer
(longer than a client timeout); "401" (not by default) rejects the key. Which request gets a fault
is a pure function of (seed, arrival number), so a run sees the same fault pattern every time;
`fail_first=n` gives the first n arrivals a fault. GET /stats returns the counters.

In a test:
    with FakeOpenAIServer(fault_rate=0.2) as server:
        ... llm.base_url=server.base_url ...
        server.stats()["requests"]

As a process (benchmarks, so the server does not share the client's GIL):
    python tests/fake_openai_server.py --latency 0.1      # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.local_server import JSONHandler, LocalServer  # noqa: E402

FAULT_KINDS = ("429", "500", "invalid_json", "drop", "slow")  # transient: a client should retry
# "401" answers like a real server to a wrong key, quoting it: a client must not retry, nor log it.
ALL_FAULT_KINDS = FAULT_KINDS + ("401",)
Answer = Callable[[str, dict], str]


def default_answer(prompt: str, body: dict) -> str:
    """The fake model's answer to one of our prompts, chosen by the stage that wrote it."""
    from selfinstruct.llm.base import Request, Sampling
    from selfinstruct.llm.fake import FakeLLM

    stage = guess_stage(prompt)
    # The fake answers as a pure function of (request id, prompt); the server sees no request id,
    # so every request of a stage gets the same one and the prompt alone decides the answer.
    request = Request(f"{stage}/0", prompt, chat="messages" in body)
    return FakeLLM(model="fake-server")._answer(request, Sampling(max_tokens=10**6)).text


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_VERBS = ["Describe", "Explain", "Summarize", "Suggest", "Compare", "List", "Rewrite", "Plan",
          "Classify", "Translate", "Outline", "Evaluate", "Recommend", "Estimate", "Design", "Name"]


def novel_answer(prompt: str, body: dict) -> str:
    """Like default_answer, but instruction lists are random phrases of pseudo-words (consonant-
    vowel syllables: never a blacklisted word), so almost every candidate is novel under ROUGE-L
    and a run can reach the paper's 52K instructions. Other stages answer as default_answer."""
    stage = guess_stage(prompt)
    if stage != "instructions":
        return default_answer(prompt, body)
    match = re.search(r"(\d+)\.\s*$", prompt)
    first = int(match.group(1)) if match else 9
    rng = random.Random(prompt)
    lines = []
    for number in range(first, 16):
        words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) for _ in range(rng.randint(7, 14))]
        item = f"{rng.choice(_VERBS)} the {' '.join(words)}."
        lines.append(item if number == first else f"{number}. {item}")
    return " " + "\n".join(lines)


ANSWERS = {"default": default_answer, "novel": novel_answer}


def guess_stage(prompt: str) -> str:
    """Which of our stages wrote the prompt (the fake model answers by stage)."""
    from selfinstruct.llm.fake import ALPACA_PROMPT
    from selfinstruct.prompts import classify

    tail = prompt.rstrip()[-400:]
    if re.search(r"\n\d+\.$", tail) or re.search(r"numbered from \d+ to \d+", tail) \
            or ALPACA_PROMPT.search(prompt):
        return "instructions"
    if classify.QUESTION in prompt:
        return "classify"
    return "instances"


class FakeOpenAIServer(LocalServer):
    def __init__(self, *, latency_s: float = 0.0, fault_rate: float = 0.0,
                 faults: tuple[str, ...] = FAULT_KINDS, slow_s: float = 2.0, seed: int = 0,
                 fail_first: int = 0, answer: Optional[Answer] = None, port: int = 0,
                 latency_sigma: float = 0.0):
        unknown = set(faults) - set(ALL_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {ALL_FAULT_KINDS}")
        self.latency_s, self.fault_rate, self.faults = latency_s, fault_rate, tuple(faults)
        # > 0: answer times vary as a real server's do, lognormal with mean latency_s, so answers
        # come back in another order than the requests went out
        self.latency_sigma = latency_sigma
        self.fail_first = fail_first
        self.slow_s, self.seed = slow_s, seed
        self.answer = answer or default_answer
        self.lock = threading.Lock()
        self.arrivals = 0
        self.outcomes: Counter = Counter()  # "ok" and each fault kind
        self.auth_headers: set[str] = set()
        self.in_flight = self.max_in_flight = 0
        super().__init__(_handler_for(self), port)

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.arrivals, "max_in_flight": self.max_in_flight, **self.outcomes}

    def next_fault(self, auth: str) -> tuple[Optional[str], float]:
        """Count an arrival; decide its fault (None: answer normally) and how long it takes."""
        with self.lock:
            number = self.arrivals
            self.arrivals += 1
            self.auth_headers.add(auth)
        rng = random.Random(f"{self.seed}/{number}")
        faulty = number < self.fail_first or rng.random() < self.fault_rate
        fault = rng.choice(self.faults) if self.faults and faulty else None
        latency = self.latency_s
        if self.latency_sigma and latency:
            latency *= rng.lognormvariate(-self.latency_sigma ** 2 / 2, self.latency_sigma)
        with self.lock:
            self.outcomes[fault or "ok"] += 1
        return fault, latency

    def respond(self, path: str, body: dict) -> dict:
        """The OpenAI-format body of a normal answer."""
        chat = path.endswith("/chat/completions")
        prompt = (body["messages"][-1]["content"] if chat else body["prompt"])
        text = self.answer(prompt, body)
        stop = body.get("stop") or []
        for s in [stop] if isinstance(stop, str) else stop:
            if s in text:
                text = text[: text.index(s)]
        finish = "stop"
        words = text.split(" ")
        max_tokens = body.get("max_tokens") or 16
        if len(words) > max_tokens:  # one "token" per word, as the fake model counts
            text, finish = " ".join(words[:max_tokens]), "length"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        common = {"id": "cmpl-fake", "created": 0, "model": body.get("model", ""), "usage": usage}
        if chat:
            return {**common, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
        return {**common, "object": "text_completion", "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def _handler_for(server: FakeOpenAIServer) -> type:
    class Handler(JSONHandler):

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                self.send(200, json.dumps(server.stats()).encode())
            else:
                self.send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            path = self.path.split("?")[0].rstrip("/")
            if not path.endswith(("/completions",)):
                self.send(404, b'{"error": {"message": "not found"}}')
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self.send(400, b'{"error": {"message": "request body is not JSON"}}')
                return
            auth = self.headers.get("Authorization", "")
            fault, latency = server.next_fault(auth)
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if latency:
                    time.sleep(latency)
                if fault == "429":
                    self.send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                              {"retry-after-ms": "20"})
                elif fault == "401":
                    message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
                    self.send(401, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                         "code": "invalid_api_key"}}).encode())
                elif fault == "500":
                    self.send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
                elif fault == "invalid_json":
                    self.send(200, b'{"id": "cmpl-fake", "choices": [{"text": "trunc')
                elif fault == "drop":
                    self.close_connection = True  # no response at all
                else:
                    if fault == "slow":
                        time.sleep(server.slow_s)
                    self.send(200, json.dumps(server.respond(path, body)).encode())
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout); nothing to do
            finally:
                with server.lock:
                    server.in_flight -= 1

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer (the mean)")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal spread of answer times")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS))
    parser.add_argument("--slow", type=float, default=2.0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--answers", choices=sorted(ANSWERS), default="default")
    args = parser.parse_args()
    server = FakeOpenAIServer(latency_s=args.latency, latency_sigma=args.sigma, fault_rate=args.fault_rate,
                              faults=tuple(f for f in args.faults.split(",") if f),
                              slow_s=args.slow, seed=args.seed, fail_first=args.fail_first,
                              port=args.port, answer=ANSWERS[args.answers]).start()
    print(f"PORT {server.port}", flush=True)
    try:
        time.sleep(args.max_seconds)  # bounded: a forgotten server stops by itself
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
