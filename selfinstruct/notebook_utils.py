"""What the notebooks (notebooks/*.ipynb) do, as functions, so their cells stay short.

Both notebooks find the run to analyse in the environment variable SELFINSTRUCT_RUN, else take the
newest run under outputs/ (verb_noun_diversity) or the newest sweep under multirun/ (compare_runs),
looked up in the current directory and its parent (the repository root, for notebooks/).
open_run() and open_sweep() print what they found, or one line saying what is missing and how to
get it, and return None: the notebooks' cells then do nothing (no traceback). Figures are
matplotlib, so they are PNGs in the saved notebook and in an HTML export.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from omegaconf import OmegaConf

from selfinstruct.datasets.formats import Dataset, record
from selfinstruct.files import read_jsonl
from selfinstruct.datasets.seeds import load_seeds
from selfinstruct.analysis.stats import load_analysis

REPO = Path(__file__).resolve().parents[1]


def _roots() -> list[Path]:
    # the current directory, and its parent for notebooks running in notebooks/
    return [Path.cwd(), Path.cwd().parent]


def _resolve(text: str) -> Path:
    """SELFINSTRUCT_RUN as given; a relative path may be relative to the repository root (the
    kernel runs in notebooks/)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = next((root / path for root in _roots() if (root / path).is_dir()), path)
    return path


def is_sweep(path: Path) -> bool:
    """A multirun dir: numbered job dirs (0/, 1/, ...) with stats.json."""
    return path.is_dir() and any(p.name.isdigit() and (p / "stats.json").exists() for p in path.iterdir())


def find_run(kind: str = "run") -> Path:
    """SELFINSTRUCT_RUN, else the newest run (kind="run": a dir with stats.json under outputs/) or
    sweep (kind="sweep": a dir under multirun/ whose numbered jobs have stats.json)."""
    if os.environ.get("SELFINSTRUCT_RUN"):
        path = _resolve(os.environ["SELFINSTRUCT_RUN"])
        if not path.is_dir():
            raise FileNotFoundError(f"SELFINSTRUCT_RUN={path} is not a directory")
        return path
    base = "outputs" if kind == "run" else "multirun"
    found = []
    for root in _roots():
        if kind == "run":
            found += [p.parent for p in (root / base).glob("*/*/stats.json")]
        else:
            found += [p.parent.parent for p in (root / base).glob("*/*/*/stats.json")
                      if p.parent.name.isdigit()]
    if not found:
        where = " or ".join(str(r / base) for r in _roots())
        how = ("run `python run.py` first, or set SELFINSTRUCT_RUN=outputs/DATE/TIME" if kind == "run"
               else "run a sweep with `python run.py -m ...`, or set SELFINSTRUCT_RUN=multirun/DATE/TIME")
        raise FileNotFoundError(f"no {kind} found in {where}: {how}")
    return max(found, key=lambda p: p.stat().st_mtime)


def open_run() -> Optional[dict[str, Any]]:
    """The run to analyse (load_run), after printing its dir and where its data came from; or
    None after one line saying what the run lacks and the command that makes it."""
    try:
        run_dir = find_run("run")
    except FileNotFoundError as e:
        print(f"Nothing to analyse: {e}")
        return None
    if not (run_dir / "stats.json").exists():
        hint = (f"it is a sweep: set SELFINSTRUCT_RUN={run_dir / '0'} (one job), or open "
                "compare_runs.ipynb" if is_sweep(run_dir) else "set SELFINSTRUCT_RUN=outputs/DATE/TIME")
        print(f"{run_dir} is not a run directory (no stats.json): {hint}")
        return None
    try:
        run = load_run(run_dir)
    except FileNotFoundError as e:  # no analysis.json: the message names the command
        print(e)
        return None
    print(f"run: {run_dir}")
    print(about_data(run))
    return run


