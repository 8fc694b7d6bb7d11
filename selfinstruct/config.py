"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

Every YAML file under conf/ extends one schema (its defaults list names `/<group>_schema` or, for
llm, the backend's own schema, which lives beside the backend's code in selfinstruct/llm/), so a
wrong type fails when Hydra composes the config. `validate`, which runs before any model is loaded,
then refuses keys no schema declares (a misspelt `+filters.rouge_treshold=0.5`; Hydra lets `+` add
keys) and checks values (ranges, existing files), each group's checks beside its schema. Every
error names the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from selfinstruct.errors import ConfigError
from selfinstruct.evaluation.config import EvaluateConfig
from selfinstruct.filtering.rouge import TOKENIZERS
from selfinstruct.training.config import FinetuneConfig
from selfinstruct.llm import BACKENDS, backend_schema
from selfinstruct.llm.base import Sampling, check
from selfinstruct.stages import NAMES as STAGES

__all__ = ["Config", "ConfigError", "validate", "to_plain"]


CAPITALIZE = ("none", "first", "python")


@dataclass
class PromptConfig:
    name: str = MISSING  # selfinstruct | selfinstruct_chat | original_format | alpaca
    chat: bool = False  # frame each prompt as a chat message (chat models)
    num_human: int = 6  # in-context instructions from the seed tasks
    num_machine: int = 2  # ... and from the machine-generated ones, once there are enough
    num_demos: int = 3  # alpaca: seed demonstrations per request
    num_tasks_per_request: int = 20  # alpaca: tasks asked for per request
    max_list_number: int = 16  # stop at this list item (paper: 16)
    # Switches for the original code's behaviour; conf/prompt/*.yaml gives each one's original value.
    capitalize: str = "none"  # none | first (upper-case the first letter) | python (str.capitalize())
    normalize_examples: bool = True  # in-context instructions on one line, without a trailing ":"
    classification_header: bool = True  # with seeds.classification_only: ask for classification tasks
    all_labels: bool = False  # output-first requests may list every label (no "Example 6" stop)
    keep_prompt: bool = False  # write each request's prompt into instructions/instances_raw.jsonl

    @staticmethod
    def check(p) -> None:
        from selfinstruct.prompts.styles import STYLES

        check(p.name in STYLES, "prompt.name", f"unknown prompt style {p.name!r}; choose from {list(STYLES)}")
        check(p.num_human >= 1, "prompt.num_human", f"must be >= 1, got {p.num_human}")
        check(p.num_machine >= 0, "prompt.num_machine", f"must be >= 0, got {p.num_machine}")
        check(p.max_list_number > p.num_human + p.num_machine, "prompt.max_list_number",
              "must be larger than prompt.num_human + prompt.num_machine")
        check(p.capitalize in CAPITALIZE, "prompt.capitalize",
              f"must be one of {', '.join(CAPITALIZE)}, got {p.capitalize!r} (it was a boolean: "
              "false is now none, true is now first)")
        check(p.num_demos >= 1, "prompt.num_demos", f"must be >= 1, got {p.num_demos}")
        check(p.num_tasks_per_request > p.num_demos + 1, "prompt.num_tasks_per_request",
              f"must be larger than prompt.num_demos + 1, got {p.num_tasks_per_request}")


@dataclass
class SamplingConfig:
    name: str = MISSING
    instructions: Sampling = field(default_factory=Sampling)
    classify: Sampling = field(default_factory=Sampling)
    instances: Sampling = field(default_factory=Sampling)
    judge: Sampling = field(default_factory=Sampling)  # the data judge and the evaluate judge
    evaluate: Sampling = field(default_factory=lambda: Sampling(max_tokens=128))  # answering eval tasks
    # max_tokens of the instance requests of classification tasks (null: sampling.instances.max_tokens)
    instances_classification_max_tokens: Optional[int] = None

    @staticmethod
    def check(s) -> None:
        for stage in ("instructions", "classify", "instances", "judge", "evaluate"):
            Sampling.check(s[stage], f"sampling.{stage}")
        n = s.instances_classification_max_tokens
        check(n is None or n >= 1, "sampling.instances_classification_max_tokens",
              f"must be >= 1 or null, got {n}")


