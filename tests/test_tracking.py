"""W&B tracking (selfinstruct/tracking.py), offline only: the reader of offline runs against a run
written directly with wandb, the mode rules, and a sweep's jobs sharing a group."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from selfinstruct.tracking import NoTracking, offline_runs, read_offline_run, start_tracking, wandb_mode
from tests.analysis_runs import seeds_sweep


def test_offline_run_reader_reads_what_wandb_wrote(tmp_path):
    import wandb

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", group="g1", name="n1",
                     config={"a": 1, "nested": {"b": "x"}},
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    run.summary.update({"data/num": 7, "diversity/share": 0.25})
    run.summary.update({"data/num": 8})  # the last value wins
    run.log({"long": "y" * 70000})  # a record larger than a 32 KiB block
    run.finish()
    (path,) = offline_runs(tmp_path)
    wb = read_offline_run(path)
    assert (wb["group"], wb["name"]) == ("g1", "n1")
    assert wb["config"]["a"] == 1 and wb["config"]["nested"] == {"b": "x"}
    assert wb["summary"]["data/num"] == 8 and wb["summary"]["diversity/share"] == 0.25
    assert wb["summary"]["long"] == "y" * 70000


def test_mode_rules(monkeypatch):
    t = OmegaConf.create({"mode": None})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(t) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(t) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(t) == "disabled"
    assert wandb_mode(OmegaConf.create({"mode": "offline"})) == "offline"


def test_tracking_none_and_disabled_start_nothing(tmp_path, monkeypatch):
    from tests.conftest import compose

    assert isinstance(start_tracking(compose(["tracking=none"]), tmp_path), NoTracking)
    assert isinstance(start_tracking(compose(["tracking.mode=disabled"]), tmp_path), NoTracking)
    assert not (tmp_path / "wandb").exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return seeds_sweep(tmp_path_factory)


def test_sweep_jobs_share_a_group_and_are_named_by_their_overrides(sweep):
    runs = [read_offline_run(offline_runs(sweep / job)[-1]) for job in ("0", "1")]
    assert runs[0]["group"] == runs[1]["group"] == "/".join(sweep.parts[-2:])
    assert "seeds.limit=10" in runs[0]["name"] and "seeds.limit=175" in runs[1]["name"]
    for job, wb in zip(("0", "1"), runs):
        stats = json.loads((sweep / job / "stats.json").read_text())
        assert wb["summary"]["diversity/rouge_to_seed_mean"] == pytest.approx(stats["diversity/rouge_to_seed_mean"])
    # fewer seeds, lower similarity to the nearest one
    assert runs[0]["summary"]["diversity/rouge_to_seed_mean"] < runs[1]["summary"]["diversity/rouge_to_seed_mean"]