def about_data(run: dict) -> str:
    """One line: which model generated the run's data (the run's .hydra/config.yaml), or the
    external file it analysed; and whether the paper's numbers are comparable."""
    source = run["analysis"]["source"]
    if source.get("input"):
        return (f"data: {source['input']} (an external dataset analysed with stages=[analyze]; the "
                "model that generated it is not recorded here)")
    llm = run["config"].llm if run["config"] is not None else None
    if llm is None:
        return "model: not recorded (no .hydra/config.yaml in the run dir)"
    model = f"model: {llm.backend} {llm.get('model')}"
    if llm.backend == "fake":
        return f"{model} (the deterministic test double: its numbers mean nothing)"
    if llm.backend == "llamacpp" and not llm.get("model_path"):
        return (f"{model} (the embedded Gemma 3 270M base model: it exercises the pipeline; its "
                "numbers are not comparable to the paper's GPT-3 davinci)")
    return model


# --- one run ------------------------------------------------------------------------------------

def load_run(run_dir: str | Path) -> dict[str, Any]:
    """{"dir", "stats", "analysis", "rows" (DataFrame, one row per instruction), "config"}."""
    run_dir = Path(run_dir)
    analysis = load_analysis(run_dir)
    if analysis is None:
        raise FileNotFoundError(f"{run_dir} has no current analysis.json: run "
                                f"`python run.py stages=[analyze] hydra.run.dir={run_dir}`")
    config = run_dir / ".hydra" / "config.yaml"
    return {
        "dir": run_dir,
        "stats": json.loads((run_dir / "stats.json").read_text()),
        "analysis": analysis,
        "rows": pd.DataFrame(read_jsonl(run_dir / "analysis_instructions.jsonl")),
        "config": OmegaConf.load(config) if config.exists() else None,
    }


PAPER = "paper (GPT-3 davinci, 52K)"  # the column of the paper's numbers, named as such

TABLE1 = [  # (label, stats.json key, the paper's value: GPT-3 davinci, 52,445 instructions)
    ("instructions", "data/num_instructions", 52445),
    ("classification instructions", "data/num_classification", 11584),
    ("non-classification instructions", "data/num_non_classification", 40861),
    ("instances", "data/num_instances", 82439),
    ("instances with empty input", "data/num_instances_empty_input", 35878),
    ("avg. instruction words", "data/avg_instruction_words", 15.9),
    ("avg. non-empty input words", "data/avg_input_words", 12.7),
    ("avg. output words", "data/avg_output_words", 18.9),
    ("verb-noun share", "diversity/verb_noun_share", 26559 / 52445),
    ("top-20x4 coverage", "diversity/top20x4_coverage", 0.14),
    ("unique verbs", "diversity/unique_verbs", None),
    ("unique verb-noun pairs", "diversity/unique_verb_noun_pairs", None),
    ("ROUGE-L to nearest seed (mean)", "diversity/rouge_to_seed_mean", None),
]


