"""`stages=[dedup] input=PATH`: only the ROUGE-L novelty filter (and, with filters.reject_duplicates,
exact duplicates in any script; empty instructions always), on any list of records with an
`instruction` field, in file order, against the configured seed set plus what it has kept so far.
Writes instructions.jsonl and rejected.jsonl in the formats of the generation stage."""

from __future__ import annotations

import os

from tqdm import tqdm

from selfinstruct.datasets.formats import load_instructions
from selfinstruct.filtering.rouge import RougeIndex
from selfinstruct.filtering.rules import EMPTY, novelty_record

CHUNK = 2000  # candidates per filter call: big enough to batch, small enough for a live progress bar


def run_dedup(ctx) -> None:
    f = ctx.cfg.filters
    records = load_instructions(ctx.cfg.input)
    index = RougeIndex([t.instruction for t in ctx.seeds], workers=os.cpu_count() or 1, tokenizer=f.tokenizer)
    kept, rejected = [], []
    with tqdm(total=len(records), desc="dedup", unit="inst") as bar:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            texts = [r["instruction"].strip() for r in chunk]
            scored = [i for i, text in enumerate(texts) if text]  # an empty instruction is never kept
            decisions = dict(zip(scored, index.filter([texts[i] for i in scored], f.rouge_threshold,
                                                      f.top_k_similar, duplicates=f.reject_duplicates)))
            for offset, (record, text) in enumerate(zip(chunk, texts)):
                source = start + offset
                if offset in decisions:
                    accepted, out = novelty_record(text, decisions[offset], f.rouge_threshold)
                else:
                    accepted, out = False, {"candidate": text, "rule": EMPTY[0], "detail": EMPTY[1]}
                out["source_index"] = source
                if accepted:
                    out = {"id": record.get("id", f"input_{source}"), **out, "request_id": None}
                    out.update({k: record[k] for k in ("input", "output", "is_classification") if k in record})
                (kept if accepted else rejected).append(out)
            bar.update(len(chunk))
    # A generation run's instructions.jsonl belongs to its instructions stage: the claim refuses it.
    ctx.run.replace_jsonl(ctx.run.instructions, kept, "dedup")
    ctx.run.replace_jsonl(ctx.run.rejected, rejected, "dedup")