@dataclass
class FiltersConfig:
    name: str = MISSING
    rouge_threshold: float = 0.7  # reject when ROUGE-L F1 to any pool instruction is above this
    top_k_similar: int = 10
    # ROUGE-L tokens: rouge_score (the paper's: [a-z0-9] runs, so other scripts score 0) | unicode
    # (words of any script, Chinese/Japanese/Korean per character): for non-English seed sets
    tokenizer: str = "rouge_score"
    min_words: int = 4  # fewer words than this: rejected (paper: 3 or fewer)
    max_words: int = 150
    blacklist: list[str] = field(default_factory=list)
    banned_prefixes: list[str] = field(default_factory=list)
    reject_punctuation_start: bool = True
    reject_non_ascii_start: bool = True
    discard_truncated_response: bool = True  # drop a whole instruction response cut by max_tokens
    # empty, echoed, non-English or looping output: on in filters=default, off in filters=paper
    reject_degenerate: bool = True
    # exact duplicates (case and whitespace aside) of a pool instruction, in any script: on in
    # filters=default, off in filters=paper (ROUGE-L rejects the ASCII ones there, as rouge)
    reject_duplicates: bool = True
    # instance filters (DESIGN.md step 6)
    max_instances_per_task: int = 5
    drop_truncated_last_instance: bool = True
    drop_conflicting_outputs: bool = True  # same non-empty input, different outputs: drop all of the task
    drop_empty_output: bool = True
    drop_input_equals_output: bool = True
    drop_colon_ending: bool = True  # an input or output ending with ":" is usually unfinished
    dedupe_instances: bool = True

    @staticmethod
    def check(f) -> None:
        check(0.0 <= f.rouge_threshold <= 1.0, "filters.rouge_threshold", f"must be in [0, 1], got {f.rouge_threshold}")
        check(f.min_words >= 0, "filters.min_words", f"must be >= 0, got {f.min_words}")
        check(f.max_words >= f.min_words, "filters.max_words",
              f"must be >= filters.min_words ({f.min_words}), got {f.max_words}")
        check(f.tokenizer in TOKENIZERS, "filters.tokenizer",
              f"must be one of {', '.join(TOKENIZERS)}, got {f.tokenizer!r}")
        check(f.top_k_similar >= 0, "filters.top_k_similar", f"must be >= 0, got {f.top_k_similar}")
        check(f.max_instances_per_task >= 1, "filters.max_instances_per_task",
              f"must be >= 1, got {f.max_instances_per_task}")


@dataclass
class SeedsConfig:
    name: str = MISSING
    path: Optional[str] = None  # JSONL in the original seed_tasks.jsonl format
    limit: Optional[int] = None  # use only the first N seed tasks (seed-set-size ablations)
    classification_only: bool = False

    @staticmethod
    def check(s) -> None:
        if s.path is not None:
            check(Path(s.path).is_file(), "seeds.path", f"seed file not found: {s.path}")
        elif s.name == "file":
            check(False, "seeds.path", "seeds=file needs seeds.path=PATH (JSONL in the original format)")
        if s.limit is not None:
            check(s.limit >= 1, "seeds.limit", f"must be >= 1, got {s.limit}")


@dataclass
class TrackingConfig:
    backend: str = MISSING  # wandb | none
    project: str = "selfinstruct"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; default: online iff WANDB_API_KEY is set
    group: Optional[str] = None  # default: the sweep's directory name for multirun jobs
    tags: list[str] = field(default_factory=list)

    @staticmethod
    def check(t) -> None:
        check(t.backend in ("wandb", "none"), "tracking.backend", f"must be wandb or none, got {t.backend!r}")
        check(t.mode in (None, "online", "offline", "disabled"), "tracking.mode",
              f"must be online, offline or disabled, got {t.mode!r}")


@dataclass
class PrepareConfig:
    include_seeds: bool = False  # add the seed tasks to finetune.jsonl / alpaca.json
    random_templates: bool = True  # the paper's randomly varied prompt formats (false: one fixed format)
    end_token: str = "<|endoftext|>"  # appended to each completion (GPT-3's end of text; "" for none)
    # Fine-tune on N instructions only (the paper's data-size curve): the first N of one fixed random
    # order, so smaller sizes are subsets of larger ones. Ours: null (all); the original:
    # prepare_for_finetuning --num_instructions N (a fresh sample per N).
    num_instructions: Optional[int] = None

    @staticmethod
    def check(p) -> None:
        n = p.num_instructions
        check(n is None or n >= 1, "prepare.num_instructions", f"must be >= 1 or null, got {n}")


