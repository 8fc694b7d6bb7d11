"""`stages=[dedup] input=PATH`: only the ROUGE-L novelty filter, on any list of records with an
`instruction` field, in file order, against the configured seed set plus what it has kept so far.
Writes instructions.jsonl and rejected.jsonl in the formats of the generation stage."""

from __future__ import annotations

import os

from tqdm import tqdm

from selfinstruct.filtering.rules import novelty_record
from selfinstruct.files import DataError, read_records
from selfinstruct.filtering.rouge import RougeIndex

CHUNK = 2000  # candidates per filter call: big enough to batch, small enough for a live progress bar


def load_instructions(path: str) -> list[dict]:
    records = read_records(path)
    for i, r in enumerate(records):
        if not isinstance(r.get("instruction"), str):
            raise DataError(f"{path}: record {i + 1} has no string field 'instruction'")
    return records


def run_dedup(ctx) -> None:
    f = ctx.cfg.filters
    records = load_instructions(ctx.cfg.input)
    index = RougeIndex([t.instruction for t in ctx.seeds], workers=os.cpu_count() or 1)
    kept, rejected = [], []
    with tqdm(total=len(records), desc="dedup", unit="inst") as bar:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            texts = [r["instruction"].strip() for r in chunk]
            for offset, (record, text, decision) in enumerate(
                    zip(chunk, texts, index.filter(texts, f.rouge_threshold, f.top_k_similar))):
                source = start + offset
                accepted, out = novelty_record(text, decision, f.rouge_threshold)
                out["source_index"] = source
                if accepted:
                    out = {"id": record.get("id", f"input_{source}"), **out, "request_id": None}
                    out.update({k: record[k] for k in ("input", "output", "is_classification") if k in record})
                (kept if accepted else rejected).append(out)
            bar.update(len(chunk))
    # A generation run's instructions.jsonl belongs to its instructions stage: the claim refuses it.
    ctx.run.replace_jsonl(ctx.run.instructions, kept, "dedup")
    ctx.run.replace_jsonl(ctx.run.rejected, rejected, "dedup")
