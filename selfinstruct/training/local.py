"""Local supervised fine-tuning on prompt/completion pairs (transformers Trainer + peft).

What makes it fast on a CPU, against a plain Trainer on the same model and data
(benchmarks/bench_finetune.py measures each):
- completion-only output layer: Gemma's 262K-token output layer costs more than the rest of the
  model, and with prompt loss weight 0 only completion positions need logits. The model's own
  forward takes a boolean `logits_to_keep` mask (transformers >= 5) and applies lm_head to those
  hidden states only; the loss is the same number as the full-logits masked loss.
- dynamic padding to the longest example of a batch, with batches of similar lengths (a
  length-grouped sampler), instead of padding everything to max_length;
- bf16 autocast where the device computes bf16 natively (see base_model.resolve_precision).

Scaling: this is the plain HF Trainer, so `accelerate launch` or torchrun run it data-parallel on
several GPUs and nodes; the loss goes through the model's forward (DDP-safe) and is normalised by
the completion tokens of the whole (accumulated, all-process) batch like transformers' own loss.

Resume: checkpoints every finetune.save_every steps under checkpoints/ hold the adapter (or model),
optimizer, scheduler and RNG states; a killed run resumes from the last complete one. The batch
order is a function of (seed, epoch) only, so the resumed run sees the same batches and ends with
the same weights as one never killed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from selfinstruct.training.config import learning_rate as configured_learning_rate
from selfinstruct.training.config import validate_finetune
from selfinstruct.training.data import IGNORE, PadCollator, encode_pairs

log = logging.getLogger(__name__)

PROGRESS_FILE = "selfinstruct_progress.json"  # written last into a checkpoint: it is complete
RESULT_FILE = "result.json"  # written last into the output dir: the run finished
RUN_FILE = "run.json"  # the fingerprint the checkpoints belong to


def completion_loss_sum(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> tuple[Any, int]:
    """Sum of the cross-entropy over completion tokens (labels != -100), and their number.

    Position t predicts token t + 1, so the hidden states kept are those whose next label is a
    completion token; the model applies its output layer (and any logit soft-capping) to those
    only. Float32 cross-entropy, also under bf16 autocast.
    """
    import torch
    import torch.nn.functional as F

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                    use_cache=False)
    targets = labels[:, 1:][keep[:, :-1]]
    if outputs.logits.dim() != 2 or outputs.logits.shape[0] != targets.numel():
        raise ValueError(f"{type(model).__name__} ignores a boolean logits_to_keep mask (returned logits "
                         f"of shape {tuple(outputs.logits.shape)}); its forward predates transformers 5")
    return F.cross_entropy(outputs.logits.float(), targets, reduction="sum"), int(targets.numel())


def epoch_losses(records: list[dict]) -> dict:
    """Mean loss of the first and of the last epoch (of the first and second half with one epoch or
    less): one step's loss is one batch's, too noisy to compare the start with the end."""
    if len(records) < 2:
        return {}
    last_epoch = math.ceil(records[-1]["epoch"] - 1e-9)
    if last_epoch >= 2:
        first = [r["loss"] for r in records if r["epoch"] <= 1 + 1e-9]
        last = [r["loss"] for r in records if r["epoch"] > last_epoch - 1 + 1e-9]
    else:
        half = len(records) // 2
        first, last = [r["loss"] for r in records[:half]], [r["loss"] for r in records[half:]]
    return {"finetune/first_epoch_loss": round(sum(first) / len(first), 4),
            "finetune/last_epoch_loss": round(sum(last) / len(last), 4)}


def _peak_rss_mb() -> float:
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _plain(cfg: Any) -> dict:
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# Settings that change how a run goes but not the weights it ends with: a killed run may resume
# with other values (e.g. num_threads=1 once the machine got busy).
RESULT_NEUTRAL_KEYS = ("log_every", "save_every", "num_threads", "device")


def _fingerprint(cfg: dict, seed: int, base_model: Path, pairs: Sequence[dict]) -> str:
    """What the checkpoints and the result depend on: settings, seed, base model and data."""
    settings = {k: v for k, v in cfg.items() if k not in RESULT_NEUTRAL_KEYS}
    digest = hashlib.sha256()
    digest.update(json.dumps({"cfg": settings, "seed": seed, "base_model": str(base_model)},
                             sort_keys=True).encode())
    for pair in pairs:
        digest.update(json.dumps([pair["prompt"], pair["completion"]]).encode())
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place (a previous version is removed first)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def last_complete_checkpoint(checkpoints: Path) -> Optional[Path]:
    """The checkpoint with the highest step that was saved completely (it has PROGRESS_FILE)."""
    done = [p for p in checkpoints.glob("checkpoint-*")
            if (p / PROGRESS_FILE).is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _read_log(path: Path, up_to_step: Optional[int]) -> list[dict]:
    """train_log.jsonl records up to a step (a resumed run rewrites the steps after its checkpoint);
    a torn last line from a kill is dropped."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or record["step"] <= up_to_step:
                records.append(record)
    return records


