"""The OpenAI-compatible backend against a local server (tests/fake_openai_server.py): requests in
flight, order of results, retries on every transient fault, errors counted and never raised, the
rate limiter, and the response cache (keys, errors not stored, several processes writing at once);
finally a whole run with 20% injected faults."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time

import pytest

from selfinstruct.llm.base import Completion, Request, Sampling
from selfinstruct.llm.cache import ResponseCache
from selfinstruct.llm.openai_backend import OpenAILLM, RateLimiter
from tests.conftest import run_cli
from tests.fake_openai_server import FAULT_KINDS, FakeOpenAIServer

KEY = "sk-test-backend-0123456789"


def echo_answer(prompt: str, body: dict) -> str:
    return f" answer to <{prompt}>"


def make_llm(server, **kw) -> OpenAILLM:
    options = dict(model="test-model", base_url=server.base_url, api_key=KEY, concurrency=8,
                   max_retries=3, timeout_s=0.5, backoff_base_s=0.01, backoff_max_s=0.05)
    options.update(kw)
    return OpenAILLM(**options)


def requests(n: int, stage: str = "classify") -> list[Request]:
    return [Request(f"{stage}/{i}", f"prompt {i}") for i in range(n)]


def test_keeps_concurrency_requests_in_flight_and_returns_them_in_order():
    with FakeOpenAIServer(latency_s=0.2, answer=echo_answer) as server:
        llm = make_llm(server, concurrency=8)
        llm.complete([Request("warm/0", "")], Sampling(), stage="warm")  # imports openai, connects
        started = time.perf_counter()
        out = llm.complete(requests(24), Sampling(max_tokens=50), stage="classify")
        elapsed = time.perf_counter() - started
        llm.close()
        stats = server.stats()
    assert [c.text for c in out] == [f" answer to <prompt {i}>" for i in range(24)]
    assert stats["max_in_flight"] == 8
    assert elapsed < 3 * 0.2 + 0.6  # 3 waves of 8; one at a time would take 4.8 s
    assert llm.usage["classify"].requests == 24 and llm.usage["classify"].retries == 0


def test_the_loop_keeps_requests_in_flight_across_commits_and_applies_them_in_order(tmp_path):
    from selfinstruct.llm.loop import run_requests

    with FakeOpenAIServer(latency_s=0.2, answer=echo_answer) as server:
        llm = make_llm(server, concurrency=8, cache=ResponseCache(tmp_path / "c.sqlite"))
        llm.complete([Request("warm/0", "")], Sampling(), stage="warm")
        llm.complete(requests(16)[5:7], Sampling(), stage="x")  # two answers already cached
        batch, applied, commits = requests(16), [], []
        started = time.perf_counter()
        run_requests(llm, "x", Sampling(), lambda k: batch[k] if k < len(batch) else None,
                     lambda r, c: applied.append((r.id, c)), window=8,
                     commit=lambda: commits.append(len(applied)), commit_every=4)
        elapsed = time.perf_counter() - started
        stats = server.stats()
        llm.close()
    assert [rid for rid, _ in applied] == [f"classify/{i}" for i in range(16)]
    assert [c.text for _, c in applied] == [f" answer to <prompt {i}>" for i in range(16)]
    assert [c.cached for _, c in applied] == [i in (5, 6) for i in range(16)]
    assert commits == [4, 8, 12, 16, 16]  # every 4 results and once at the end
    # not 4: requests after a commit were already on their way (7 or 8, as the answers to 0..4 and
    # 7 race the sends of 8..15)
    assert stats["max_in_flight"] >= 7
    assert elapsed < 2 * 0.2 + 0.3  # 14 requests in 2 waves; commit by commit would take 4 waves
    assert llm.usage["x"].requests == 2 + 14 and llm.usage["x"].cache_hits == 2


def test_a_loop_that_stops_cancels_the_requests_not_yet_sent():
    from selfinstruct.llm.loop import run_requests

    class Stop(Exception):
        pass

    def apply(request, completion):
        raise Stop  # e.g. the stage raised, or Ctrl-C

    batch, commits = requests(200), []
    with FakeOpenAIServer(latency_s=0.05, answer=echo_answer) as server:
        llm = make_llm(server, concurrency=4)
        with pytest.raises(Stop):
            run_requests(llm, "x", Sampling(), lambda k: batch[k] if k < len(batch) else None, apply,
                         window=8, commit=lambda: commits.append(1), commit_every=4)
        time.sleep(0.3)
        stats = server.stats()
        llm.close()
    assert commits == []  # nothing half-applied is committed
    assert stats["requests"] <= 8 + 4  # the window, and a few that were in flight when it stopped


def test_chat_endpoint():
    with FakeOpenAIServer(answer=echo_answer) as server:
        llm = make_llm(server, endpoint="chat")
        out = llm.complete([Request("x/0", "hello there")], Sampling(), stage="x")
        llm.close()
    assert out[0].ok and out[0].text == " answer to <hello there>"


@pytest.mark.parametrize("fault", FAULT_KINDS)
def test_each_transient_fault_is_retried_and_counted(fault):
    with FakeOpenAIServer(faults=(fault,), fail_first=2, slow_s=1.0, answer=echo_answer) as server:
        llm = make_llm(server, timeout_s=0.3)
        out = llm.complete(requests(1), Sampling(), stage="classify")
        llm.close()
        stats = server.stats()
    assert out[0].ok and out[0].text == " answer to <prompt 0>"
    assert stats["requests"] == 3 and stats[fault] == 2
    usage = llm.usage["classify"]
    assert (usage.retries, usage.errors, usage.requests) == (2, 0, 1)


def test_a_request_failing_every_attempt_comes_back_as_an_error_not_an_exception():
    with FakeOpenAIServer(faults=("500",), fault_rate=1.0) as server:
        llm = make_llm(server, max_retries=2)
        out = llm.complete(requests(2), Sampling(), stage="classify")
        llm.close()
        stats = server.stats()
    assert [c.finish_reason for c in out] == ["error", "error"]
    assert "InternalServerError" in out[0].error
    assert stats["requests"] == 2 * 3  # one try + 2 retries each
    usage = llm.usage["classify"]
    assert (usage.retries, usage.errors) == (4, 2)


def test_a_rejected_key_is_not_retried_and_not_quoted():
    with FakeOpenAIServer(faults=("401",), fault_rate=1.0) as server:
        llm = make_llm(server)
        out = llm.complete(requests(1), Sampling(), stage="classify")
        llm.close()
        stats = server.stats()
    assert stats["requests"] == 1
    assert not out[0].ok and "AuthenticationError" in out[0].error
    assert KEY not in out[0].error and "***" in out[0].error  # the server quoted it; we masked it


def test_connections_are_reused_between_batches():
    with FakeOpenAIServer(answer=echo_answer) as server:
        llm = make_llm(server, concurrency=4)
        for batch in range(3):
            llm.complete(requests(4, stage=f"b{batch}"), Sampling(), stage="x")
        client = llm._state[0]
        llm.close()
    assert client.is_closed()
    assert llm._runner is None


def test_complete_works_inside_a_running_event_loop():
    """Notebooks run an event loop in the main thread; asyncio.run would fail there."""
    with FakeOpenAIServer(answer=echo_answer) as server:
        llm = make_llm(server)

        async def inside():
            return llm.complete(requests(2), Sampling(), stage="x")

        out = asyncio.run(inside())
        llm.close()
    assert [c.text for c in out] == [" answer to <prompt 0>", " answer to <prompt 1>"]


def test_rate_limiter_spaces_requests_per_window():
    async def go() -> float:
        limiter = RateLimiter(requests_per_minute=4, tokens_per_minute=None)
        limiter.WINDOW_S = 0.3  # a short window keeps the test fast; the logic is the same
        started = time.monotonic()
        await asyncio.gather(*(limiter.wait(10) for _ in range(9)))
        return time.monotonic() - started

    elapsed = asyncio.run(go())
    assert 0.6 <= elapsed < 1.2  # 4 now, 4 after one window, 1 after two


def test_token_budget_holds_back_requests():
    async def go() -> float:
        limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=100)
        limiter.WINDOW_S = 0.3
        started = time.monotonic()
        await asyncio.gather(*(limiter.wait(60) for _ in range(3)))  # 60 tokens: one per window
        return time.monotonic() - started

    assert 0.6 <= asyncio.run(go()) < 1.2


# -- response cache ------------------------------------------------------------------------------

def test_cache_serves_answers_and_never_stores_errors(tmp_path):
    with FakeOpenAIServer(faults=("500",), fail_first=4, answer=echo_answer) as server:
        llm = make_llm(server, max_retries=0, cache=ResponseCache(tmp_path / "c.sqlite"))
        first = llm.complete(requests(8), Sampling(), stage="x")
        assert sum(not c.ok for c in first) == 4
        second = llm.complete(requests(8), Sampling(), stage="x")
        llm.close()
        stats = server.stats()
    assert all(c.ok for c in second)
    assert stats["requests"] == 8 + 4  # the rerun asked only for the 4 that had failed
    assert [c.cached for c in second] == [c.ok for c in first]
    assert llm.usage["x"].cache_hits == 4 and llm.usage["x"].errors == 4


def test_cache_key_separates_everything_that_changes_the_answer(tmp_path):
    with FakeOpenAIServer() as server:
        base = make_llm(server)
        request, params = Request("x/0", "p"), Sampling(temperature=0.7)
        key = base._cache_key(request, params)
        variants = [
            make_llm(server, model="other")._cache_key(request, params),
            make_llm(server, endpoint="chat")._cache_key(request, params),
            make_llm(server, seed=1)._cache_key(request, params),
            base._cache_key(Request("x/1", "p"), params),
            base._cache_key(Request("x/0", "q"), params),
            base._cache_key(request, Sampling(temperature=0.8)),
            base._cache_key(request, Sampling(temperature=0.7, stop=("\n",))),
        ]
    from selfinstruct.llm.cache import key_hash

    hashes = {key_hash(k) for k in [key, *variants]}
    assert len(hashes) == 1 + len(variants)
    assert key_hash(key) == key_hash(make_llm(server)._cache_key(request, params))


def _writer(path: str, worker: int, rounds: int) -> None:
    cache = ResponseCache(path)
    for r in range(rounds):
        # every worker writes its own keys and a shared one, in small transactions, as jobs do
        items = [({"k": f"w{worker}/r{r}/{i}"}, Completion(f"text {worker} {r} {i}", "stop", 1, 2))
                 for i in range(5)]
        items.append(({"k": f"shared/{r}"}, Completion(f"shared {r}", "stop")))
        cache.put_many(items)
        assert cache.get_many([items[0][0]])[0].text == items[0][1].text
    cache.close()


def test_cache_is_safe_for_several_processes_writing_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    workers, rounds = 6, 40
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, rounds)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    cache = ResponseCache(path)
    assert len(cache) == workers * rounds * 5 + rounds
    got = cache.get_many([{"k": f"w{w}/r{r}/3"} for w in range(workers) for r in range(rounds)])
    assert [c.text for c in got] == [f"text {w} {r} 3" for w in range(workers) for r in range(rounds)]
    assert all(c.cached and c.completion_tokens == 2 for c in got)
    cache.close()


def test_an_unreadable_cache_file_fails_naming_it_and_the_way_out(tmp_path):
    from selfinstruct.llm.cache import CacheError

    bad = tmp_path / "responses.sqlite"
    bad.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(CacheError, match="llm.cache=false") as info:
        ResponseCache(bad)
    assert str(bad) in str(info.value)


# -- a whole run with faults -----------------------------------------------------------------------

def test_run_with_20_percent_faults_completes_counting_retries_and_errors(tmp_path):
    """20% of arrivals fail (429, 500, bad JSON, dropped connection, too slow). With one retry
    about 4% of requests still fail for good: they are counted as errors in stats.json, recorded
    (instructions: request_error in rejected.jsonl) or left undone (classify, instances), and the
    run completes all the same. A rerun of the same run dir then does exactly the missing work."""
    run_dir = tmp_path / "run"
    args = ["llm=openai_compatible", "llm.model=m", "llm.max_retries=1", "llm.timeout_s=1",
            "llm.concurrency=8", "tracking=none", "stages=[instructions,classify,instances,prepare]",
            "num_instructions=60", f"llm.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    with FakeOpenAIServer(fault_rate=0.2, slow_s=1.5, seed=3) as server:
        result = run_cli([*args, f"llm.base_url={server.base_url}"], timeout=240)
        arrivals = server.stats()
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((run_dir / "stats.json").read_text())
    stages = ("instructions", "classify", "instances")
    retries = sum(stats[f"cost/{s}/retries"] for s in stages)
    errors = sum(stats[f"cost/{s}/errors"] for s in stages)
    faults = arrivals["requests"] - arrivals["ok"]
    assert faults > 0 and retries > 0
    # every fault was retried or, on a request's last attempt, counted as its error
    assert retries + errors == faults
    assert sum(stats[f"cost/{s}/requests"] for s in stages) == arrivals["ok"] + errors
    rejected = [json.loads(line) for line in (run_dir / "rejected.jsonl").read_text().splitlines()]
    assert sum(r["rule"] == "request_error" for r in rejected) == stats["cost/instructions/errors"]
    assert stats["generation/num_accepted"] == 60
    classified = (run_dir / "classification.jsonl").read_text().count("\n")
    assert classified + stats["cost/classify/errors"] == 60  # a failed item is not marked done

    # the rerun (a healthy server now) asks only for what failed, and completes every item
    with FakeOpenAIServer() as server:
        result = run_cli([*args, f"llm.base_url={server.base_url}"], timeout=240)
        again = server.stats()["requests"]
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "classification.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"machine_task_{i}" for i in range(60))
    final = json.loads((run_dir / "stats.json").read_text())
    assert again == final["cost/total/requests"] - stats["cost/total/requests"]
    # failed classify items: classify + instances now; failed instances items: instances again
    assert again == 2 * stats["cost/classify/errors"] + stats["cost/instances/errors"]
