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

The window may exceed what the backend runs at once (llm.concurrency): the OpenAI backend holds the
rest at its gate, so one slow answer at the head does not stall the server. With `apply_many`,
the result waited for and the ready results right behind it are applied in one call (the
instructions stage filters them in one batched ROUGE pass); which results form a group depends on
timing, so apply_many must give what applying them one by one gives.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Optional

from tqdm import tqdm

from selfinstruct.errors import RunError
from selfinstruct.files import append_jsonl
from selfinstruct.llm.base import LLM, Completion, Request, Sampling

log = logging.getLogger(__name__)


def run_requests(llm: LLM, stage: str, params: Sampling | Callable[[Request], Sampling],
                 source: Callable[[int], Optional[Request]],
                 apply: Callable[[Request, Completion], None], *, window: int,
                 commit: Callable[[], None], commit_every: int,
                 bar: Optional[tqdm] = None,
                 apply_many: Optional[Callable[[list[tuple[Request, Completion]]], None]] = None,
                 finished: Optional[Callable[[], bool]] = None,
                 ahead: Optional[Callable[[], int]] = None) -> int:
    """Send source(0), source(1), ... (None ends the stream) and apply each completion in order;
    return the number of results applied. `apply` may tell the source to end (it returns None
    from then on); requests already in flight are still applied, so `apply` sees every result.
    `commit` runs after every commit_every results and at the end, after the fresh answers went
    to the response cache; an exception (a fatal backend error, Ctrl-C) skips the commit of the
    results since the last one, which the next run asks for again. When every request failed
    (after the backend's retries), RunError says so with the first error, after the commit: the
    run's state is kept for a rerun. A stage whose first `2 * min(window, llm.concurrency)` (at
    least 8) requests all failed stops there: the rest would fail alike (a wrong model name, a server that hangs).
    params is one Sampling for all requests, or a function of the request. apply_many, if given,
    replaces apply: it gets consecutive results in order (see the module docstring). finished, if
    given, is asked after each apply: True cancels the requests still outstanding (unsent ones are
    never sent) and ends the loop, for results the stage would ignore anyway. ahead, if given,
    bounds the outstanding requests below the window for now (the instructions stage: about what
    the target still needs); it only delays sends, so it may depend on timing."""
    outstanding: deque = deque()
    started = time.perf_counter()
    applied = since_commit = failed = 0
    first_error = None
    exhausted = stopped_early = False
    # all-failures stop: after a couple of rounds of what runs at once, not of the whole window
    fail_limit = max(8, 2 * min(window, getattr(llm, "concurrency", None) or window))
    try:
        while True:
            limit = window if ahead is None else max(1, min(window, ahead()))
            while not exhausted and len(outstanding) < limit:
                request = source(applied + len(outstanding))
                if request is None:
                    exhausted = True
                else:
                    sampling = params(request) if callable(params) else params
                    outstanding.append(llm.submit(request, sampling, stage=stage))
            if not outstanding:
                break
            group = [outstanding.popleft()]
            if apply_many is not None:
                while outstanding and len(group) < commit_every and outstanding[0].ready():
                    group.append(outstanding.popleft())
            results = [(ticket.request, ticket.result()) for ticket in group]
            for _, completion in results:
                if not completion.ok:
                    failed += 1
                    first_error = first_error or completion.error
            if apply_many is not None:
                apply_many(results)
            else:
                apply(*results[0])
            applied += len(results)
            since_commit += len(results)
            if bar is not None:
                bar.update(len(results))
            if finished is not None and finished():
                # what the backend already runs costs anyway: wait for it, so it is counted (and
                # cached, for a longer run later); the finally cancels the rest, unsent
                for ticket in outstanding:
                    if ticket.sent():
                        ticket.result()
                break
            if failed == applied >= fail_limit:
                stopped_early = True  # nothing but failures so far: stop (the rest is cancelled)
                break
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
    if applied and failed == applied:
        # (a group of ready results may pass fail_limit: the first fail_limit did fail)
        which = f"the first {fail_limit} requests all failed, so it stopped" if stopped_early \
            else f"all {applied} requests failed"
        raise RunError(f"{stage}: {which}; the first error: {first_error}. What was done before is kept: "
                       "fix the cause and rerun the same command to go on")
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


def run_items(llm: LLM, stage: str, params: Sampling | Callable[[Request], Sampling], todo: list,
              make_request: Callable[[Any], Request],
              make_record: Callable[[Any, Completion], dict], *, path, checkpoint, window: int,
              total: Optional[int] = None, desc: Optional[str] = None) -> None:
    """One request per item of todo, each answered record appended to path and committed batch by
    batch under the checkpoint key `stage` (classify, instances, evaluate answers and judgements).
    A request that still fails after the backend's retries is logged and not recorded: the next
    invocation of the same run dir asks for it again."""
    batch_size = max(8, 4 * window)  # several windows per commit; one batch is what a kill loses
    items: dict[str, Any] = {}
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
            log.warning("%s: request %s failed: %s", stage, request.id, completion.error)

    def commit() -> None:
        append_jsonl(path, records)
        records.clear()
        checkpoint.commit(stage, [path], {})

    total = len(todo) if total is None else total
    with tqdm(total=total, initial=total - len(todo), desc=desc or stage, unit="req") as bar:
        run_requests(llm, stage, params, source, apply, window=max(batch_size, 2 * window),
                     commit=commit, commit_every=batch_size, bar=bar)
    if failed:
        log.warning("%s: %d requests failed; rerun with the same hydra.run.dir to retry them", stage, failed)
