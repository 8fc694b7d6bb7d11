"""The `finetune` config group: a typed schema and its value checks (no torch import here).

`FinetuneConfig` is a Hydra structured config like the schemas in selfinstruct/config.py: YAML
under conf/finetune/ extends it, so a misspelt key or a wrong type fails at compose time, and
`validate_finetune` checks the values before any model loads, naming the key.

The defaults are chosen for the embedded Gemma 3 270M on a 2-core CPU (measured there, see
benchmarks/bench_finetune.py); on a GPU raise batch_size and max_length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from selfinstruct.errors import ConfigError
from selfinstruct.training.openai_finetune import OpenAIFinetuneConfig
from selfinstruct.training.openai_finetune import validate as validate_openai

BACKENDS = ("local", "openai")
METHODS = ("lora", "full")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

# Learning rates when finetune.learning_rate is null. LoRA adapters start at zero and need a large
# step to move; full fine-tuning of every weight diverges at that rate, so it gets 10x less.
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}


@dataclass
class FinetuneConfig:
    backend: str = "local"  # local (transformers + peft, CPU or CUDA) | openai (the fine-tuning API)
    method: str = "lora"  # lora (an adapter; llama.cpp loads it as adapter.gguf) | full (all weights)
    # null: the embedded Gemma 3 270M, converted once from its GGUF into an HF folder in the cache
    # dir; else the path of a local HF model folder (config.json, weights, tokenizer).
    base_model: Optional[str] = None
    epochs: float = 2.0  # the paper: 2 epochs
    learning_rate: Optional[float] = None  # null: 2e-4 for lora, 2e-5 for full
    # 4 sequences a step: on 2 CPU cores a step of 4 x 256 tokens takes seconds, and 4 keeps the
    # gradient of a step less noisy than 1 or 2 at the same cost per token.
    batch_size: int = 4
    grad_accum: int = 1  # optimizer step every N batches (effective batch = batch_size * grad_accum)
    # 256 tokens hold most prompt/completion pairs of this data (the paper's average instance is
    # about 50 words); longer ones lose the start of their prompt (counted in finetune/num_truncated).
    # Cost grows with length, and attention quadratically.
    max_length: int = 256
    # LoRA rank 8 on the attention query and value projections, the original LoRA recipe: a few
    # hundred thousand trainable weights, cheap on CPU, and llama.cpp applies it at load time.
    lora_r: int = 8
    lora_alpha: float = 16.0  # scale alpha / r = 2
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    save_every: int = 50  # checkpoint every N optimizer steps (a killed run resumes from the last one)
    max_steps: Optional[int] = None  # cap on optimizer steps; null: finetune.epochs decide
    device: str = "auto"  # auto: cuda when available, else cpu
    # auto: bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with
    # AVX512-BF16 or AMX), else fp32.
    precision: str = "auto"
    # torch CPU threads; null: torch's default (all cores). torch's threads wait for each other at
    # every operation, so on a machine busy with other work 1 thread can be several times faster
    # (measured here under load: 5.7 s/step with 1 thread, 34 s/step with 2).
    num_threads: Optional[int] = None
    seed: Optional[int] = None  # null: the run's top-level `seed`
    log_every: int = 1  # a train_log.jsonl record every N steps (a CPU step takes seconds: log all)
    # finetune.backend=openai: the fine-tuning API's settings (training/openai_finetune.py)
    openai: OpenAIFinetuneConfig = field(default_factory=OpenAIFinetuneConfig)

    @staticmethod
    def check(node) -> None:
        validate_finetune(node)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key `finetune.{key}`: {message}")


def learning_rate(node: Any) -> float:
    """The configured learning rate, or the method's default when it is null."""
    return node.learning_rate if node.learning_rate is not None else DEFAULT_LEARNING_RATE[node.method]


def check_base_model_folder(path: str) -> None:
    """Raise ConfigError naming finetune.base_model unless PATH looks like a loadable HF model folder."""
    folder = Path(path).expanduser()
    _check(folder.is_dir(), "base_model", f"not a folder: {path} (give a local Hugging Face model "
           "folder with config.json, weights and tokenizer, or null for the embedded Gemma 3 270M)")
    _check((folder / "config.json").is_file(), "base_model",
           f"{path} has no config.json, so it is not a Hugging Face model folder")
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json")
               for p in folder.glob(pattern)]
    _check(bool(weights), "base_model", f"{path} has no model weights (*.safetensors or *.bin)")


def validate_finetune(node: Any) -> None:
    """Value checks for the `finetune` group (a DictConfig or a FinetuneConfig); raises ConfigError."""
    _check(node.backend in BACKENDS, "backend", f"must be one of {list(BACKENDS)}, got {node.backend!r}")
    _check(node.epochs > 0, "epochs", f"must be > 0, got {node.epochs}")
    _check(node.learning_rate is None or node.learning_rate > 0, "learning_rate",
           f"must be > 0 or null, got {node.learning_rate}")
    _check(node.batch_size >= 1, "batch_size", f"must be >= 1, got {node.batch_size}")
    _check(node.seed is None or node.seed >= 0, "seed", f"must be >= 0 or null, got {node.seed}")
    if node.backend == "openai":
        validate_openai(node.openai)
    if node.backend != "local":
        return  # the remaining keys configure local training only
    _check(node.method in METHODS, "method", f"must be one of {list(METHODS)}, got {node.method!r}")
    if node.base_model is not None:
        check_base_model_folder(node.base_model)
    _check(node.grad_accum >= 1, "grad_accum", f"must be >= 1, got {node.grad_accum}")
    # A training example needs room for a start token, some prompt and some completion.
    _check(node.max_length >= 8, "max_length", f"must be >= 8, got {node.max_length}")
    if node.method == "lora":
        _check(node.lora_r >= 1, "lora_r", f"must be >= 1, got {node.lora_r}")
        _check(node.lora_alpha > 0, "lora_alpha", f"must be > 0, got {node.lora_alpha}")
        _check(0 <= node.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {node.lora_dropout}")
        _check(len(node.target_modules) > 0, "target_modules",
               "name at least one module for LoRA, e.g. [q_proj, v_proj]")
    _check(node.save_every >= 1, "save_every", f"must be >= 1, got {node.save_every}")
    _check(node.max_steps is None or node.max_steps >= 1, "max_steps",
           f"must be >= 1 or null, got {node.max_steps}")
    _check(node.device in DEVICES, "device", f"must be one of {list(DEVICES)}, got {node.device!r}")
    _check(node.precision in PRECISIONS, "precision",
           f"must be one of {list(PRECISIONS)}, got {node.precision!r}")
    _check(node.log_every >= 1, "log_every", f"must be >= 1, got {node.log_every}")
    _check(node.num_threads is None or node.num_threads >= 1, "num_threads",
           f"must be >= 1 or null, got {node.num_threads}")
