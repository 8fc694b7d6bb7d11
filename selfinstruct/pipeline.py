"""Runs the configured stages in one run dir and always ends with stats.json.

Stages are functions `stage(ctx: RunContext) -> None` (selfinstruct/stages.py names them). They
read and write the files of the run dir's contract through `ctx.run` (a RunDir), so any stage can
run alone on the files of an earlier run, and a rerun with the same hydra.run.dir resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from selfinstruct.config import validate
from selfinstruct.datasets.seeds import SeedTask, seeds_from_config
from selfinstruct.llm import LLM, Usage, make_llm
from selfinstruct.prompts.styles import SelfInstructStyle, make_style
from selfinstruct.rundir import RunDir
from selfinstruct.summary import log_summary

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cfg: DictConfig
    run: RunDir
    seeds: list[SeedTask]
    style: SelfInstructStyle
    _llm: Optional[LLM] = None
    _more_llms: list = field(default_factory=list)  # other models a stage asked (tuned, judge)
    tracker: Any = None  # W&B (or nothing): stages log curves as they go, e.g. the finetune loss

    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def checkpoint(self):
        return self.run.checkpoint

    @property
    def llm(self) -> LLM:
        """The model, built on first use, so stages that need none (prepare, analyze, dedup) never
        load one."""
        if self._llm is None:
            self._llm = make_llm(self.cfg)
        return self._llm

    @classmethod
    def open(cls, cfg: DictConfig, run_dir: str | Path, seeds: Optional[list[SeedTask]] = None) -> "RunContext":
        """A context on a run dir (locked until close): for the pipeline, benchmarks and tests."""
        seeds = seeds_from_config(cfg.seeds) if seeds is None else seeds
        style = make_style(cfg.prompt, seeds, classification_only=cfg.seeds.classification_only)
        return cls(cfg=cfg, run=RunDir(run_dir).open(), seeds=seeds, style=style)

    def __post_init__(self) -> None:
        if self.tracker is None:
            from selfinstruct.tracking import NoTracking

            self.tracker = NoTracking()
        # Usage of earlier invocations, read once. Every checkpoint commit saves it plus this
        # invocation's, so the retries and errors of a run killed later are still counted.
        self._usage_before = {stage: Usage(**u) for stage, u in self.checkpoint.get("usage", {}).items()}
        self.checkpoint.extra = self._usage_record

    def _usage_record(self) -> dict:
        return {"usage": {s: u.as_dict() for s, u in self.usage_so_far().items()}}

    def add_llm(self, llm: LLM) -> LLM:
        """Another model a stage uses (the tuned model, a judge): its usage counts, close closes it."""
        self._more_llms.append(llm)
        return llm

    def usage_so_far(self) -> dict[str, Usage]:
        """Per-stage model usage of earlier invocations of this run dir plus this one."""
        total = dict(self._usage_before)
        for llm in [self._llm, *self._more_llms]:
            if llm is not None:
                for stage, usage in llm.usage.items():
                    total[stage] = total.get(stage, Usage()).add(usage)
        return total

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Wall time of each stage's latest complete run (in this invocation or an earlier one)."""
        return self.checkpoint.get("stage_seconds", {})

    def record_stage_time(self, stage: str, seconds: float) -> None:
        self.checkpoint.put("stage_seconds", {**self.stage_seconds, stage: seconds})

    def close_llm(self) -> None:
        if self._llm is not None or self._more_llms:
            self._usage_before = self.usage_so_far()
            for llm in [self._llm, *self._more_llms]:
                if llm is not None:
                    llm.close()
            self._llm, self._more_llms = None, []
            self.checkpoint.put("usage", self._usage_record()["usage"])

    def close(self) -> None:
        self.close_llm()
        self.run.close()


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate, run the stages, write stats.json and return the statistics."""
    from selfinstruct.analysis.stats import write_stats
    from selfinstruct.stages import stage_function
    from selfinstruct.tracking import start_tracking

    validate(cfg)
    ctx = RunContext.open(cfg, run_dir)  # fails on a malformed seed file before any model loads
    try:
        tracker = ctx.tracker = start_tracking(cfg, ctx.run_dir)
        stats: dict[str, Any] = {}
        try:
            for name in cfg.stages:
                log.info("stage %s", name)
                started = time.perf_counter()
                stage_function(name)(ctx)
                ctx.record_stage_time(name, time.perf_counter() - started)
        finally:
            ctx.close_llm()
            try:
                stats = write_stats(ctx)
                tracker.log_stats(stats, ctx)
            finally:
                tracker.finish()
    finally:
        ctx.close()
    log_summary(ctx, stats)
    return stats
