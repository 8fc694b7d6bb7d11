"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

Every YAML file under conf/ extends one of these schemas (its defaults list names the schema), so a
misspelt key or a value of the wrong type fails when Hydra composes the config. Checks on values
(ranges, existing files) live in `validate`, which runs before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

STAGES = ("instructions", "classify", "instances", "prepare", "analyze", "dedup")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


@dataclass
class LLMConfig:
    backend: str = MISSING  # llamacpp | openai | openai_compatible | fake
    model: str = ""
    # OpenAI and compatible servers
    base_url: Optional[str] = None
    api_key: Optional[str] = None  # default: OPENAI_API_KEY; never written to any output
    endpoint: str = "completions"  # completions | chat
    concurrency: int = 8  # requests in flight
    max_retries: int = 6
    timeout_s: float = 120.0
    requests_per_minute: Optional[float] = None
    tokens_per_minute: Optional[float] = None
    # Per-request response cache (SQLite), shared by the jobs of a sweep
    cache: bool = True
    cache_dir: Optional[str] = None  # default: $SELFINSTRUCT_CACHE or ~/.cache/selfinstruct
    # llamacpp: the embedded model
    model_path: Optional[str] = None  # a GGUF file; default: the Gemma 3 270M package
    n_ctx: int = 4096
    n_threads: Optional[int] = None  # default: all cores but one
    n_threads_batch: Optional[int] = None  # prompt evaluation and batched steps; default: n_threads
    prefix_cache: bool = True  # reuse the evaluated few-shot prefix between requests
    n_parallel: int = 8  # requests decoded together in one batch
    chat_format: Optional[str] = None  # chat requests: a llama.cpp template name; default: the GGUF's
    lora_path: Optional[str] = None  # a GGUF LoRA adapter applied to the model
    stop_on_repetition: bool = True  # end a generation that loops a phrase, as "length"
    # fake: deterministic test double
    latency_s: float = 0.0
    fail_rate: float = 0.0


@dataclass
class PromptConfig:
    name: str = MISSING  # selfinstruct | selfinstruct_chat | alpaca
    chat: bool = False  # frame each prompt as a chat message (chat models)
    num_human: int = 6  # in-context instructions from the seed tasks
    num_machine: int = 2  # ... and from the machine-generated ones, once there are enough
    num_demos: int = 3  # alpaca: seed demonstrations per request
    num_tasks_per_request: int = 20  # alpaca: tasks asked for per request
    max_list_number: int = 16  # stop at this list item (paper: 16)
    # Upper-case the first letter of generated instructions. The original code calls str.capitalize(),
    # which also lower-cases the rest (mangling names and acronyms); this keeps the rest as written.
    capitalize: bool = False


@dataclass
class StageSampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)


@dataclass
class SamplingConfig:
    name: str = MISSING
    instructions: StageSampling = field(default_factory=StageSampling)
    classify: StageSampling = field(default_factory=StageSampling)
    instances: StageSampling = field(default_factory=StageSampling)
    judge: StageSampling = field(default_factory=StageSampling)


@dataclass
class FiltersConfig:
    name: str = MISSING
    rouge_threshold: float = 0.7  # reject when ROUGE-L F1 to any pool instruction is above this
    top_k_similar: int = 10
    min_words: int = 4  # fewer words than this: rejected (paper: 3 or fewer)
    max_words: int = 150
    blacklist: list[str] = field(default_factory=list)
    banned_prefixes: list[str] = field(default_factory=list)
    reject_punctuation_start: bool = True
    reject_non_ascii_start: bool = True
    discard_truncated_response: bool = True  # drop a whole instruction response cut by max_tokens
    reject_degenerate: bool = True  # empty, echoed, non-English or looping output (not in the paper)
    # instance filters (DESIGN.md step 6)
    max_instances_per_task: int = 5
    drop_truncated_last_instance: bool = True
    drop_conflicting_outputs: bool = True  # same non-empty input, different outputs: drop all of the task
    drop_empty_output: bool = True
    drop_input_equals_output: bool = True
    drop_colon_ending: bool = True  # an input or output ending with ":" is usually unfinished
    dedupe_instances: bool = True