def fmt(key: str, value: Any) -> str:
    """A statistic as a reader wants it: counts as integers, word averages with one decimal,
    shares as percentages, scores with three decimals; "-" when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    name = key.rsplit("/", 1)[-1]
    if name.startswith(("num_", "unique_")):
        return f"{int(value):,}"
    if name.startswith("avg_"):
        return f"{value:.1f}"
    if name.endswith(("_share", "_coverage")):
        return f"{value:.1%}"
    return f"{value:.3f}"


def table1(stats: dict, name: str = "this run") -> pd.DataFrame:
    """The run's statistics beside the paper's Table 1 and Sec. 3.2 figures (column PAPER)."""
    return pd.DataFrame([{"statistic": label, name: fmt(key, stats.get(key)), PAPER: fmt(key, paper)}
                         for label, key, paper in TABLE1]).set_index("statistic")


def sunburst(top, title: str = ""):
    """The paper's Figure 3 as a static matplotlib figure: display() shows it as a PNG. Not a
    pyplot figure, so it shows once, where it is displayed."""
    from matplotlib.figure import Figure

    from selfinstruct.analysis.plots import draw_sunburst

    fig = Figure(figsize=(8, 8))
    draw_sunburst(fig.add_subplot(), top, title)
    return fig


def top_pairs_table(analysis: dict) -> pd.DataFrame:
    """Top verbs with their top nouns, one row per (verb, noun), counts and shares of all."""
    n = analysis["stats"]["data/num_instructions"]
    rows = [{"verb": v, "verb_pairs": vc, "noun": noun, "count": c, "share": c / n}
            for v, vc, nouns in analysis["verb_noun_top"] for noun, c in nouns]
    return pd.DataFrame(rows)


def coverage_grid(rows: pd.DataFrame, verbs=(5, 10, 20, 50), nouns=(1, 2, 4, 8)) -> pd.DataFrame:
    """Share of all instructions covered by the top-k verbs x their top-m nouns (the paper: 20 x 4
    covers 14%)."""
    pairs = rows.dropna(subset=["verb", "noun"])
    counts = pairs.groupby(["verb", "noun"]).size()
    by_verb = counts.groupby(level=0).sum().sort_values(ascending=False, kind="stable")
    grid = {}
    for m in nouns:
        top_m = counts.groupby(level=0, group_keys=False).apply(
            lambda s: s.sort_values(ascending=False, kind="stable").head(m)).groupby(level=0).sum()
        grid[f"top {m} nouns"] = [top_m.reindex(by_verb.index[:k]).sum() / len(rows) for k in verbs]
    return pd.DataFrame(grid, index=[f"top {k} verbs" for k in verbs])


def verb_rank_curve(rows: pd.DataFrame) -> pd.Series:
    """Cumulative share of instructions whose root verb is among the top-k verbs, by k."""
    counts = rows["verb"].dropna().value_counts()
    return (counts.cumsum() / len(rows)).reset_index(drop=True).rename(lambda k: k + 1)


def seed_dataset(run: dict) -> Dataset:
    """The seed tasks the run was configured with, as a dataset."""
    path = run["config"].seeds.path if run["config"] is not None else None
    if path and not Path(path).is_absolute():  # relative to where run.py was started
        hydra_file = run["dir"] / ".hydra" / "hydra.yaml"
        cwd = OmegaConf.load(hydra_file).hydra.runtime.cwd if hydra_file.exists() else REPO
        path = Path(cwd) / path
    seeds = load_seeds(path)
    records = [record(t.instruction, i.input, i.output, t.is_classification)
               for t in seeds for i in t.instances]
    return Dataset("seed_tasks", records, has_instances=True)


def compare_with_seeds(run: dict) -> tuple[pd.DataFrame, dict]:
    """The run's diversity beside its seed set's (analysed the same way); and the seed analysis."""
    from selfinstruct.analysis.analyze import analyze_dataset

    config = run["config"]
    rule = config.analyze.get("verb_noun", "ours") if config is not None else "ours"  # as the run's
    seeds = analyze_dataset(seed_dataset(run), seed_texts=[], verb_noun=rule)
    keys = ["data/num_instructions", "data/avg_instruction_words", "diversity/verb_noun_share",
            "diversity/unique_verbs", "diversity/unique_verb_noun_pairs", "diversity/top20x4_coverage",
            "diversity/verb_entropy", "diversity/distinct_1", "diversity/distinct_2"]
    table = pd.DataFrame({"run": [fmt(k, run["stats"].get(k)) for k in keys],
                          "seed tasks": [fmt(k, seeds["stats"].get(k)) for k in keys]}, index=keys)
    return table, seeds


# --- a sweep -----------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    """An override's value as typed ("0.5" -> 0.5); Hydra's override values are YAML-like."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of a multirun dir (0/, 1/, ...): its overrides as columns, then stats.json."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit() and (p / "stats.json").exists()),
                  key=lambda p: int(p.name))
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job dirs (0/, 1/, ...) with stats.json")
    rows = []
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        row: dict[str, Any] = {"job": int(job.name)}
        for item in overrides:
            key, _, value = str(item).partition("=")
            row[key.lstrip("+~")] = _parse_value(value)
        row.update(json.loads((job / "stats.json").read_text()))
        rows.append(row)
    return pd.DataFrame(rows).set_index("job")


