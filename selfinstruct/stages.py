"""The stages, in pipeline order: the one list of stage names (config validation and the pipeline
read it). Each stage is `run(ctx: RunContext) -> None` in its own module, imported when it runs, so a
stage's heavy dependencies (spaCy, torch, plotting) load only when that stage runs."""

from __future__ import annotations

from importlib import import_module
from typing import Callable

# name -> (module, function)
WHERE = {
    "instructions": ("selfinstruct.generation.instructions", "run_instructions"),
    "classify": ("selfinstruct.generation.classify", "run_classify"),
    "instances": ("selfinstruct.generation.instances", "run_instances"),
    "prepare": ("selfinstruct.generation.prepare", "run_prepare"),
    "analyze": ("selfinstruct.analysis.analyze", "run_analyze"),
    "dedup": ("selfinstruct.filtering.dedup", "run_dedup"),
    "finetune": ("selfinstruct.training.finetune", "run_finetune"),
    "evaluate": ("selfinstruct.evaluation.evaluate", "run_evaluate"),
}
NAMES = tuple(WHERE)


def stage_function(name: str) -> Callable:
    module, function = WHERE[name]
    return getattr(import_module(module), function)
