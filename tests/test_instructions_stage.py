"""The instructions stage: in-context sampling, the numbered-list parser, the rule filters, and the
bootstrap loop end to end on the fake backend (including resume and extension)."""

from __future__ import annotations

import json
import random

import pytest
from omegaconf import OmegaConf

from selfinstruct.filtering.rules import check_instruction
from selfinstruct.files import read_jsonl
from selfinstruct.pipeline import run
from selfinstruct.prompts.instructions import build_prompt, parse_instruction_list, sample_in_context
from selfinstruct.filtering.rouge import rouge_l_f
from tests.conftest import compose

SEEDS = [f"seed instruction number {i}" for i in range(20)]
MACHINE = [f"machine instruction number {i}" for i in range(5)]


def test_in_context_sampling_is_6_human_plus_2_machine():
    chosen = sample_in_context(random.Random(0), SEEDS, MACHINE, 6, 2)
    assert len(chosen) == 8
    assert sum(c.startswith("machine") for c in chosen) == 2
    assert len(set(chosen)) == 8


def test_in_context_sampling_is_all_human_while_fewer_than_2_machine():
    chosen = sample_in_context(random.Random(0), SEEDS, MACHINE[:1], 6, 2)
    assert len(chosen) == 8 and all(c.startswith("seed") for c in chosen)


def test_prompt_ends_with_the_next_open_number():
    prompt, first = build_prompt(SEEDS[:8], chat=False, max_list_number=16)
    assert first == 9
    assert prompt.endswith("\n8. seed instruction number 7\n9.")


def test_parser_splits_numbered_continuation_and_collapses_whitespace():
    text = " Plan a  trip to the\n coast.\n10. Name three rivers.\n11.   \n12) Explain tides to a child."
    assert parse_instruction_list(text, 9) == [
        "Plan a trip to the coast.", "Name three rivers.", "Explain tides to a child."]


def test_parser_accepts_a_chat_reply_that_repeats_the_number():
    assert parse_instruction_list("9. First task here.\n10. Second task here.", 9) == [
        "First task here.", "Second task here."]


@pytest.mark.parametrize("text, rule", [
    ("Three words only", "too_short"),
    ("word " * 151, "too_long"),
    ("Describe the image below in detail.", "blacklist"),
    ("Please go  to the store and buy milk.", "blacklist"),
    ("Write a program that sorts a list.", "banned_prefix"),
    ("- Explain the rules of chess briefly.", "punctuation_start"),
    ("Éxplain the rules of chess briefly.", "non_ascii_start"),
    ("Explain the rules of chess briefly.", None),
    ("Summarize the imagery used in this poem.", None),  # whole words only: 'imagery' is fine
])
def test_rule_filters(text, rule):
    cfg = compose([])
    broken = check_instruction(text.strip() if rule != "too_long" else text, cfg.filters)
    assert (broken[0] if broken else None) == rule


def run_fake(tmp_path, run_dir, extra=()):
    cfg = compose(["llm=fake", "tracking=none", "stages=[instructions]", f"llm.cache_dir={tmp_path / 'cache'}",
                   *extra])
    return cfg, run(cfg, run_dir)


def test_fake_run_obeys_every_filter(tmp_path):
    cfg, stats = run_fake(tmp_path, tmp_path / "run", ["num_instructions=40"])
    accepted = read_jsonl(tmp_path / "run" / "instructions.jsonl")
    rejected = read_jsonl(tmp_path / "run" / "rejected.jsonl")
    assert len(accepted) == 40
    assert [r["id"] for r in accepted] == [f"machine_task_{i}" for i in range(40)]
    pool = [t["instruction"] for t in map(json.loads, open(_seed_file(cfg)))]
    for r in accepted:
        assert check_instruction(r["instruction"], cfg.filters) is None
        exact_max = max(rouge_l_f(p, r["instruction"]) for p in pool)
        assert exact_max <= 0.7 and r["max_rouge"] == exact_max
        assert len(r["most_similar"]) == 10
        pool.append(r["instruction"])
    assert {r["rule"] for r in rejected} >= {"too_short", "blacklist"}
    assert stats["quality/acceptance_rate"] == pytest.approx(40 / (40 + len(rejected)))
    assert stats["cost/instructions/requests"] > 0


def _seed_file(cfg):
    from selfinstruct.datasets.seeds import DEFAULT_SEEDS

    return cfg.seeds.path or DEFAULT_SEEDS


def test_rerun_with_more_instructions_keeps_the_first_byte_for_byte(tmp_path):
    run_dir = tmp_path / "run"
    run_fake(tmp_path, run_dir, ["num_instructions=12"])
    first = (run_dir / "instructions.jsonl").read_bytes()
    _, stats = run_fake(tmp_path, run_dir, ["num_instructions=16"])
    extended = (run_dir / "instructions.jsonl").read_bytes()
    assert extended.startswith(first) and extended.count(b"\n") == 16
    # the rerun asked only for new work: it went on from the response that reached 12 (the answers
    # still in flight then went unused; the rerun gets them back from the cache), so it gives what
    # a run asked for 16 from the start gives
    run_fake(tmp_path, tmp_path / "straight", ["num_instructions=16"])
    assert extended == (tmp_path / "straight" / "instructions.jsonl").read_bytes()
    assert stats["cost/instructions/cache_hits"] < 8  # at most the unused answers (window 8)


def test_resume_after_a_crash_and_a_torn_line_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from selfinstruct.rundir.checkpoint import Checkpoint

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run_fake(tmp_path, whole, ["num_instructions=30", "llm.concurrency=1"])
    commit, calls = Checkpoint.commit, []

    def dying_commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # dies between appending round 3 and committing it
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        run_fake(tmp_path, crashed, ["num_instructions=30", "llm.concurrency=1"])
    monkeypatch.setattr(Checkpoint, "commit", commit)
    with open(crashed / "instructions.jsonl", "a") as f:
        f.write('{"id": "machine_task_99", "instru')  # and a torn line after the uncommitted round
    run_fake(tmp_path, crashed, ["num_instructions=30", "llm.concurrency=1"])
    assert (crashed / "instructions.jsonl").read_bytes() == (whole / "instructions.jsonl").read_bytes()
    assert (crashed / "rejected.jsonl").read_bytes() == (whole / "rejected.jsonl").read_bytes()


def test_stricter_threshold_accepts_less(tmp_path):
    _, strict = run_fake(tmp_path, tmp_path / "a", ["num_instructions=30", "filters.rouge_threshold=0.4"])
    _, loose = run_fake(tmp_path, tmp_path / "b", ["num_instructions=30", "filters.rouge_threshold=0.9"])
    assert strict["quality/acceptance_rate"] < loose["quality/acceptance_rate"]


def test_truncated_response_is_discarded_whole(tmp_path):
    from selfinstruct.errors import RunError

    # every response is cut by max_tokens: nothing is accepted, and a run that produced nothing it
    # was asked for fails, naming the rule that rejected everything
    with pytest.raises(RunError, match="truncated_response"):
        run_fake(tmp_path, tmp_path / "run", ["num_instructions=3", "sampling.instructions.max_tokens=20",
                                              "llm.concurrency=1", "filters.min_words=0"])
    rejected = read_jsonl(tmp_path / "run" / "rejected.jsonl")
    assert rejected and all(r["rule"] == "truncated_response" for r in rejected)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())  # written all the same
    assert stats["quality/rejected/truncated_response"] == len(rejected)
