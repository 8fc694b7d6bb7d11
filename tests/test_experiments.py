"""Experiment presets (experiments/experiment/*.yaml, `python run.py -m +experiment=NAME`): every
preset composes and its sweep parses, one point of every sweep runs on the fake model, presets are
found from any working directory, and a preset that does not exist fails before anything runs."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

import selfinstruct.config  # noqa: F401  (registers the schemas)
from selfinstruct.config import ConfigError, validate
from selfinstruct.pipeline import run
from tests.conftest import REPO, run_cli
from tests.conftest import compose as compose_job

EXPERIMENTS = REPO / "experiments"
PRESETS = sorted(p.stem for p in (EXPERIMENTS / "experiment").glob("*.yaml"))
SINGLE_RUNS = ("align",)  # presets of one run, not a sweep
SWEEPS = [p for p in PRESETS if p not in SINGLE_RUNS]
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def parse(key: str, value) -> Override:
    (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
    return override


def one_point(override: Override) -> str:
    """One value of a sweep as an override string: the first choice, or an interval's midpoint."""
    key = override.input_line.split("=", 1)[0]
    if override.is_interval_sweep():
        interval = override.value()
        return f"{key}={(interval.start + interval.end) / 2}"
    return f"{key}={next(override.sweep_string_iterator())}"


def sweep_overrides(name: str) -> list[Override]:
    cfg = compose_with_hydra([f"+experiment={name}"])
    return [parse(key, value) for key, value in cfg.hydra.sweeper.params.items()]


def test_the_presets_of_the_issue_exist_and_the_readme_gives_each_command():
    assert set(PRESETS) >= {"rouge_threshold", "machine_examples", "sampling_grid", "sampling_optuna",
                            "seed_set_size", "prompt_template", "classification_seeds", "data_size"}
    readme = (EXPERIMENTS / "README.md").read_text()
    for name in PRESETS:
        command = "python run.py +experiment=" if name in SINGLE_RUNS else "python run.py -m +experiment="
        assert f"{command}{name}" in readme, name


def test_align_preset_runs_the_papers_loop_and_returns_the_gain():
    path = EXPERIMENTS / "experiment" / "align.yaml"
    assert path.read_text().startswith("# @package _global_\n")
    cfg = compose_with_hydra(["+experiment=align"])
    assert cfg.stages[:4] == ["instructions", "classify", "instances", "prepare"]
    assert cfg.stages.index("finetune") < cfg.stages.index("evaluate")
    assert cfg.finetune.epochs == 2 and cfg.finetune.backend == "local"  # the paper's 2 epochs
    assert cfg.optimized_metric == "eval/delta/rougeL" and "align" in cfg.tracking.tags
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)


@pytest.mark.parametrize("name", SWEEPS)
def test_preset_is_a_global_delta_with_a_sweep_that_parses(name):
    path = EXPERIMENTS / "experiment" / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_\n")
    cfg = compose_with_hydra([f"+experiment={name}"])
    params = cfg.hydra.sweeper.params
    assert params, f"{name} sweeps nothing"
    for key, value in params.items():
        override = parse(key, value)
        assert override.is_sweep_override(), f"{name}: {key}={value} is not a sweep"
        if cfg.hydra.sweeper._target_ == BASIC_SWEEPER:
            assert len(list(override.sweep_string_iterator())) >= 2, f"{name}: {key}"
    # Each preset names its runs: a sweep dir and a W&B tag of its own.
    assert f"multirun/experiments/{name}_" in cfg.hydra.sweep.dir
    assert name in cfg.tracking.tags
    # The composed job config is valid (YAML of the preset matches the schemas and value ranges).
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)


def test_the_sweeps_have_the_values_the_issue_asks_for():
    def values(name: str, key: str) -> list:
        (override,) = [o for o in sweep_overrides(name) if o.input_line.startswith(key + "=")]
        return list(override.sweep_iterator())

    assert values("rouge_threshold", "filters.rouge_threshold") == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert values("seed_set_size", "seeds.limit") == [25, 50, 100, 175]
    assert values("classification_seeds", "seeds.classification_only") == [False, True]
    assert values("prompt_template", "prompt") == ["selfinstruct", "alpaca"]
    machine = []
    for option in values("machine_examples", "+in_context"):
        prompt = yaml.safe_load((EXPERIMENTS / "in_context" / f"{option}.yaml").read_text())
        assert prompt["num_human"] + prompt["num_machine"] == 8, option  # the paper's 8 examples
        machine.append(prompt["num_machine"])
    assert machine == [0, 2, 4]


def test_data_size_preset_sweeps_the_finetuning_size_and_runs_on_an_existing_dataset(tmp_path):
    """+experiment=data_size: prepare.num_instructions swept, each job through prepare, finetune
    and evaluate; on an existing run's data.jsonl with stages=[prepare,finetune,evaluate] input=."""
    (override,) = sweep_overrides("data_size")
    assert override.input_line.startswith("prepare.num_instructions=")
    assert list(override.sweep_iterator()) == [5, 10, 20]
    cfg = compose_with_hydra(["+experiment=data_size"])
    assert cfg.stages[-3:] == ["prepare", "finetune", "evaluate"] and cfg.stages[0] == "instructions"
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "Name a colour.", "input": "", "output": "Red."}) + "\n")
    cfg = compose_with_hydra(["+experiment=data_size", "stages=[prepare,finetune,evaluate]", f"input={data}",
                              "prepare.num_instructions=10"])
    assert cfg.stages == ["prepare", "finetune", "evaluate"] and cfg.prepare.num_instructions == 10
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)