@dataclass
class SeedsConfig:
    name: str = MISSING
    path: Optional[str] = None  # JSONL in the original seed_tasks.jsonl format
    limit: Optional[int] = None  # use only the first N seed tasks (seed-set-size ablations)
    classification_only: bool = False


@dataclass
class TrackingConfig:
    backend: str = MISSING  # wandb | none
    project: str = "selfinstruct"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; default: online iff WANDB_API_KEY is set
    group: Optional[str] = None  # default: the sweep's directory name for multirun jobs
    tags: list[str] = field(default_factory=list)


@dataclass
class PrepareConfig:
    include_seeds: bool = False  # add the seed tasks to finetune.jsonl / alpaca.json
    random_templates: bool = True  # the paper's randomly varied prompt formats (false: one fixed format)
    end_token: str = "<|endoftext|>"  # appended to each completion (GPT-3's end of text; "" for none)


@dataclass
class AnalyzeConfig:
    judge: bool = False  # ask the model the paper's three quality questions on a sample
    judge_sample: int = 200
    num_examples: int = 50  # rows in the W&B table of samples
    plots: bool = True


@dataclass
class Config:
    num_instructions: int = 100
    stages: list[str] = field(
        default_factory=lambda: ["instructions", "classify", "instances", "prepare", "analyze"]
    )
    seed: int = 0
    input: Optional[str] = None  # a dataset file for stages run on external data (analyze, dedup)
    optimized_metric: Optional[str] = None  # stats.json key returned to sweepers (e.g. Optuna)
    llm: LLMConfig = MISSING
    prompt: PromptConfig = MISSING
    sampling: SamplingConfig = MISSING
    filters: FiltersConfig = MISSING
    seeds: SeedsConfig = MISSING
    tracking: TrackingConfig = MISSING
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schema in [
        ("llm", LLMConfig),
        ("prompt", PromptConfig),
        ("sampling", SamplingConfig),
        ("filters", FiltersConfig),
        ("seeds", SeedsConfig),
        ("tracking", TrackingConfig),
    ]:
        cs.store(group=group, name=f"{group}_schema", node=schema)


register_configs()


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key `{key}`: {message}")


