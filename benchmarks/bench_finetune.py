"""Local fine-tuning speed: ours (selfinstruct.training.finetune_local) beside a plain HF Trainer.

Both train the same LoRA (r=8 on q_proj, v_proj) on the same base model (the embedded Gemma 3
270M, or --base-model DIR) and the same examples (a seeded sample of the original SELF-INSTRUCT
fine-tuning data), batch 4, max_length 256, on this machine's CPU or GPU:

- plain: the HF Trainer with default settings as in the tutorials: every example padded to
  max_length, random batches, the model's own loss (logits for all positions over the whole
  262K-token vocabulary, prompt and padding labels masked with -100), fp32;
- ours: finetune_local: the output layer only on completion positions, dynamic padding with
  length-grouped batches, precision=auto.
- with --ablations also: plain with dynamic padding (isolates the output-layer trick), and ours in
  bf16 autocast (whether bf16 pays on this CPU).

Each variant runs in its own process (so peak RSS is its own), a warm-up step first, then the
measured steps; tokens/s counts real (non-padding) tokens. The variants alternate for --rounds
rounds and the fastest run of each counts: other work on a shared machine slows runs at random
(torch's threads wait for each other at every operation, so one descheduled thread stalls all),
and the ratio, measured side by side in one run, is what to read.

    python benchmarks/bench_finetune.py [--examples 32] [--plain-steps 2] [--rounds 2] [--ablations]
    python benchmarks/bench_finetune.py --threads 1 --rounds 1     # on a busy machine: read CPU time
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "runs" / "AliceShen122__self-instruct" / "gpt3_finetuning_data_401.jsonl"
BATCH, MAX_LENGTH = 4, 256


def sample(path: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(0).sample(rows, min(n, len(rows)))


def base_dir(args) -> Path:
    from selfinstruct.llm.cache import default_cache_dir
    from selfinstruct.training.base_model import resolve_base_model

    return resolve_base_model(args.base_model, default_cache_dir())


def per_step(records: list[dict]) -> dict:
    """s/step and tokens/s over the records after the first (warm-up) step."""
    first, last = records[0], records[-1]
    steps = last["step"] - first["step"]
    seconds = last["seconds"] - first["seconds"]
    tokens = last["tokens"] - first["tokens"]
    cpu = last["cpu"] - first["cpu"]  # CPU seconds of all threads: less sensitive to other load
    return {"steps": steps, "s_per_step": seconds / steps, "tokens_per_s": tokens / seconds,
            "cpu_s_per_step": cpu / steps, "tokens_per_cpu_s": tokens / cpu}


def run_ours(args, pairs: list[dict], precision: str) -> dict:
    from selfinstruct.llm.cache import default_cache_dir
    from selfinstruct.training.config import FinetuneConfig
    from selfinstruct.training.local import finetune_local

    steps = 1 + -(-len(pairs) // BATCH) if args.ours_steps is None else 1 + args.ours_steps
    cfg = FinetuneConfig(base_model=args.base_model, max_steps=steps, batch_size=BATCH, max_length=MAX_LENGTH,
                         save_every=10_000, precision=precision, seed=0)
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = finetune_local(cfg, pairs, Path(tmp) / "finetune", default_cache_dir(),
                               on_log=lambda r: records.append({**r, "cpu": time.process_time()}))
    return {**per_step(records), "precision": stats["finetune/precision"],
            "peak_rss_mb": stats["cost/finetune/peak_rss_mb"]}


def run_plain(args, pairs: list[dict], dynamic_padding: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback,
                              TrainingArguments, default_data_collator)

    from selfinstruct.training.data import PadCollator, encode_pairs
    from selfinstruct.training.local import _peak_rss_mb

    folder = base_dir(args)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    examples, _ = encode_pairs(tokenizer, pairs, MAX_LENGTH)  # the same labels: prompt tokens -100
    pad = tokenizer.pad_token_id
    if dynamic_padding:
        collate = PadCollator(pad)
    else:  # the tutorials' recipe: every example padded to max_length up front
        examples = [{"input_ids": torch.tensor(e["input_ids"] + [pad] * (MAX_LENGTH - len(e["input_ids"]))),
                     "labels": torch.tensor(e["labels"] + [-100] * (MAX_LENGTH - len(e["labels"]))),
                     "attention_mask": torch.tensor([1] * len(e["input_ids"]) + [0] * (MAX_LENGTH - len(e["input_ids"])))}
                    for e in examples]
        collate = default_data_collator
    seen = {"tokens": 0}

    def counting_collate(features):
        batch = collate(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    records: list[dict] = []

    class Timer(TrainerCallback):
        start = 0.0

        def on_train_begin(self, a, state, control, **kw):
            self.start = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                records.append({"step": state.global_step, "tokens": seen["tokens"],
                                "seconds": time.perf_counter() - self.start, "cpu": time.process_time()})

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=1 + args.plain_steps,
                                  learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none",
                                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0)
        Trainer(model=model, args=targs, train_dataset=examples, data_collator=counting_collate,
                callbacks=[Timer()]).train()
    return {**per_step(records), "precision": "fp32", "peak_rss_mb": round(_peak_rss_mb(), 1)}


def child(variant: str, args) -> dict:
    """Run one variant in a fresh process; its JSON result."""
    cmd = [sys.executable, __file__, "--variant", variant, "--examples", str(args.examples),
           "--plain-steps", str(args.plain_steps)]
    if args.base_model:
        cmd += ["--base-model", args.base_model]
    if args.ours_steps is not None:
        cmd += ["--ours-steps", str(args.ours_steps)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="training examples (ours: one epoch over them)")
    parser.add_argument("--plain-steps", type=int, default=2, help="measured steps of the plain Trainer")
    parser.add_argument("--ours-steps", type=int, default=None, help="measured steps of ours (default: an epoch)")
    parser.add_argument("--base-model", default=None, help="an HF model folder (default: the embedded model)")
    parser.add_argument("--ablations", action="store_true", help="also plain+dynamic padding, ours in bf16")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the variants this often; keep the best")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: all cores); 1 makes CPU time a clean "
                             "measure of work on a busy machine (no threads waiting for each other)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: the benchmark data {DATA} is absent (it lives in ../shared/data)")
        return
    pairs = sample(DATA, args.examples)
    if args.variant:  # a child process
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        runners = {"plain": lambda: run_plain(args, pairs, dynamic_padding=False),
                   "plain_dynamic": lambda: run_plain(args, pairs, dynamic_padding=True),
                   "ours": lambda: run_ours(args, pairs, precision="auto"),
                   "ours_bf16": lambda: run_ours(args, pairs, precision="bf16")}
        print(json.dumps(runners[args.variant]()))
        return

    base_dir(args)  # convert the embedded model first, outside the timings
    variants = ["plain", "ours"] + (["plain_dynamic", "ours_bf16"] if args.ablations else [])
    labels = {"plain": "plain HF Trainer (pad to 256, full logits)",
              "plain_dynamic": "plain + dynamic padding (full logits)",
              "ours": "ours (completion-only lm_head, grouped dyn. padding)",
              "ours_bf16": "ours, bf16 autocast"}

    def line(variant: str, r: dict) -> str:
        return (f"{labels[variant]:54s} {r['s_per_step']:6.2f} s/step {r['tokens_per_s']:6.1f} tokens/s | "
                f"CPU {r['cpu_s_per_step']:6.2f} s/step | peak RSS {r['peak_rss_mb'] / 1024:4.1f} GB "
                f"({r['steps']} steps, {r['precision']})")

    threads = f"{args.threads} torch thread(s)" if args.threads else "all cores"
    print(f"{len(pairs)} examples from {DATA.name}, batch {BATCH}, max_length {MAX_LENGTH}, LoRA r=8 on q,v, "
          f"{threads}; {args.rounds} round(s) alternating the variants, the best run of each counts")
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for variant in variants:
            r = child(variant, args)
            print(f"round {round_ + 1}: {line(variant, r)}", flush=True)
            if variant not in best or r["s_per_step"] < best[variant]["s_per_step"]:
                best[variant] = r
    print("best:")
    for variant in variants:
        print(f"  {line(variant, best[variant])}")
    plain, ours = best["plain"], best["ours"]
    print(f"speed-up ours / plain: {plain['s_per_step'] / ours['s_per_step']:.1f}x s/step (4 examples a step), "
          f"{ours['tokens_per_s'] / plain['tokens_per_s']:.1f}x tokens/s; "
          f"CPU time {plain['cpu_s_per_step'] / ours['cpu_s_per_step']:.1f}x per step (target: >= 2x)")


if __name__ == "__main__":
    main()