def open_sweep() -> Optional[dict[str, Any]]:
    """{"dir", "jobs" (load_sweep)} of the sweep to compare, after printing it; or None after one
    line saying what is needed (a multirun dir) and how to point the notebook at one."""
    try:
        sweep_dir = find_run("sweep")
    except FileNotFoundError as e:
        print(f"Nothing to compare: {e}")
        return None
    if not is_sweep(sweep_dir):
        what = "a single run" if (sweep_dir / "stats.json").exists() else "not a multirun dir"
        print(f"compare_runs needs a multirun dir (from `python run.py -m ...`), and {sweep_dir} is "
              f"{what}: set SELFINSTRUCT_RUN=multirun/DATE/TIME")
        return None
    jobs = load_sweep(sweep_dir)
    print(f"sweep: {sweep_dir} ({len(jobs)} jobs); swept: {swept_keys(jobs)}")
    return {"dir": sweep_dir, "jobs": jobs}


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The override columns whose value differs between jobs."""
    keys = [c for c in df.columns if "/" not in c]
    return [k for k in keys if df[k].astype(str).nunique() > 1]


COMPARE = ["data/num_instructions", "quality/acceptance_rate", "diversity/verb_noun_share",
           "diversity/unique_verb_noun_pairs", "diversity/top20x4_coverage",
           "diversity/rouge_to_seed_mean", "data/avg_instruction_words", "cost/total/seconds"]


def compare_table(df: pd.DataFrame, metrics=COMPARE) -> pd.DataFrame:
    return df[swept_keys(df) + [m for m in metrics if m in df.columns]]


def plot_against_swept(df: pd.DataFrame, metrics=COMPARE):
    """One panel per statistic, against the first swept key (lines per value of a second one)."""
    import matplotlib.pyplot as plt

    keys = swept_keys(df)
    metrics = [m for m in metrics if m in df.columns and df[m].notna().any()]
    cols = min(3, max(len(metrics), 1))
    fig, axes = plt.subplots(math.ceil(len(metrics) / cols) or 1, cols, squeeze=False,
                             figsize=(4.5 * cols, 3.4 * math.ceil(len(metrics) / cols or 1)))
    x = keys[0] if keys else None
    groups = df.groupby(keys[1]) if len(keys) > 1 else [(None, df)]
    for ax, metric in zip(axes.flat, metrics):
        for value, part in groups:
            if x is None:
                xs = part.index.astype(str)
            elif pd.api.types.is_numeric_dtype(part[x]):  # numbers on a numeric axis, in order
                part = part.sort_values(x)
                xs = part[x]
            else:
                xs = part[x].astype(str)
            ax.plot(xs, part[metric], marker="o", label=None if value is None else f"{keys[1]}={value}")
        ax.set(title=metric, xlabel=x or "job")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def wandb_runs(sweep_dir: str | Path, project: str = "selfinstruct",
               entity: Optional[str] = None) -> Optional[pd.DataFrame]:
    """The sweep's runs from the W&B API (summary per run), or None when offline (no
    WANDB_API_KEY, or WANDB_MODE offline/disabled): offline runs are in each job's wandb/ dir."""
    if not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return None
    import wandb

    group = "/".join(Path(sweep_dir).parts[-2:])  # as tracking.sweep_identity names it
    path = f"{entity}/{project}" if entity else project
    runs = wandb.Api(timeout=20).runs(path, filters={"group": group})
    return pd.DataFrame([{"name": r.name, **{k: v for k, v in r.summary.items() if "/" in k}}
                         for r in runs])


def offline_summaries(sweep_dir: str | Path) -> pd.DataFrame:
    """Each job's offline W&B run read back from its files: group, name and summary."""
    from selfinstruct.tracking import offline_runs, read_offline_run

    rows = []
    for job in sorted((p for p in Path(sweep_dir).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        for path in offline_runs(job)[-1:]:
            run = read_offline_run(path)
            rows.append({"job": job.name, "group": run["group"], "name": run["name"],
                         **{k: v for k, v in run["summary"].items() if k in COMPARE}})
    return pd.DataFrame(rows)
