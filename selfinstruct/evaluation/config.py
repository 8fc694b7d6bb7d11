"""The `evaluate` config node: which tasks, which models answer them, and the optional judge."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from selfinstruct.errors import ConfigError
from selfinstruct.llm.base import check


@dataclass
class EvaluateConfig:
    # The evaluation set: null is our own 104 user-oriented tasks (selfinstruct/data/eval_tasks.jsonl);
    # else a file in the original user_oriented_instructions.jsonl format, or any dataset format
    # that stages=[analyze] reads (records with an output, which becomes the reference).
    path: Optional[str] = None
    # Score answers that already exist (the original human_eval/predictions/*.jsonl format:
    # instruction, input, response, target); no model is asked.
    predictions: Optional[str] = None
    limit: Optional[int] = None  # only the first N tasks (quick runs)
    base: bool = True  # answer with the base model (the run's llm), for eval/delta/*
    tuned: bool = True  # answer with the tuned model: the finetune stage's, or tuned_model
    # The tuned model by name, when it was not tuned in this run dir: an OpenAI fine-tuned model id
    # (ft:...), or the adapter name a server serves (vLLM --enable-lora) at tuned_base_url
    # (default: llm.base_url).
    tuned_model: Optional[str] = None
    tuned_base_url: Optional[str] = None
    # The judge (paper's four levels A-D per answer, and tuned-vs-base asked in both orders):
    # judge_llm is an llm node of any backend (`+llm@evaluate.judge_llm=openai
    # evaluate.judge_llm.model=gpt-4o`); null: the run's llm.
    judge: bool = False
    judge_llm: Any = None

    @staticmethod
    def check(e) -> None:
        from selfinstruct.llm import BACKENDS, backend_schema

        for key in ("path", "predictions"):
            if e[key] is not None:
                check(Path(e[key]).is_file(), f"evaluate.{key}", f"file not found: {e[key]}")
        if e.limit is not None:
            check(e.limit >= 1, "evaluate.limit", f"must be >= 1 or null, got {e.limit}")
        if e.predictions is None:
            check(e.base or e.tuned, "evaluate.base", "evaluate.base and evaluate.tuned are both false: "
                  "nothing would answer")
        if e.judge_llm is not None:
            node = e.judge_llm
            backend = node.get("backend") if OmegaConf.is_dict(node) else None
            check(backend in BACKENDS, "evaluate.judge_llm",
                  f"needs an llm config, e.g. +llm@evaluate.judge_llm=openai (backend: {backend!r})")
            try:
                backend_schema(backend).check(node)
            except ConfigError as error:  # the backend's checks name llm.*; here it is the judge's
                raise ConfigError(str(error).replace("`llm.", "`evaluate.judge_llm.")) from None
