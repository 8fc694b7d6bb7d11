"""W&B tracking (selfinstruct/tracking.py), offline only: the reader of offline runs against a run
written directly with wandb, the mode rules, a run's W&B summary against its stats.json, and a
sweep's jobs sharing a group."""

from __future__ import annotations

import json
import time

import pytest
from omegaconf import OmegaConf

from selfinstruct.tracking import offline_runs, read_offline_run, wandb_mode
from tests.analysis_runs import seeds_sweep


def finished_run(run_dir) -> dict:
    """The one offline W&B run under run_dir, read once complete: run.finish() may return before
    wandb-core has written the log (seen for the second run of a process)."""
    deadline = time.monotonic() + 60
    while True:
        (path,) = offline_runs(run_dir)
        wb = read_offline_run(path)
        if wb["finished"] or time.monotonic() > deadline:
            return wb
        time.sleep(0.1)


def test_offline_run_reader_reads_what_wandb_wrote(tmp_path):
    import wandb

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", group="g1", name="n1",
                     config={"a": 1, "nested": {"b": "x"}},
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    run.summary.update({"data/num": 7, "diversity/share": 0.25})
    run.summary.update({"data/num": 8})  # the last value wins
    run.log({"long": "y" * 70000})  # a record larger than a 32 KiB block
    run.finish()
    wb = finished_run(tmp_path)
    assert wb["finished"]
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


def fake_run(run_dir, tracking: str) -> dict:
    """A small fake-model run (no model, no network) with the given tracking override."""
    from selfinstruct.pipeline import run
    from tests.conftest import compose

    cfg = compose(["llm=fake", "llm.cache=false", "num_instructions=10", "seed=3", tracking,
                   "stages=[instructions,classify,instances,prepare]"])
    return run(cfg, run_dir)


def test_offline_run_holds_the_stats_and_config_the_run_wrote(tmp_path):
    stats = fake_run(tmp_path, "tracking.mode=offline")
    wb = finished_run(tmp_path)
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written and stats == pytest.approx(written)
    assert {k: wb["summary"][k] for k in written} == pytest.approx(written)
    assert (wb["config"]["seed"], wb["config"]["num_instructions"], wb["config"]["llm"]["backend"]) == (3, 10, "fake")


@pytest.mark.parametrize("tracking", ["tracking=none", "tracking.mode=disabled"])
def test_no_tracking_leaves_no_wandb_run_but_writes_the_stats(tmp_path, tracking):
    stats = fake_run(tmp_path, tracking)
    assert stats["data/num_instructions"] == 10
    assert json.loads((tmp_path / "stats.json").read_text()) == pytest.approx(stats)
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