def plot_loss(records: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker="." if len(records) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("completion loss (cross-entropy)")
    ax.set_title("Fine-tuning loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _make_trainer_class():
    """The Trainer subclass, built on first use so importing this module does not import torch."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(torch.utils.data.Sampler):
        """Length-grouped batches (little padding) in an order that depends on (seed, epoch) only.

        transformers' LengthGroupedSampler draws from the global RNG, which dropout also uses, so
        after a resume in epoch 2 or later it would shuffle differently than the run never killed.
        """

        def __init__(self, lengths: list[int], group_size: int, seed: int):
            self.lengths, self.group_size, self.seed, self.epoch = lengths, group_size, seed, 0

        def set_epoch(self, epoch: int) -> None:  # accelerate's data loader calls this every epoch
            self.epoch = epoch

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.group_size, generator=generator))

    class CompletionOnlyTrainer(Trainer):
        # compute_loss normalises by the completion tokens of the whole accumulated batch
        # (num_items_in_batch), so the Trainer must not divide by the accumulation steps again.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, lengths: list[int], sampler_seed: int, **kwargs):
            super().__init__(*args, **kwargs)
            # Have the Trainer count num_items_in_batch (labels[..., 1:] != -100, over the
            # accumulated batch and all processes) for every model, as for its own causal LM loss.
            self.model_accepts_loss_kwargs = True
            self._loss_shifts_labels = True
            self.lengths, self.sampler_seed = lengths, sampler_seed
            self.tokens_seen = 0  # prompt + completion tokens trained on (no padding), this process
            self.completion_tokens_seen = 0

        def _get_train_sampler(self, train_dataset=None):
            group = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return EpochSeededLengthGroupedSampler(self.lengths, group, self.sampler_seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss_sum, n = completion_loss_sum(model, inputs["input_ids"], inputs["attention_mask"],
                                              inputs["labels"])
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
                self.completion_tokens_seen += n
            if num_items_in_batch is None:  # not a training step (e.g. evaluation): a plain mean
                loss = loss_sum / max(n, 1)
            else:
                loss = loss_sum / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    # num_items_in_batch counts all processes, and DDP averages the gradients
                    loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return CompletionOnlyTrainer


def _progress_callback(trainer_ref: dict, log_path: Path, on_log: Optional[Callable[[dict], None]],
                       base: dict):
    """train_log.jsonl records, the caller's on_log hook, a tqdm bar with loss and ETA, and the
    progress file that marks a checkpoint complete; on the main process only (multi-GPU runs)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar = None
        start = 0.0
        tokens_at_start = 0

        def _totals(self) -> tuple[int, int, float]:
            trainer = trainer_ref["trainer"]
            return (base["tokens"] + trainer.tokens_seen,
                    base["completion_tokens"] + trainer.completion_tokens_seen,
                    base["seconds"] + time.perf_counter() - self.start)

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune",
                                unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            tokens, completion_tokens, seconds = self._totals()
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                      "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0)),
                      "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                      "tokens": tokens, "completion_tokens": completion_tokens,
                      "seconds": round(seconds, 3)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}")
            if on_log is not None:
                on_log(record)

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            tokens, completion_tokens, seconds = self._totals()
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                _write_json_atomic(checkpoint / PROGRESS_FILE, {
                    "step": state.global_step, "tokens": tokens,
                    "completion_tokens": completion_tokens, "seconds": seconds})

        def on_train_end(self, args, state, control, **kwargs):
            trainer_ref["seconds"] = self._totals()[2]  # training time, summed over resumes
            if self.bar is not None:
                self.bar.close()

    return Progress()


def finetune_local(cfg: Any, pairs: Sequence[dict], output_dir: Path, cache_dir: Path, *,
                   seed: int = 0, on_log: Optional[Callable[[dict], None]] = None,
                   plot_path: Optional[Path] = None) -> dict:
    """Fine-tune the configured base model on prompt/completion pairs; return the stats.

    cfg: the `finetune` config node (DictConfig or FinetuneConfig), backend=local.
    pairs: [{"prompt": str, "completion": str}, ...] (finetune.jsonl records).
    output_dir: the run's finetune/ folder; it receives adapter/ and adapter.gguf (lora) or model/
      (full), train_log.jsonl, checkpoints/, result.json, and plots/finetune_loss.png unless
      plot_path says otherwise.
    cache_dir: where the embedded model's HF folder is kept (selfinstruct.llm.cache_dir_for).
    seed: the run's seed, used when finetune.seed is null.
    on_log: called with every train_log.jsonl record (e.g. to log the loss curve to W&B).

    Rerun on the same output_dir: a finished run returns its stats without training; a killed run
    resumes from its last complete checkpoint. Changed settings or data start afresh.
    """
    validate_finetune(cfg)
    if cfg.backend != "local":
        raise ValueError(f"finetune_local needs finetune.backend=local, got {cfg.backend!r}")
    if not pairs:
        raise ValueError("finetune: no prompt/completion pairs to train on")
    setup_start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_path = Path(plot_path) if plot_path is not None else output_dir / "plots" / "finetune_loss.png"
    seed = cfg.seed if cfg.seed is not None else seed

    from selfinstruct.training.base_model import load_model, load_tokenizer, resolve_base_model, resolve_device, resolve_precision

    base_dir = resolve_base_model(cfg.base_model, Path(cache_dir))
    fingerprint = _fingerprint(_plain(cfg), seed, base_dir, pairs)
    result_path, run_path = output_dir / RESULT_FILE, output_dir / RUN_FILE
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("fingerprint") == fingerprint:
            log.info("finetune: %s already holds this run's result; not training again", output_dir)
            return result["stats"]
    checkpoints = output_dir / "checkpoints"
    log_path = output_dir / "train_log.jsonl"
    # Under `accelerate launch` every process runs this; only the first one touches the files.
    first_process = os.environ.get("RANK", "0") == "0"
    previous = json.loads(run_path.read_text()).get("fingerprint") if run_path.exists() else None
    fresh = previous != fingerprint  # other settings or data: earlier checkpoints do not apply
    if fresh and first_process:
        for stale in (checkpoints, output_dir / "adapter", output_dir / "model"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in (log_path, output_dir / "adapter.gguf", result_path):
            stale.unlink(missing_ok=True)
        _write_json_atomic(run_path, {"fingerprint": fingerprint})
    resume = None if fresh else last_complete_checkpoint(checkpoints)
    base = {"step": 0, "tokens": 0, "completion_tokens": 0, "seconds": 0.0}  # before this run
    if resume is not None:
        base = json.loads((resume / PROGRESS_FILE).read_text())
        log.info("finetune: resuming from %s", resume)
    if first_process:  # the steps after the checkpoint are trained (and logged) again
        records = _read_log(log_path, base["step"])
        tmp_log = log_path.with_name(f".{log_path.name}.tmp")
        tmp_log.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp_log, log_path)

    from transformers import PrinterCallback, TrainingArguments, set_seed

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    set_seed(seed)  # the LoRA initialisation draws from it (overwritten by a resumed checkpoint)
    tokenizer = load_tokenizer(base_dir)
    examples, num_truncated = encode_pairs(tokenizer, pairs, cfg.max_length)
    model = load_model(base_dir, "cpu")  # the Trainer moves it to this process's device
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=float(cfg.epochs),
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=configured_learning_rate(cfg),
        lr_scheduler_type="linear",
        logging_steps=cfg.log_every,
        logging_first_step=True,  # the first loss, before any update has had an effect
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=2,  # the newest may be torn by a kill; the one before it is then complete
        report_to="none",  # W&B is the stage's business, through on_log
        disable_tqdm=True,  # our own bar shows the loss
        remove_unused_columns=False,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
    trainer_ref: dict = {}
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=examples,
        data_collator=PadCollator(pad_id, pad_to_multiple_of=8 if device == "cuda" else None),
        lengths=[len(e["input_ids"]) for e in examples], sampler_seed=seed,
        callbacks=[_progress_callback(trainer_ref, log_path, on_log, base)])
    trainer_ref["trainer"] = trainer
    trainer.remove_callback(PrinterCallback)  # it would print every log dict; our bar shows the loss
    setup_seconds = time.perf_counter() - setup_start

    import torch

    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)  # process-wide: restored below
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        torch.set_num_threads(threads)

    if cfg.method == "full":
        # Every process calls save_model (sharded back-ends gather the weights for it); the main
        # process writes the folder.
        trainer.save_model(str(output_dir / ".model.tmp"))
    if not trainer.is_world_process_zero():
        return {}
    gguf_written = _write_model(trainer, tokenizer, cfg.method, output_dir)
    records = _read_log(log_path, None)
    if records:
        plot_loss(records, plot_path)
    tokens = base["tokens"] + trainer.tokens_seen
    seconds = trainer_ref["seconds"]  # the training loop, summed over resumes
    stats = {
        "cost/finetune/steps": trainer.state.global_step,
        "cost/finetune/tokens": tokens,  # prompt + completion tokens trained on, no padding, all epochs
        "cost/finetune/completion_tokens": base["completion_tokens"] + trainer.completion_tokens_seen,
        "cost/finetune/seconds": round(seconds, 3),
        "cost/finetune/setup_seconds": round(setup_seconds, 3),  # model load, tokenization (this run)
        "cost/finetune/tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "cost/finetune/peak_rss_mb": round(_peak_rss_mb(), 1),
        "finetune/first_loss": records[0]["loss"] if records else None,
        "finetune/final_loss": records[-1]["loss"] if records else None,
        **epoch_losses(records),
        "finetune/num_examples": len(examples),
        "finetune/num_truncated": num_truncated,
        "finetune/trainable_params": trainable,
        "finetune/learning_rate": configured_learning_rate(cfg),
        "finetune/epochs": round(trainer.state.epoch or 0.0, 4),
        "finetune/resumed_from_step": base["step"],
        "finetune/method": cfg.method,
        "finetune/device": device,
        "finetune/precision": precision,
        "finetune/base_model": str(base_dir),
        "finetune/adapter_gguf": gguf_written,
    }
    _write_json_atomic(result_path, {"fingerprint": fingerprint, "stats": stats})
    return stats


def _write_model(trainer, tokenizer, method: str, output_dir: Path) -> bool:
    """adapter/ and adapter.gguf (lora) or model/ (full) into output_dir; whether a GGUF was written."""
    from selfinstruct.training.gguf_adapter import UnsupportedArchitecture, write_gguf_adapter

    if method == "full":
        # A fully fine-tuned model gets no GGUF: converting all its weights needs llama.cpp's
        # converter, which no installed package ships. The evaluate stage answers with
        # transformers from this folder (selfinstruct.training.generate).
        tmp = output_dir / ".model.tmp"  # written by trainer.save_model
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, output_dir / "model")
        log.info("finetune: method=full wrote model/ (HF format); there is no GGUF for it")
        return False
    tmp = output_dir / f".adapter.tmp{os.getpid()}"
    trainer.model.save_pretrained(str(tmp))
    _replace_dir(tmp, output_dir / "adapter")
    config = trainer.model.get_base_model().config
    try:
        write_gguf_adapter(output_dir / "adapter", output_dir / "adapter.gguf", config.model_type,
                           config.num_hidden_layers)
    except UnsupportedArchitecture as e:
        log.warning("finetune: no adapter.gguf: %s", e)
        return False
    return True