def validate(cfg: DictConfig) -> None:
    """Value checks that a schema cannot express; raises ConfigError naming the key."""
    # Without the `experiment` config group on Hydra's search path (hydra_plugins/ puts experiments/
    # there), `+experiment=NAME` would add a plain key and the defaults would run unnoticed.
    _check("experiment" not in cfg, "experiment",
           f"no preset named {cfg.get('experiment')!r} was loaded: the `experiment` config group is not "
           "on Hydra's search path (the repository root, which holds hydra_plugins/, must be on sys.path)")
    _check(cfg.num_instructions >= 0, "num_instructions", f"must be >= 0, got {cfg.num_instructions}")
    for stage in cfg.stages:
        _check(stage in STAGES, "stages", f"unknown stage {stage!r}; choose from {list(STAGES)}")
    if "analyze" in cfg.stages or "dedup" in cfg.stages:
        if cfg.input is not None:
            _check(Path(cfg.input).is_file(), "input", f"file not found: {cfg.input}")
    if "dedup" in cfg.stages:
        _check(cfg.input is not None, "input", "stages=[dedup] needs input=PATH (a JSONL or JSON list)")

    f = cfg.filters
    _check(0.0 <= f.rouge_threshold <= 1.0, "filters.rouge_threshold",
           f"must be in [0, 1], got {f.rouge_threshold}")
    _check(f.min_words >= 0, "filters.min_words", f"must be >= 0, got {f.min_words}")
    _check(f.max_words >= f.min_words, "filters.max_words",
           f"must be >= filters.min_words ({f.min_words}), got {f.max_words}")
    _check(f.top_k_similar >= 0, "filters.top_k_similar", f"must be >= 0, got {f.top_k_similar}")
    _check(f.max_instances_per_task >= 1, "filters.max_instances_per_task",
           f"must be >= 1, got {f.max_instances_per_task}")

    for stage in ("instructions", "classify", "instances", "judge"):
        s = cfg.sampling[stage]
        key = f"sampling.{stage}"
        _check(s.temperature >= 0, f"{key}.temperature", f"must be >= 0, got {s.temperature}")
        _check(0 < s.top_p <= 1, f"{key}.top_p", f"must be in (0, 1], got {s.top_p}")
        _check(s.max_tokens >= 1, f"{key}.max_tokens", f"must be >= 1, got {s.max_tokens}")
        _check(-2 <= s.presence_penalty <= 2, f"{key}.presence_penalty",
               f"must be in [-2, 2], got {s.presence_penalty}")

    p = cfg.prompt
    _check(p.num_human >= 1, "prompt.num_human", f"must be >= 1, got {p.num_human}")
    _check(p.num_machine >= 0, "prompt.num_machine", f"must be >= 0, got {p.num_machine}")
    _check(p.max_list_number > p.num_human + p.num_machine, "prompt.max_list_number",
           "must be larger than prompt.num_human + prompt.num_machine")
    _check(p.num_demos >= 1, "prompt.num_demos", f"must be >= 1, got {p.num_demos}")
    _check(p.num_tasks_per_request > p.num_demos + 1, "prompt.num_tasks_per_request",
           f"must be larger than prompt.num_demos + 1, got {p.num_tasks_per_request}")

    llm = cfg.llm
    _check(llm.backend in ("llamacpp", "openai", "openai_compatible", "fake"), "llm.backend",
           f"unknown backend {llm.backend!r}")
    _check(llm.concurrency >= 1, "llm.concurrency", f"must be >= 1, got {llm.concurrency}")
    _check(llm.max_retries >= 0, "llm.max_retries", f"must be >= 0, got {llm.max_retries}")
    _check(0.0 <= llm.fail_rate <= 1.0, "llm.fail_rate", f"must be in [0, 1], got {llm.fail_rate}")
    _check(llm.latency_s >= 0, "llm.latency_s", f"must be >= 0, got {llm.latency_s}")
    if llm.backend == "openai_compatible":
        _check(bool(llm.base_url), "llm.base_url", "llm=openai_compatible needs llm.base_url=http://HOST:PORT/v1")
    if llm.backend in ("openai", "openai_compatible"):
        _check(bool(llm.model), "llm.model", "name the served model, e.g. llm.model=gpt-4o-mini")
        _check(llm.timeout_s > 0, "llm.timeout_s", f"must be > 0, got {llm.timeout_s}")
    if llm.backend == "openai" and not llm.base_url:
        _check(bool(resolve_api_key(cfg)), "llm.api_key",
               "llm=openai needs a key: set OPENAI_API_KEY or pass llm.api_key=...")
    for key in ("requests_per_minute", "tokens_per_minute"):
        value = llm[key]
        _check(value is None or value > 0, f"llm.{key}", f"must be > 0 or null, got {value}")
    if llm.model_path is not None:
        _check(Path(llm.model_path).is_file(), "llm.model_path", f"file not found: {llm.model_path}")

    s = cfg.seeds
    if s.path is not None:
        _check(Path(s.path).is_file(), "seeds.path", f"seed file not found: {s.path}")
    elif s.name == "file":
        _check(False, "seeds.path", "seeds=file needs seeds.path=PATH (JSONL in the original format)")
    if s.limit is not None:
        _check(s.limit >= 1, "seeds.limit", f"must be >= 1, got {s.limit}")

    a = cfg.analyze
    _check(a.judge_sample >= 1, "analyze.judge_sample", f"must be >= 1, got {a.judge_sample}")
    _check(a.num_examples >= 0, "analyze.num_examples", f"must be >= 0, got {a.num_examples}")

    t = cfg.tracking
    _check(t.mode in (None, "online", "offline", "disabled"), "tracking.mode",
           f"must be online, offline or disabled, got {t.mode!r}")


def resolve_api_key(cfg: DictConfig) -> Optional[str]:
    from .secrets import api_key  # llm.api_key, a key taken off the command line, OPENAI_API_KEY

    return api_key(cfg)


def to_plain(cfg: DictConfig) -> dict:
    """The composed config as a plain dict with secrets removed (for logs, W&B and outputs)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.get("llm", {}).pop("api_key", None)
    return plain
