"""Prompt/completion pairs as token ids with completion-only labels, and the batch collator.

Each example is  <bos> prompt completion <eos>. Prompt tokens (and <bos>) carry label -100, so
the loss is on the completion only (the paper: prompt loss weight 0). Prompt and completion are
tokenized separately: at answer time the model sees the prompt tokenized alone and generates the
completion after it, so training on the same token boundary matches inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

IGNORE = -100  # the label PyTorch's cross-entropy skips
GPT3_END = "<|endoftext|>"  # the prepare stage ends completions with GPT-3's end-of-text marker


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, prompt: str, completion: str, max_length: int) -> tuple[dict, bool]:
    """One pair as {"input_ids", "labels"} of at most max_length tokens, and whether it was cut.

    GPT-3's "<|endoftext|>" ending a completion becomes the tokenizer's own end token (as text it
    would teach the model to spell the marker out). A pair longer than max_length loses the start
    of its prompt, keeping the instruction's end and the whole completion; a completion that does
    not fit even so keeps the last half of the budget for the prompt and is cut at its end.
    """
    if completion.endswith(GPT3_END):
        completion = completion[: -len(GPT3_END)]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = _ids(tokenizer, prompt)
    completion_ids = _ids(tokenizer, completion) + eos
    budget = max_length - len(bos)
    truncated = len(prompt_ids) + len(completion_ids) > budget
    if truncated:
        if len(completion_ids) < budget:
            prompt_ids = prompt_ids[len(prompt_ids) - (budget - len(completion_ids)):]
        else:
            keep_prompt = min(len(prompt_ids), budget // 2)
            prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
            completion_ids = completion_ids[: budget - keep_prompt]
    input_ids = bos + prompt_ids + completion_ids
    labels = [IGNORE] * (len(bos) + len(prompt_ids)) + completion_ids
    return {"input_ids": input_ids, "labels": labels}, truncated


def encode_pairs(tokenizer: Any, pairs: Iterable[dict], max_length: int) -> tuple[list[dict], int]:
    """All pairs encoded; and how many were cut by max_length."""
    examples, num_truncated = [], 0
    for pair in pairs:
        example, truncated = encode_pair(tokenizer, pair["prompt"], pair["completion"], max_length)
        examples.append(example)
        num_truncated += truncated
    return examples, num_truncated


@dataclass
class PadCollator:
    """Pads a batch to its longest example (dynamic padding), on the right; labels with -100.

    Batches of similar lengths (the length-grouped sampler) make the padding small.
    """

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None  # e.g. 8 on GPUs (tensor cores); None on CPU

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids, labels, attention = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE] * pad)
            attention.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(attention)}