@dataclass
class AnalyzeConfig:
    judge: bool = False  # ask the model the paper's three quality questions on a sample
    judge_sample: int = 200
    num_examples: int = 50  # rows in the W&B table of samples
    plots: bool = True
    # Which verb of the first sentence (analysis/diversity.py): ours (the default), the closest to the
    # root, breadth-first; original, the original notebook's rule (the root, else its first child's).
    verb_noun: str = "ours"

    @staticmethod
    def check(a) -> None:
        check(a.verb_noun in ("ours", "original"), "analyze.verb_noun",
              f"must be ours or original, got {a.verb_noun!r}")
        check(a.judge_sample >= 1, "analyze.judge_sample", f"must be >= 1, got {a.judge_sample}")
        check(a.num_examples >= 0, "analyze.num_examples", f"must be >= 0, got {a.num_examples}")


@dataclass
class Config:
    num_instructions: int = 100
    stages: list[str] = field(
        default_factory=lambda: ["instructions", "classify", "instances", "prepare", "analyze"]
    )
    seed: int = 0
    input: Optional[str] = None  # a dataset file for stages run on external data (analyze, dedup, finetune)
    optimized_metric: Optional[str] = None  # stats.json key returned to sweepers (e.g. Optuna)
    llm: Any = MISSING  # typed by the backend's own schema (conf/llm/NAME.yaml names it)
    prompt: PromptConfig = MISSING
    sampling: SamplingConfig = MISSING
    filters: FiltersConfig = MISSING
    seeds: SeedsConfig = MISSING
    tracking: TrackingConfig = MISSING
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    finetune: FinetuneConfig = MISSING
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


GROUP_SCHEMAS = {"prompt": PromptConfig, "sampling": SamplingConfig, "filters": FiltersConfig,
                 "seeds": SeedsConfig, "tracking": TrackingConfig, "finetune": FinetuneConfig}


def register_configs() -> None:
    """Schemas are stored outside the config groups (`/<name>_schema`), so `--help` lists only
    the real options of each group."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(name=f"{group}_schema", node=schema)
    for backend in dict.fromkeys(BACKENDS):
        cs.store(name=f"llm_{backend}_schema", node=backend_schema(backend))


register_configs()


def check_closed(node: Any, key: str = "") -> None:
    """Every key of a typed node is a field of its schema, recursively: Hydra's `+key=value` adds
    keys even to typed nodes, and an ignored typo would silently change nothing."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = {f.name for f in dataclasses.fields(schema)}
    for name in node.keys():
        full = f"{key}.{name}" if key else str(name)
        check(name in fields, full, f"unknown key; {key or 'the config'} has no such key "
              f"(known: {', '.join(sorted(fields))})")
        value = node._get_node(name)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            check_closed(value, full)


def validate(cfg: DictConfig) -> None:
    """Unknown keys and bad values, before any model loads; ConfigError naming the key."""
    # Without the `experiment` config group on Hydra's search path (hydra_plugins/ puts experiments/
    # there), `+experiment=NAME` would add a plain key and the defaults would run unnoticed.
    check("experiment" not in cfg, "experiment",
          f"no preset named {cfg.get('experiment')!r} was loaded: the `experiment` config group is not "
          "on Hydra's search path (the repository root, which holds hydra_plugins/, must be on sys.path)")
    check(cfg.llm.backend in BACKENDS, "llm.backend",
          f"unknown backend {cfg.llm.backend!r}; choose from {list(BACKENDS)}")
    check_closed(cfg)
    check(cfg.num_instructions >= 0, "num_instructions", f"must be >= 0, got {cfg.num_instructions}")
    for stage in cfg.stages:
        check(stage in STAGES, "stages", f"unknown stage {stage!r}; choose from {list(STAGES)}")
    if cfg.input is not None:
        check(Path(cfg.input).is_file(), "input", f"file not found: {cfg.input}")
    if "dedup" in cfg.stages:
        check(cfg.input is not None, "input", "stages=[dedup] needs input=PATH (a JSONL or JSON list)")
    backend_schema(cfg.llm.backend).check(cfg.llm)
    for group in ("prompt", "sampling", "filters", "seeds", "tracking", "prepare", "analyze", "finetune",
                  "evaluate"):
        group_check = getattr(OmegaConf.get_type(cfg[group]), "check", None)
        if group_check is not None:
            group_check(cfg[group])


def to_plain(cfg: DictConfig) -> dict:
    """The composed config as a plain dict with secrets removed (for logs, W&B and outputs)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.get("llm", {}).pop("api_key", None)
    return plain
