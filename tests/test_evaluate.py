"""The evaluate stage: scoring existing predictions against the paper's means, answering with a base
and a tuned model, the judge, statistics recomputed from eval.jsonl, and kill-and-resume."""

from __future__ import annotations

import json

import pytest

from selfinstruct.errors import RunError
from selfinstruct.evaluation.judge import pairwise_outcome, parse_pairwise, parse_rating, win_rate
from selfinstruct.files import read_jsonl
from selfinstruct.filtering.rouge import rouge_l_f
from selfinstruct.pipeline import run
from tests.conftest import compose, shared_path

FAKE = ["llm=fake", "tracking=none", "stages=[evaluate]"]


def test_scoring_the_papers_predictions_gives_their_mean_rouge(tmp_path):
    path = shared_path("self-instruct", "human_eval", "predictions", "davinci-self-instruct_predictions.jsonl")
    stats = run(compose([*FAKE, f"evaluate.predictions={path}"]), tmp_path)
    assert round(stats["eval/predictions/rougeL"], 3) == 0.276  # DESIGN.md: davinci + Self-Instruct
    records = read_jsonl(tmp_path / "eval.jsonl")
    assert len(records) == 252 and stats["eval/num_tasks"] == 252
    for r in records[:20]:  # each record's score is ROUGE-L of its answer against its reference
        assert r["rougeL"] == rouge_l_f(r["reference"], r["answer"])
    assert "cost/evaluate/requests" not in stats  # no model was asked


def base_and_tuned(tmp_path, *extra):
    cfg = compose([*FAKE, "evaluate.tuned_model=fake-tuned", "evaluate.judge=true", "evaluate.limit=30",
                   f"llm.cache_dir={tmp_path / 'cache'}", *extra])
    return run(cfg, tmp_path / "run")


def test_base_and_tuned_answers_are_scored_and_the_statistics_follow_from_the_records(tmp_path):
    stats = base_and_tuned(tmp_path)
    records = read_jsonl(tmp_path / "run" / "eval.jsonl")
    assert len(records) == 30 == stats["eval/num_tasks"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for r in records:
        for m in ("base", "tuned"):
            assert r[f"{m}_rougeL"] == rouge_l_f(r["reference"], r[f"{m}_answer"])
            assert "<|endoftext|>" not in r[f"{m}_answer"]  # cut at the end token
    assert stats["eval/base/rougeL"] == pytest.approx(mean([r["base_rougeL"] for r in records]))
    assert stats["eval/tuned/rougeL"] == pytest.approx(mean([r["tuned_rougeL"] for r in records]))
    assert stats["eval/delta/rougeL"] == pytest.approx(stats["eval/tuned/rougeL"] - stats["eval/base/rougeL"])
    classification = [r for r in records if r["is_classification"]]
    assert classification and stats["eval/base/exact_match"] == pytest.approx(
        mean([r["base_exact_match"] for r in classification]))
    # the judge: four levels per answer, a win rate from both orders of the comparison
    shares = [stats.get(f"eval/tuned/rating_{x}", 0.0) for x in "ABCD"]
    assert sum(shares) == pytest.approx(1.0)
    assert stats["eval/tuned/rating_C"] == pytest.approx(mean([r["tuned_rating"] == "C" for r in records]))
    assert stats["eval/win_rate"] == pytest.approx(win_rate(r["pairwise"] for r in records))
    judged = read_jsonl(tmp_path / "run" / "eval_judge.jsonl")
    by = {(j["kind"], j["id"]): j["raw"] for j in judged}
    for r in records:
        assert r["tuned_rating"] == parse_rating(by[("rate/tuned", r["id"])])
        assert r["pairwise"] == pairwise_outcome(parse_pairwise(by[("pair/tuned_first", r["id"])]),
                                                 parse_pairwise(by[("pair/base_first", r["id"])]))
    assert stats["cost/evaluate/requests"] == 60 and stats["cost/evaluate_judge/requests"] == 120


def test_a_killed_evaluation_resumes_to_the_same_records(tmp_path, monkeypatch):
    from selfinstruct.rundir.checkpoint import Checkpoint

    whole = tmp_path / "whole"
    base_and_tuned(whole, "llm.cache=false")
    commit, calls = Checkpoint.commit, []

    def dying_commit(self, stage, *args, **kwargs):
        calls.append(stage)
        if stage == "evaluate" and calls.count("evaluate") == 3:
            raise KeyboardInterrupt  # a kill in the middle of the tuned model's answers
        return commit(self, stage, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "commit", dying_commit)
    torn = tmp_path / "torn"
    with pytest.raises(KeyboardInterrupt):
        base_and_tuned(torn, "llm.cache=false", "llm.concurrency=1")  # batches of 8
    monkeypatch.setattr(Checkpoint, "commit", commit)
    assert not (torn / "run" / "eval.jsonl").exists()
    stats = base_and_tuned(torn, "llm.cache=false")
    assert (torn / "run" / "eval.jsonl").read_bytes() == (whole / "run" / "eval.jsonl").read_bytes()
    # what was committed before the kill was not asked again: 60 answers in all, 8 of them twice
    # (the uncommitted batch)
    assert stats["cost/evaluate/requests"] == 60 + 8


def test_without_a_tuned_model_the_stage_says_how_to_get_one(tmp_path):
    with pytest.raises(RunError, match="no tuned model.*stages=\\[finetune,evaluate\\].*evaluate.tuned=false"):
        run(compose([*FAKE, "evaluate.limit=3"]), tmp_path)
    stats = run(compose([*FAKE, "evaluate.limit=3", "evaluate.tuned=false"]), tmp_path / "base_only")
    assert "eval/base/rougeL" in stats and "eval/delta/rougeL" not in stats


def test_the_original_252_user_oriented_tasks_load_as_the_evaluation_set(tmp_path):
    path = shared_path("self-instruct", "human_eval", "user_oriented_instructions.jsonl")
    stats = run(compose([*FAKE, f"evaluate.path={path}", "evaluate.tuned=false", "evaluate.limit=12"]), tmp_path)
    records = read_jsonl(tmp_path / "eval.jsonl")
    originals = [json.loads(line) for line in path.read_text().splitlines()][:12]
    assert [r["instruction"] for r in records] == [o["instruction"].strip() for o in originals]
    assert [r["reference"] for r in records] == [o["instances"][0]["output"].strip() for o in originals]
    assert stats["eval/num_tasks"] == 12 and "eval/base/exact_match" not in stats  # no flags there


def test_answers_of_another_tuned_model_are_asked_again_not_mixed_in(tmp_path):
    base_and_tuned(tmp_path, "llm.cache=false")
    stats = base_and_tuned(tmp_path, "llm.cache=false", "evaluate.tuned_model=fake-tuned-2")
    # this invocation asked the tuned model again (30 tasks) and not the base model
    assert stats["cost/evaluate/requests"] == 60 + 30
    records = read_jsonl(tmp_path / "run" / "eval_answers.jsonl")
    tuned = [r for r in records if r["model"] == "tuned"]
    assert len(tuned) == 60 and {r["version"] for r in tuned[30:]} == {"named:fake-tuned-2@None"}
    assert len(read_jsonl(tmp_path / "run" / "eval.jsonl")) == 30
    # the fake model answers alike, so the judge's verdicts on the same texts were kept
    assert stats["cost/evaluate_judge/requests"] == 120
