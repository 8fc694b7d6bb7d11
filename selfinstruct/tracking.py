"""Experiment tracking with Weights & Biases (`tracking=wandb`, the default) or none (`tracking=none`).

`start_tracking(cfg, run_dir)` returns a tracker with `log_stats(stats, ctx)` and `finish()`; the
pipeline calls both at the end of every run, also after a failed stage. The W&B run lives in
<run_dir>/wandb and is offline unless WANDB_API_KEY is set or tracking.mode=online (WANDB_MODE is
honoured too). It holds the composed config without secrets, stats.json as its summary, histograms
of lengths and ROUGE-L to the nearest seed, a table of sample instructions with their nearest
neighbours, the verb-noun sunburst and the PNG plots. Jobs of one Hydra sweep share a W&B group
(the sweep dir) and are named by their overrides.

`read_offline_run(path)` reads an offline run's config and summary back from its transaction log
(wandb-core writes no wandb-summary.json offline), for tests and notebooks without a network.
"""

from __future__ import annotations

import json
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any, Optional

from selfinstruct.config import to_plain

log = logging.getLogger(__name__)


class NoTracking:
    def log_stats(self, stats, ctx) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_mode(tracking_cfg) -> str:
    if tracking_cfg.mode:
        return tracking_cfg.mode
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def sweep_identity(tracking_cfg) -> tuple[Optional[str], Optional[str]]:
    """(group, name) of this Hydra job: a sweep's jobs share the sweep dir as their group and are
    named by their overrides (key=value,...); a single run is named by its overrides if any."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # called outside a Hydra app (e.g. pipeline.run in a test)
        return tracking_cfg.group, None
    overrides = ",".join(_short_override(o) for o in hc.overrides.task) or None
    if hc.mode == RunMode.MULTIRUN:
        group = "/".join(Path(hc.sweep.dir).parts[-2:])  # e.g. 2026-11-24/06-14-13
        return tracking_cfg.group or group[-128:], overrides or f"job{hc.job.num}"
    return tracking_cfg.group, overrides


def _short_override(override: str) -> str:
    """key=value with a path value cut to its file name: names stay readable in the W&B UI."""
    key, sep, value = override.partition("=")
    return f"{key}={Path(value).name}" if sep and "/" in value and not value.startswith("[") else override


def start_tracking(cfg, run_dir):
    t = cfg.tracking
    mode = wandb_mode(t)
    if t.backend == "none" or mode == "disabled":
        return NoTracking()
    offline = mode != "online"
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        group, name = sweep_identity(t)
        # Offline, nothing may reach out: no system-metrics sampler (which also probes cloud
        # metadata endpoints), no machine or git metadata; console capture is off either way.
        settings = wandb.Settings(silent=True, console="off", save_code=False, disable_git=offline,
                                  x_disable_stats=offline, x_disable_meta=offline,
                                  x_disable_machine_info=offline, disable_job_creation=True)
        run = wandb.init(project=t.project, entity=t.entity, dir=str(run_dir), mode=mode,
                         group=group, name=name, tags=list(t.tags), config=to_plain(cfg),
                         reinit="create_new", settings=settings)
    except Exception as e:  # tracking must never cost a run its data
        log.warning("tracking: W&B could not start (%s); continuing without it", e)
        return NoTracking()
    return WandbTracker(run)


class WandbTracker:
    def __init__(self, run):
        self.run = run

    def log_stats(self, stats: dict[str, Any], ctx) -> None:
        self.run.summary.update(stats)
        try:
            media = analysis_media(ctx.run_dir, ctx.cfg.analyze.num_examples, ctx.cfg.seed)
        except Exception as e:  # a figure failing must not lose the summary
            log.warning("tracking: could not build the W&B figures (%s)", e)
            return
        media.update(eval_media(ctx.run))
        if media:
            self.run.log(media)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """A point of a curve as it happens, e.g. {"train/loss": ..., "train/step": ...}."""
        try:
            self.run.log(metrics)
        except Exception as e:  # tracking must never cost a run its data
            log.warning("tracking: could not log %s (%s)", sorted(metrics), e)

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception as e:
            log.warning("tracking: W&B finish failed (%s)", e)


EVAL_COLUMNS = ["id", "instruction", "input", "reference", "base_answer", "tuned_answer", "base_rougeL",
                "tuned_rougeL", "base_rating", "tuned_rating", "pairwise", "answer", "rougeL"]


def eval_media(run) -> dict[str, Any]:
    """The evaluated tasks as a W&B table: the base and the tuned answer side by side."""
    if not run.eval.exists():
        return {}
    import wandb

    from selfinstruct.files import read_jsonl

    rows = read_jsonl(run.eval)
    if not rows:
        return {}
    columns = [c for c in EVAL_COLUMNS if any(c in r for r in rows)]
    return {"eval/answers": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows at random (seeded), most seed-like first."""
    picked = random.Random(f"{seed}/samples").sample(rows, min(n, len(rows)))
    return sorted(picked, key=lambda r: -r["rouge_to_seed"])


