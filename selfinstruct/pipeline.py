"""Runs the configured stages in one Hydra run directory and always ends with stats.json.

Stages are functions `stage(ctx: RunContext) -> None` registered in selfinstruct/stages/__init__.py.
They read and write files in ctx.run_dir (the contract of DESIGN.md), so any stage can run alone on
the files of an earlier run, and a rerun with the same hydra.run.dir resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from .config import validate
from .io import Checkpoint
from .llm import LLM, Usage, make_llm
from .seeds import SeedTask, seeds_from_config

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    seeds: list[SeedTask]
    checkpoint: Checkpoint
    _llm: Optional[LLM] = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def llm(self) -> LLM:
        """The model, built on first use, so stages that need none (prepare, analyze, dedup) never
        load one."""
        if self._llm is None:
            self._llm = make_llm(self.cfg)
        return self._llm

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def __post_init__(self) -> None:
        # Usage of earlier invocations, read once. Every checkpoint commit saves it plus this
        # invocation's, so the retries and errors of a run killed later are still counted.
        self._usage_before = {stage: Usage(**u) for stage, u in self.checkpoint.get("usage", {}).items()}
        self.checkpoint.extra = self._usage_record

    def _usage_record(self) -> dict:
        return {"usage": {s: u.as_dict() for s, u in self.usage_so_far().items()}}

    def usage_so_far(self) -> dict[str, Usage]:
        """Per-stage model usage of earlier invocations of this run dir plus this one."""
        total = dict(self._usage_before)
        if self._llm is not None:
            for stage, usage in self._llm.usage.items():
                total[stage] = total.get(stage, Usage()).add(usage)
        return total

    def close(self) -> None:
        if self._llm is not None:
            self._usage_before = self.usage_so_far()
            self._llm.close()
            self._llm = None
            self.checkpoint.put("usage", self._usage_record()["usage"])


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate, run the stages, write stats.json and return the statistics."""
    from .stages import STAGES
    from .stats import write_stats
    from .tracking import start_tracking

    validate(cfg)
    seeds = seeds_from_config(cfg.seeds)  # fails on a malformed seed file before any model loads
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, seeds=seeds, checkpoint=Checkpoint(run_dir))
    tracker = start_tracking(cfg, run_dir)
    stats: dict[str, Any] = {}
    try:
        for name in cfg.stages:
            log.info("stage %s", name)
            started = time.perf_counter()
            STAGES[name](ctx)
            ctx.stage_seconds[name] = time.perf_counter() - started
    finally:
        ctx.close()
        try:
            stats = write_stats(ctx)
            tracker.log_stats(stats, ctx)
        finally:
            tracker.finish()
    return stats
