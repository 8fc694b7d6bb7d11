"""Sweeps through Hydra launchers: joblib (parallel runs in reused worker processes), submitit_local,
the SLURM launcher config; the response cache shared by a sweep's runs and by later sweeps; the
metric run.py returns to sweepers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import selfinstruct.config  # noqa: F401  (registers the schemas)
from selfinstruct.tracking import offline_runs, read_offline_run
from tests.conftest import run_cli

# Plots are the slowest part of a fake run and play no part in these tests.
FAST = ["llm=fake", "analyze.plots=false"]

# Every run log line starts with the id of the process that ran the job.
LOG_PID = "hydra.job_logging.formatters.simple.format='[%(process)d] %(name)s %(message)s'"


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name))


def stats_of(job: Path) -> dict:
    return json.loads((job / "stats.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def job_config(job: Path):
    return OmegaConf.load(job / ".hydra" / "config.yaml")


def model_requests(stats: dict) -> dict[str, float]:
    return {k: v for k, v in stats.items() if re.fullmatch(r"cost/[a-z_]+/requests", k)}


@pytest.fixture(scope="module")
def rouge_sweep(tmp_path_factory) -> Path:
    """The issue's sweep: two ROUGE-L thresholds as two parallel joblib jobs, W&B offline."""
    root = tmp_path_factory.mktemp("rouge_sweep")
    result = run_cli(["-m", *FAST, "num_instructions=40", "filters.rouge_threshold=0.3,0.9", "tracking=wandb",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"llm.cache_dir={root / 'cache'}",
                      f"hydra.sweep.dir={root / 'sweep'}"], cwd=root, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_joblib_sweep_writes_each_job_to_its_own_dir(rouge_sweep):
    jobs = job_dirs(rouge_sweep / "sweep")
    assert [j.name for j in jobs] == ["0", "1"]
    assert [job_config(j).filters.rouge_threshold for j in jobs] == [0.3, 0.9]
    strict, loose = (stats_of(j) for j in jobs)
    for stats in (strict, loose):
        assert stats["cost/total/errors"] == 0  # both wrote the shared cache at once without failing
    # A stricter novelty filter rejects more of the same model's candidates.
    assert strict["quality/acceptance_rate"] < loose["quality/acceptance_rate"]
    assert strict.get("quality/rejected/rouge", 0) > loose.get("quality/rejected/rouge", 0)


def test_joblib_sweep_jobs_have_their_own_wandb_runs_in_one_group(rouge_sweep):
    sweep = rouge_sweep / "sweep"
    runs = []
    for job in job_dirs(sweep):
        (path,) = offline_runs(job)  # one offline run, inside the job's own dir
        run = read_offline_run(path)
        assert run["config"]["filters"]["rouge_threshold"] == job_config(job).filters.rouge_threshold
        assert run["summary"]["quality/acceptance_rate"] == stats_of(job)["quality/acceptance_rate"]
        runs.append(run)
    assert runs[0]["group"] == runs[1]["group"] and sweep.name in runs[0]["group"]
    assert runs[0]["name"] != runs[1]["name"]


def test_second_sweep_over_filters_only_is_answered_by_the_cache(rouge_sweep, tmp_path):
    # The same generation settings; the instance filters and the neighbours recorded change.
    # (The basic launcher this time: the cache outlives the sweep and its launcher.)
    result = run_cli(["-m", *FAST, "num_instructions=40", "filters.rouge_threshold=0.3,0.9",
                      "filters.drop_conflicting_outputs=false", "filters.drop_truncated_last_instance=false",
                      "filters.top_k_similar=3", "tracking=none", f"llm.cache_dir={rouge_sweep / 'cache'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for first, second in zip(job_dirs(rouge_sweep / "sweep"), job_dirs(tmp_path / "sweep")):
        stats, before = stats_of(second), stats_of(first)
        requests = model_requests(stats)
        assert {"cost/instructions/requests", "cost/classify/requests", "cost/instances/requests"} <= set(requests)
        assert all(n == 0 for n in requests.values()), requests
        for stage in ("instructions", "classify", "instances"):  # every answer came from the cache
            assert stats[f"cost/{stage}/cache_hits"] == \
                before[f"cost/{stage}/requests"] + before[f"cost/{stage}/cache_hits"] > 0
        old, new = (read_jsonl(job / "instructions.jsonl") for job in (first, second))
        assert [r["instruction"] for r in new] == [r["instruction"] for r in old]
        assert max(len(r["most_similar"]) for r in old) > 3  # the new filter setting applied
        assert max(len(r["most_similar"]) for r in new) == 3


def test_joblib_workers_reused_between_jobs_leak_no_state(tmp_path):
    """Three identical jobs on two worker processes: a job on a reused worker must give exactly the
    statistics of one on a fresh worker (no cache, so every job asks the model the same requests)
    and a W&B run of its own."""
    result = run_cli(["-m", *FAST, "llm.cache=false", "num_instructions=8", "seed=3,3,3",
                      "tracking=wandb", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", LOG_PID,
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(tmp_path / "sweep")
    assert len(jobs) == 3
    pids = [set(re.findall(r"^\[(\d+)\] ", (j / "run.log").read_text(), re.M)) for j in jobs]
    assert all(len(p) == 1 for p in pids)
    assert len(set.union(*pids)) < 3, "no worker process ran two jobs"

    def comparable(stats: dict) -> dict:
        return {k: v for k, v in stats.items() if not re.search(r"seconds|tokens_per_s", k)}

    reference = comparable(stats_of(jobs[0]))
    assert reference["cost/instructions/requests"] > 0
    for job in jobs[1:]:
        assert comparable(stats_of(job)) == reference
        for name in ("instructions.jsonl", "data.jsonl", "finetune.jsonl"):
            assert (job / name).read_text() == (jobs[0] / name).read_text()
    runs = [offline_runs(job) for job in jobs]
    assert all(len(r) == 1 for r in runs)  # no job logged into a run left open by the one before
    assert len({r[0].name for r in runs}) == 3
    for job, (run,) in zip(jobs, runs):
        assert read_offline_run(run)["summary"]["data/num_instructions"] == stats_of(job)["data/num_instructions"]


def test_submitit_local_runs_two_jobs_from_any_directory(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=submitit_local", *FAST, "seed=1,2", "num_instructions=5",
                      "tracking=none", f"llm.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert [job_config(j).seed for j in jobs] == [1, 2]
    for job in jobs:
        assert stats_of(job)["generation/num_accepted"] == 5
    # Each job ran in its own submitit process, with its logs in the sweep's .submitit folder.
    assert len(list((sweep / ".submitit").glob("*/*_0_log.out"))) == 2


def test_slurm_sweep_submits_one_job_array_with_the_configured_resources(tmp_path):
    """hydra/launcher=slurm through submitit up to sbatch, with stand-ins for sbatch (which keeps
    the script it is given and refuses the job) and srun (submitit looks for it): the script asks
    for what the config and the command line say, one array task per run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_COPY"\necho "sbatch: refused" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    script, sweep = tmp_path / "job.sh", tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                      "llm=fake", "tracking=none", "num_instructions=5,6", f"hydra.sweep.dir={sweep}"],
                     env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_COPY": str(script)}, timeout=120)
    assert "sbatch: refused" in result.stderr
    sbatch = {line.split()[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")}
    assert {"--partition=gpu", "--gpus-per-node=1", "--time=240", "--mem=16GB", "--cpus-per-task=8",
            "--nodes=1", "--ntasks-per-node=1", "--array=0-1%2"} <= sbatch  # 2 runs, at most 16 at once
    assert f"--output={sweep}/.submitit/%A_%a/%A_%a_0_log.out" in sbatch


def test_a_missing_optimized_metric_fails_the_run(tmp_path):
    result = run_cli(["-m", *FAST, "tracking=none", "num_instructions=2", "stages=[instructions]",
                      "optimized_metric=diversity/no_such_statistic", f"llm.cache_dir={tmp_path / 'cache'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert "optimized_metric" in result.stderr and "diversity/no_such_statistic" in result.stderr
