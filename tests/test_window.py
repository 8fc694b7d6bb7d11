"""The instructions stage's window (llm.window, requests submitted ahead = the bootstrap lag): the
files are a function of the answers and the window, never of answer times or llm.concurrency,
and a killed or extended run resumes, with the same window exactly."""

from __future__ import annotations

import json
import random
import subprocess
import time
import zlib

import pytest

from tests.conftest import compose
from tests.fake_openai_server import FakeOpenAIServer, default_answer, novel_answer
from tests.test_resume import kill_when, lines, start, tear

FILES = ("instructions.jsonl", "rejected.jsonl")


def mixed_answer(prompt: str, body: dict) -> str:
    """Novel instruction lists for two prompts in three, the fake model's (many near-duplicates,
    so ROUGE rejects some) for the others: both files get records that depend on the pool."""
    return novel_answer(prompt, body) if zlib.crc32(prompt.encode()) % 3 else default_answer(prompt, body)


def run_against(server, run_dir, *overrides):
    from selfinstruct.pipeline import run

    cfg = compose(["llm=openai_compatible", f"llm.base_url={server.base_url}", "llm.model=m",
                   "llm.cache=false", "tracking=none", "stages=[instructions]", *overrides])
    return run(cfg, run_dir)


def test_files_do_not_depend_on_answer_times_or_concurrency(tmp_path):
    outputs = []
    # answer times lognormal (sigma 1.5): answers come back far out of order; another server seed
    # and another concurrency give other arrival orders and other groups of ready responses
    for seed, concurrency in ((1, 8), (2, 3)):
        with FakeOpenAIServer(answer=mixed_answer, latency_s=0.02, latency_sigma=1.5, seed=seed) as server:
            stats = run_against(server, tmp_path / f"run{seed}", "num_instructions=300",
                                f"llm.concurrency={concurrency}", "llm.window=6")
            assert server.stats()["max_in_flight"] <= concurrency
        outputs.append([(tmp_path / f"run{seed}" / name).read_bytes() for name in FILES])
        assert stats["generation/num_accepted"] == 300 and stats["time/instructions/rouge_seconds"] > 0
    assert outputs[0] == outputs[1]
    assert outputs[0][1].count(b"\n") > 10  # rejections happened, and are the same too
    state = json.loads((tmp_path / "run1" / "progress.json").read_text())["instructions"]["state"]
    assert len(state["pool_sizes"]) == 6  # what the next request needs for its window


def test_default_window_is_larger_than_concurrency_for_the_openai_backends():
    from selfinstruct.generation.instructions import bootstrap_window
    from selfinstruct.llm.fake import FakeLLM
    from selfinstruct.llm.openai_backend import OpenAILLM

    def window(llm, *overrides):
        return bootstrap_window(compose(["llm=openai_compatible", *overrides]), llm)

    openai, fake = OpenAILLM(model="m"), FakeLLM(model="f")
    assert window(openai, "llm.concurrency=64", "num_instructions=52000") == 1024
    assert window(openai, "llm.concurrency=64", "num_instructions=1000") == 125  # fewest requests
    assert window(openai, "llm.concurrency=4", "num_instructions=6") == 4
    assert window(fake, "llm.concurrency=4", "num_instructions=52000") == 4
    assert window(fake, "llm.window=7") == 7


def test_a_run_extended_with_another_window_resumes(tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAIServer(answer=novel_answer, latency_s=0.01, latency_sigma=1.0) as server:
        run_against(server, run_dir, "num_instructions=60", "llm.concurrency=4", "llm.window=16")
        stats = run_against(server, run_dir, "num_instructions=140", "llm.concurrency=2", "llm.window=5")
    accepted = [json.loads(line) for line in (run_dir / "instructions.jsonl").open()]
    assert [r["id"] for r in accepted] == [f"machine_task_{i}" for i in range(140)]
    assert stats["generation/num_accepted"] == 140
    state = json.loads((run_dir / "progress.json").read_text())["instructions"]["state"]
    assert len(state["pool_sizes"]) == 5


@pytest.mark.slow
def test_kill_9_with_a_window_larger_than_concurrency_resumes_exactly(tmp_path):
    import sys

    from tests.conftest import REPO

    def command(run_dir):
        return [sys.executable, str(REPO / "run.py"), "llm=fake", "llm.latency_s=0.02", "llm.concurrency=2",
                "llm.window=7", "tracking=none", "num_instructions=80", "stages=[instructions]",
                "llm.cache=false", f"hydra.run.dir={run_dir}"]

    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rng = random.Random("window")
    run_dir = tmp_path / "killed"
    kills = 0
    for threshold in (5, 22, 41):
        proc = start(command(run_dir))
        if kill_when(proc, lambda n=threshold: lines(run_dir / "instructions.jsonl") >= n,
                     delay_s=rng.uniform(0, 0.03)):
            kills += 1
            tear(run_dir, rng)
        else:
            assert proc.wait() == 0, proc.stderr.read().decode()[-3000:]
        time.sleep(0.01)
    assert kills >= 2
    final = subprocess.run(command(run_dir), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stderr[-3000:]
    for name in FILES:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


def test_prefix_means_are_mean_score_bit_for_bit():
    from selfinstruct.datasets.seeds import load_seeds
    from selfinstruct.filtering.rouge import RougeIndex
    from selfinstruct.llm.fake import fake_instruction

    rng = random.Random(3)
    texts = [t.instruction for t in load_seeds()] + [fake_instruction(rng) for _ in range(600)]
    texts += ["", "...", "a b c"] + [novel_answer(f"{i}. x 9.", {}) for i in range(50)]
    index = RougeIndex(texts)
    positions = list(range(0, len(texts), 3)) + [776, 777, 778, len(texts) - 1, 0]
    assert index.prefix_means(positions) == [index.mean_score(texts[p], p) for p in positions]
