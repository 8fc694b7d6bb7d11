"""Runs shared by the analyze, tracking and notebook tests, made once per test session: the CLI on
real datasets from ../shared (skipped with the reason when ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, shared_path

DOFFERY = ("runs", "Doffery__stanford_alpaca", "regen.json")  # 1,161 Alpaca records, GPT-4
MINPETER = ("runs", "minpeter__stanford_alpaca", "regen.json")  # 147 records: a small real file
_made: dict[str, Path] = {}


def analyzed(tmp_path_factory, name: str, args: list[str], *, sweep: bool = False) -> Path:
    """The run dir (or sweep dir) of `python run.py <args>`, W&B offline, made once per session."""
    if name not in _made:
        root = tmp_path_factory.mktemp(name)
        target = root / ("sweep" if sweep else "run")
        where = f"hydra.sweep.dir={target}" if sweep else f"hydra.run.dir={target}"
        result = run_cli([*args, where], cwd=Path(__file__).resolve().parents[1],
                         env={"WANDB_MODE": "offline"})
        assert result.returncode == 0, result.stderr[-3000:]
        _made[name] = target
    return _made[name]


def doffery_run(tmp_path_factory) -> Path:
    """The issue's acceptance command: `python run.py stages=[analyze] input=../shared/...regen.json`
    run from the repository root (tracking is the default: W&B, offline here)."""
    shared_path(*DOFFERY)
    return analyzed(tmp_path_factory, "doffery",
                    ["stages=[analyze]", "input=../shared/data/" + "/".join(DOFFERY)])


def seeds_sweep(tmp_path_factory) -> Path:
    """A two-job sweep over the seed set size on a small real file, W&B offline."""
    path = shared_path(*MINPETER)
    return analyzed(tmp_path_factory, "seeds_sweep",
                    ["-m", "stages=[analyze]", f"input={path}", "seeds.limit=10,175"], sweep=True)
