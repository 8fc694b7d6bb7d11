"""What the stages that send one request per machine instruction share (classify, instances): skip
the stage when the prompt style makes it unnecessary, skip ids already in the output file, send the
rest through the shared request loop, append and commit the records batch by batch, so a killed or
extended run redoes nothing it has.

A request that still fails after the backend's retries is not recorded: the next invocation of the
same run dir asks for it again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from selfinstruct.files import append_jsonl
from selfinstruct.llm import Completion, Request, Sampling
from selfinstruct.llm.loop import run_requests

log = logging.getLogger(__name__)


def skipped(ctx, stage: str) -> bool:
    if stage not in ctx.style.skips:
        return False
    log.info("%s: skipped: with prompt=%s each task comes with its input and output", stage, ctx.cfg.prompt.name)
    return True


def run_per_instruction(ctx, stage: str, path: Path, todo: list[dict], total: int,
                        make_request: Callable[[dict], Request],
                        make_record: Callable[[dict, Completion], Optional[dict]],
                        sampling: Sampling) -> None:
    """Send one request per item of todo; append make_record's records to path batch by batch."""
    # Several concurrency-widths in flight keep a remote server busy; one batch is what a kill loses.
    width = ctx.cfg.llm.concurrency
    batch_size = max(8, 4 * width)
    items = {}  # request id -> item
    records: list[dict] = []
    failed = 0

    def source(k: int) -> Optional[Request]:
        if k >= len(todo):
            return None
        request = make_request(todo[k])
        items[request.id] = todo[k]
        return request

    def apply(request: Request, completion: Completion) -> None:
        nonlocal failed
        item = items.pop(request.id)
        if completion.ok:
            records.append(make_record(item, completion))
        else:
            failed += 1
            log.warning("%s: request for %s failed: %s", stage, item["id"], completion.error)

    def commit() -> None:
        append_jsonl(path, records)
        records.clear()
        ctx.checkpoint.commit(stage, [path], {})

    with tqdm(total=total, initial=total - len(todo), desc=stage, unit="inst") as bar:
        run_requests(ctx.llm, stage, sampling, source, apply, window=max(batch_size, 2 * width),
                     commit=commit, commit_every=batch_size, bar=bar)
    if failed:
        log.warning("%s: %d requests failed; rerun with the same hydra.run.dir to retry them", stage, failed)
