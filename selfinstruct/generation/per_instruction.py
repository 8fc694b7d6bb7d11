"""What the stages that send one request per machine instruction share (classify, instances): skip
the stage when the prompt style makes it unnecessary; the requests themselves go through
llm.loop.run_items, which skips nothing it has and commits batch by batch."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def skipped(ctx, stage: str) -> bool:
    if stage not in ctx.style.skips:
        return False
    log.info("%s: skipped: with prompt=%s each task comes with its input and output", stage, ctx.cfg.prompt.name)
    return True