def _neighbours(row: dict, k: int = 3) -> str:
    similar = row.get("most_similar") or {}
    top = sorted(similar.items(), key=lambda kv: -kv[1])[:k]
    return "\n".join(f"{score:.2f}  {text}" for text, score in top)


def analysis_media(run_dir: Path, num_examples: int, seed: int) -> dict[str, Any]:
    """W&B media of the run's analysis (empty when analyze has not run or is stale)."""
    import wandb

    from selfinstruct.files import read_jsonl
    from selfinstruct.analysis.plots import PLOT_FILES, sunburst_figure
    from selfinstruct.analysis.stats import load_analysis

    analysis = load_analysis(Path(run_dir))
    if analysis is None:
        return {}
    media: dict[str, Any] = {}
    bins = {"rouge_to_seed": 20}
    for key, values in analysis["histograms"].items():
        if values:
            media[f"hist/{key}"] = wandb.Histogram(values, num_bins=bins.get(key, 64))
    rows = read_jsonl(Path(run_dir) / "analysis_instructions.jsonl")
    columns = ["instruction", "verb", "noun", "nearest_seed", "rouge_to_seed",
               "most_similar_in_pool", "is_classification", "num_instances"]
    media["samples"] = wandb.Table(columns=columns, data=[
        [r["instruction"], r["verb"], r["noun"], r["nearest_seed"], r["rouge_to_seed"],
         _neighbours(r), r["is_classification"], r["num_instances"]]
        for r in sample_rows(rows, num_examples, seed)])
    if analysis["verb_noun_top"]:
        media["figures/verb_noun_sunburst"] = wandb.Plotly(sunburst_figure(analysis["verb_noun_top"]))
    for name in PLOT_FILES:
        png = Path(run_dir) / "plots" / name
        if png.exists():
            media[f"plots/{png.stem}"] = wandb.Image(str(png))
    return media


# --- reading an offline run back -------------------------------------------------------------------

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_records(path: Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, parts = 7, b""  # 7-byte file header: ident, magic, version
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            yield parts + chunk
        elif kind == 0 and length == 0:  # zero padding up to the block end
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0


def read_offline_run(run_path: str | Path) -> dict[str, Any]:
    """{"config", "summary", "group", "name", "finished"} of an offline run dir (wandb/offline-run-*/),
    from its run-*.wandb log. Summary keys hold their last value; nested keys are joined with '/'.
    finished: the log holds the run's exit record (wandb-core writes the log behind the process, so
    a run read right after run.finish() may not be complete yet)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_path = Path(run_path)
    logs = sorted(run_path.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_path}: no run-*.wandb file")
    out: dict[str, Any] = {"config": {}, "summary": {}, "group": None, "name": None, "finished": False}
    for raw in _log_records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"] = record.run.run_group or None, record.run.display_name or None
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "exit":
            out["finished"] = True
    return out


def offline_runs(run_dir: str | Path) -> list[Path]:
    """The offline W&B runs under a Hydra run dir, oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
