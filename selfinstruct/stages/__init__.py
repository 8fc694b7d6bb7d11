"""The stages, in pipeline order. Each is `stage(ctx: RunContext) -> None` and lives in its own
module; they are imported when run, so a stage's heavy dependencies (spaCy, plotting) load only
when that stage runs."""

from __future__ import annotations

from importlib import import_module
from typing import Callable

_WHERE = {
    "instructions": ("instructions", "run_instructions"),
    "classify": ("classify", "run_classify"),
    "instances": ("instances", "run_instances"),
    "prepare": ("prepare", "run_prepare"),
    "analyze": ("analyze", "run_analyze"),
    "dedup": ("dedup", "run_dedup"),
}


def _lazy(module: str, function: str) -> Callable:
    def stage(ctx) -> None:
        getattr(import_module(f"{__name__}.{module}"), function)(ctx)

    stage.__name__ = function
    return stage


STAGES: dict[str, Callable] = {name: _lazy(*where) for name, where in _WHERE.items()}
