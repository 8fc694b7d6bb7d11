"""Answering prompts with transformers: greedy, batched, up to max_new_tokens.

The evaluate stage's engine for a model that llama.cpp cannot load here (method=full writes an HF
folder, no GGUF), and for any HF base model with or without a PEFT adapter. A LoRA run on the
embedded model is answered faster by llama.cpp with adapter.gguf.

Prompts are encoded as in training (<bos> + prompt, no other special tokens) and left-padded, so
every row of a batch continues right after its own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

from selfinstruct.llm.base import LLM, Completion, Request, Sampling, Usage


class TransformersAnswerer:
    """A loaded HF model (plus optional PEFT adapter) that answers prompts greedily."""

    def __init__(self, model_dir: Path, adapter_dir: Optional[Path] = None, device: str = "auto"):
        import torch

        from selfinstruct.training.base_model import load_model, load_tokenizer, resolve_device

        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(Path(model_dir))
        model = load_model(Path(model_dir), self.device)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
        self.model = model.eval()
        self._torch = torch

    def answer(self, prompts: Sequence[str], max_new_tokens: int = 128, batch_size: int = 8,
               stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions of prompts, in order; each ends at the end token, max_new_tokens, or
        just before the first of the stop strings."""
        torch, tok = self._torch, self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        # Longest first: rows of similar length waste less padding; answers go back in order.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        by_index: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            encoded = [bos + list(tok(prompts[i], add_special_tokens=False)["input_ids"]) for i in chunk]
            width = max(len(e) for e in encoded)
            input_ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=self.device)
            attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded],
                                     device=self.device)
            with torch.no_grad():
                output = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                             max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=pad_id, eos_token_id=tok.eos_token_id)
            for i, row in zip(chunk, output[:, width:].tolist()):
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                text = tok.decode(row, skip_special_tokens=True)
                cuts = [text.index(s) for s in stop if s and s in text]
                by_index[i] = text[:min(cuts)] if cuts else text
        return [by_index[i] for i in range(len(prompts))]


def answer_prompts(model_dir: Path, prompts: Sequence[str], *, adapter_dir: Optional[Path] = None,
                   max_new_tokens: int = 128, batch_size: int = 8, stop: Sequence[str] = (),
                   device: str = "auto") -> list[str]:
    """Load model_dir (+ adapter_dir) and answer prompts greedily; see TransformersAnswerer."""
    return TransformersAnswerer(model_dir, adapter_dir, device).answer(
        prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop)


def model_dir_for(result_dir: Path, base_model_dir: Path) -> tuple[Path, Optional[Path]]:
    """(model folder, adapter folder or None) of a finished finetune output dir: model/ for
    method=full, else the base model with adapter/."""
    result_dir = Path(result_dir)
    if (result_dir / "model").is_dir():
        return result_dir / "model", None
    return Path(base_model_dir), result_dir / "adapter"



@dataclass
class TransformersLLM(LLM):
    """A TransformersAnswerer as a backend of the request loop, for the evaluate stage: greedy
    answers of an HF model folder (+ a PEFT adapter). No response cache: the evaluate stage keeps
    its answers in eval_answers.jsonl, and a retrained folder under the same path must not get
    the old model's answers."""

    name: ClassVar[str] = "transformers"
    model_dir: str = ""
    adapter_dir: Optional[str] = None
    device: str = "auto"
    concurrency: int = 8  # prompts per generate() batch
    _answerer: Any = field(default=None, repr=False)

    def _generate(self, requests: list[Request], params: Sampling, usage: Usage) -> list[Completion]:
        if self._answerer is None:
            adapter = Path(self.adapter_dir) if self.adapter_dir else None
            self._answerer = TransformersAnswerer(Path(self.model_dir), adapter, self.device)
        texts = self._answerer.answer([r.prompt for r in requests], max_new_tokens=params.max_tokens,
                                      batch_size=self.concurrency, stop=params.stop or ())
        return [Completion(text, "stop") for text in texts]