def test_prompt_template_points_switch_prompt_sampling_and_filters_together():
    cfg = compose_with_hydra(["+experiment=prompt_template", "prompt=alpaca"])
    assert (cfg.prompt.name, cfg.sampling.name, cfg.filters.name) == ("alpaca", "alpaca", "alpaca")
    cfg = compose_with_hydra(["+experiment=prompt_template", "prompt=selfinstruct"])
    assert (cfg.prompt.name, cfg.sampling.name, cfg.filters.name) == ("selfinstruct", "paper", "default")


def test_optuna_preset_uses_the_optuna_sweeper_on_a_returned_metric():
    cfg = compose_with_hydra(["+experiment=sampling_optuna"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "diversity/unique_verb_noun_pairs"
    assert all(parse(k, v).is_interval_sweep() for k, v in cfg.hydra.sweeper.params.items())


@pytest.mark.parametrize("name", PRESETS)
def test_one_point_of_each_preset_runs_on_the_fake_model(name, tmp_path, fake_overrides):
    point = [one_point(o) for o in sweep_overrides(name)] if name not in SINGLE_RUNS else []
    cfg = compose_with_hydra([f"+experiment={name}", *point, *fake_overrides, "num_instructions=4",
                              "analyze.plots=false"])
    for override_line in point:  # the point took effect
        override = parse(*override_line.split("=", 1))
        group = override.key_or_group
        if group in cfg.hydra.runtime.choices:
            assert cfg.hydra.runtime.choices[group] == override.value()
        else:
            assert OmegaConf.select(cfg, group) == pytest.approx(override.value())
    with open_dict(cfg):
        del cfg["hydra"]
        # the fake model cannot be fine-tuned: a preset that fine-tunes runs its generation part
        # here (the finetune and evaluate stages have their own tests)
        cfg.stages = [s for s in cfg.stages if s not in ("finetune", "evaluate")]
    stats = run(cfg, tmp_path / "run")
    assert stats["generation/num_accepted"] == 4
    assert json.loads((tmp_path / "run" / "stats.json").read_text()) == pytest.approx(stats)
    if cfg.optimized_metric and not cfg.optimized_metric.startswith("eval/"):  # evaluate was dropped
        assert isinstance(stats[cfg.optimized_metric], (int, float))


def test_unknown_preset_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="Could not find 'experiment/no_such_preset'"):
        compose_with_hydra(["+experiment=no_such_preset"])


def test_unknown_preset_fails_on_the_command_line_before_any_run(tmp_path):
    result = run_cli(["-m", "+experiment=no_such_preset", "llm=fake", "tracking=none",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'experiment/no_such_preset'" in result.stderr
    assert "rouge_threshold" in result.stderr  # the available presets are listed
    assert not (tmp_path / "sweep").exists()


def test_preset_key_left_without_the_experiment_group_is_rejected():
    # What `+experiment=NAME` leaves when Hydra has no `experiment` group: a plain key.
    cfg = compose_job(["llm=fake"])
    with open_dict(cfg):
        cfg.experiment = "rouge_threshold"
    with pytest.raises(ConfigError, match="`experiment`"):
        validate(cfg)


def test_preset_sweep_runs_from_another_working_directory(tmp_path):
    result = run_cli(["-m", "+experiment=rouge_threshold", "llm=fake", "tracking=none",
                      "num_instructions=3", "stages=[instructions]", f"llm.cache_dir={tmp_path / 'cache'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "experiments").glob("rouge_threshold_*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4"]
    thresholds = [OmegaConf.load(j / ".hydra" / "config.yaml").filters.rouge_threshold for j in jobs]
    assert thresholds == [0.5, 0.6, 0.7, 0.8, 0.9]
    for job in jobs:
        assert json.loads((job / "stats.json").read_text())["generation/num_accepted"] == 3


def test_command_line_values_replace_the_preset_sweep(tmp_path):
    result = run_cli(["-m", "+experiment=seed_set_size", "seeds.limit=30", "llm=fake", "tracking=none",
                      "num_instructions=2", "stages=[instructions]", f"llm.cache_dir={tmp_path / 'cache'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 1
    assert OmegaConf.load(jobs[0] / ".hydra" / "config.yaml").seeds.limit == 30


def test_optuna_preset_optimises_the_metric_run_py_returns(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", "+experiment=sampling_optuna", "hydra.sweeper.n_trials=2", "llm=fake",
                      "tracking=none", "num_instructions=4", "analyze.plots=false",
                      f"llm.cache_dir={tmp_path / 'cache'}",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    values = [json.loads((j / "stats.json").read_text())["diversity/unique_verb_noun_pairs"] for j in jobs]
    temperatures = [OmegaConf.load(j / ".hydra" / "config.yaml").sampling.instructions.temperature
                    for j in jobs]
    assert all(0.2 <= t <= 1.5 for t in temperatures) and temperatures[0] != temperatures[1]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == max(values)
    assert set(results.best_params) == {"sampling.instructions.temperature", "sampling.instructions.top_p"}
