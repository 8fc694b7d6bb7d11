"""The loop shared by the stages that send one request per machine instruction (classify,
instances): skip ids already in the output file, send the rest in batches, append each batch's
records and commit it (io.Checkpoint), so a killed or extended run redoes nothing it has.

A request that still fails after the backend's retries is not recorded: the next invocation of the
same run dir asks for it again.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from tqdm import tqdm

from ..io import DataError, append_jsonl, read_jsonl
from ..llm import Completion, Request, Sampling

log = logging.getLogger(__name__)


def read_instructions(ctx, stage: str) -> list[dict]:
    path = ctx.path("instructions.jsonl")
    if not path.exists():
        raise DataError(f"{path}: not found; the {stage} stage needs the instructions stage's output "
                        "in the same run dir (add `instructions` to stages)")
    return read_jsonl(path)


def done_ids(ctx, stage: str, file: str) -> set[str]:
    """Ids already in the stage's output, after truncating it to its last commit."""
    ctx.checkpoint.restore(stage, [file])
    path = ctx.path(file)
    return {r["id"] for r in read_jsonl(path)} if path.exists() else set()


def run_requests(ctx, stage: str, file: str, todo: list[dict], total: int,
                 make_request: Callable[[dict], Request],
                 make_record: Callable[[dict, Completion], Optional[dict]],
                 sampling: Sampling) -> None:
    """Send one request per item of todo; append make_record's records to file batch by batch."""
    # Several concurrency-widths per batch keep a remote server busy; one batch is what a kill loses.
    batch_size = max(8, 4 * ctx.cfg.llm.concurrency)
    failed = 0
    bar = tqdm(total=total, initial=total - len(todo), desc=stage, unit="inst")
    # stream: the backend keeps requests in flight across batch boundaries while a batch is written
    chunks = ctx.llm.stream([make_request(item) for item in todo], sampling, stage=stage,
                            chunk_size=batch_size)
    for start, (_, completions) in zip(range(0, len(todo), batch_size), chunks):
        batch = todo[start:start + batch_size]
        records = []
        for item, completion in zip(batch, completions):
            if completion.ok:
                records.append(make_record(item, completion))
            else:
                failed += 1
                log.warning("%s: request for %s failed: %s", stage, item["id"], completion.error)
        append_jsonl(ctx.path(file), records)
        ctx.checkpoint.commit(stage, [file], {})
        bar.update(len(batch))
    bar.close()
    if failed:
        log.warning("%s: %d requests failed; rerun with the same hydra.run.dir to retry them", stage, failed)


def skipped_for_alpaca(ctx, stage: str) -> bool:
    """With prompt=alpaca each generated task already has its input and output, so the stages
    that classify instructions and generate instances have nothing to do."""
    if ctx.cfg.prompt.name != "alpaca":
        return False
    log.info("%s: skipped: with prompt=alpaca each task comes with its input and output", stage)
    return True
