"""The one request loop every stage that asks the model shares (instructions, classify, instances,
the data judge, evaluate).

It keeps up to `window` requests submitted ahead of the result it waits for, applies results
strictly in request order, and commits every `commit_every` results (the stage appends its
buffered records and records the checkpoint), so the server never idles while results are
applied, a killed run loses at most the uncommitted results, and a run is a function of the
answers, never of their timing.

A request may depend on earlier results (the bootstrap pool of the instructions stage): the loop
asks `source(k)` for request k only when fewer than `window` requests are outstanding, that is
once the results of requests 0..k-window have been applied, and the source decides what request k
sees from that fixed rule (see generation/instructions.py), not from how many answers came back.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

from tqdm import tqdm

from selfinstruct.llm.base import LLM, Completion, Request, Sampling


WAIT = object()  # from source(k): request k is not ready until more results are applied


def run_requests(llm: LLM, stage: str, params: Sampling, source: Callable[[int], Optional[Request]],
                 apply: Callable[[Request, Completion], None], *, window: int,
                 commit: Callable[[], None], commit_every: int,
                 bar: Optional[tqdm] = None) -> int:
    """Send source(0), source(1), ... (None ends the stream) and apply each completion in order;
    return the number of results applied. `apply` may tell the source to end (it returns None
    from then on); requests already in flight are still applied, so `apply` sees every result.
    `commit` runs after every commit_every results and at the end, after the fresh answers went
    to the response cache; an exception (a fatal backend error, Ctrl-C) skips the commit of the
    results since the last one, which the next run asks for again."""
    outstanding: deque = deque()
    started = time.perf_counter()
    applied = since_commit = 0
    exhausted = False
    try:
        while True:
            while not exhausted and len(outstanding) < window:
                request = source(applied + len(outstanding))
                if request is WAIT:
                    if not outstanding:
                        raise RuntimeError(f"{stage}: the request source waits with nothing in flight")
                    break
                if request is None:
                    exhausted = True
                else:
                    outstanding.append(llm.submit(request, params, stage=stage))
            if not outstanding:
                break
            ticket = outstanding.popleft()
            apply(ticket.request, ticket.result())
            applied += 1
            since_commit += 1
            if bar is not None:
                bar.update(1)
            if since_commit >= commit_every:
                llm.flush_cache()
                commit()
                since_commit = 0
        llm.flush_cache()
        commit()
    finally:
        for ticket in outstanding:
            ticket.cancel()
        llm.stage_usage(stage).seconds += time.perf_counter() - started
    return applied


def answer_all(llm: LLM, stage: str, params: Sampling, requests: list[Request], *, window: int,
               desc: Optional[str] = None) -> list[Completion]:
    """Completions of independent requests in order, through the same loop (with a progress bar),
    for stages that keep their results in memory until the end (the data judge)."""
    out: list[Completion] = []
    with tqdm(total=len(requests), desc=desc or stage, unit="req") as bar:
        run_requests(llm, stage, params, lambda k: requests[k] if k < len(requests) else None,
                     lambda _, completion: out.append(completion), window=window,
                     commit=lambda: None, commit_every=max(1, len(requests)), bar=bar)
    return out
