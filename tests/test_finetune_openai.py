"""`finetune.backend=openai` against the local stub (tests/openai_finetune_stub.py): file formats
for completion and chat models, hyperparameters sent, the model id and statistics returned; resume
after a kill at each step without a second upload or job; failed and cancelled jobs; retries of
transient faults; the key never in error text, tracebacks or logs; config checks."""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import replace

import pytest

from selfinstruct.errors import ConfigError
from selfinstruct.training.openai_finetune import (
    OpenAIFinetuneConfig, OpenAIFinetuneError, OpenAIFinetuneTimeout, finetune_openai, training_format,
    validate)
from tests.openai_finetune_stub import OpenAIFinetuneStub

KEY = "sk-test-finetune-0123456789abcdef"
PAIRS = [{"prompt": f"Task: Add {i} and {i}.\nOutput:", "completion": f" {2 * i}<|endoftext|>"}
         for i in range(12)]
FAST = OpenAIFinetuneConfig(model="davinci-002", poll_interval_s=0.001, timeout_s=30)


class Killed(Exception):
    """Stands in for kill -9 at a chosen point."""


def run(stub, cfg=FAST, pairs=PAIRS, **kw):
    options = dict(api_key=KEY, base_url=stub.base_url, max_retries=3, backoff_base_s=0.001,
                   backoff_max_s=0.01, request_timeout_s=5, progress=False)
    options.update(kw)
    return finetune_openai(pairs, cfg, **options)


def keep(state: dict):
    """save_state that replaces `state` with what is saved, as a file on disk would."""
    return lambda saved: (state.clear(), state.update(saved))


def lines(stub, file_id):
    return [json.loads(line) for line in stub.file_content(file_id).decode().splitlines()]


def test_completion_model_gets_prompt_completion_file_and_paper_hyperparameters():
    saved = []
    with OpenAIFinetuneStub(polls=4) as stub:
        result = run(stub, replace(FAST, suffix="selfinstruct"), save_state=saved.append, seed=7)
        records = lines(stub, result.file_id)
        assert records == [{"prompt": p["prompt"], "completion": p["completion"]} for p in PAIRS]
        body = stub.job_requests[0]
        assert body["model"] == "davinci-002" and body["training_file"] == result.file_id
        assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
        assert body["suffix"] == "selfinstruct" and body["seed"] == 7
        assert stub.auth_headers == {f"Bearer {KEY}"}
        assert (stub.files_created, stub.jobs_created) == (1, 1)
        assert stub.calls["jobs.retrieve"] == 4  # queued, running, running, succeeded
    assert result.model_id == "ft:davinci-002:org::0001" and result.status == "succeeded"
    assert result.trained_tokens == 2 * sum(len((p["prompt"] + p["completion"]).split()) for p in PAIRS)
    assert result.seconds == 42.0  # the job's own duration, from its timestamps
    assert result.final_loss == 0.25 and result.steps == 6
    stats = result.stats()
    assert stats["cost/finetune/tokens"] == result.trained_tokens and stats["finetune/final_loss"] == 0.25
    assert stats["cost/finetune/tokens_per_s"] == pytest.approx(result.trained_tokens / 42)
    # saved after each step: file, job tag, job, result
    assert [sorted(k for k in s if k != "failed_jobs") for s in saved] == [
        ["file_id", "file_sha256", "format"],
        ["file_id", "file_sha256", "format", "job_spec", "job_tag"],
        ["file_id", "file_sha256", "format", "job_id", "job_spec", "job_tag"],
        ["file_id", "file_sha256", "fine_tuned_model", "format", "job_id", "job_spec", "job_tag"]]
    assert saved[-1]["job_id"] == result.job_id and saved[-1]["fine_tuned_model"] == result.model_id
    json.dumps(saved[-1])  # JSON-able, for the stage to write to disk


def test_chat_model_gets_messages_file_without_the_end_token_and_optional_hyperparameters(capsys):
    cfg = replace(FAST, model="gpt-4o-mini-2024-07-18", n_epochs=3, batch_size=4,
                  learning_rate_multiplier=0.5)
    with OpenAIFinetuneStub() as stub:
        result = run(stub, cfg, progress=True)
        records = lines(stub, result.file_id)
        hp = stub.job_requests[0]["method"]["supervised"]["hyperparameters"]
    assert records[3] == {"messages": [{"role": "user", "content": PAIRS[3]["prompt"]},
                                       {"role": "assistant", "content": "6"}]}
    assert len(records) == len(PAIRS)
    assert hp == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert "suffix" not in stub.job_requests[0] and "seed" not in stub.job_requests[0]  # unset: not sent
    assert result.model_id == "ft:gpt-4o-mini-2024-07-18:org::0001"
    progress = capsys.readouterr().err  # the progress line: job, steps, status, loss
    assert "finetune ftjob-0001" in progress and "6/6" in progress and "succeeded loss=0.2500" in progress


def test_format_rule_and_override():
    assert training_format("davinci-002") == training_format("babbage-002") == "completion"
    assert training_format("ft:davinci-002:org::abc") == "completion"  # continue a fine-tuned model
    assert training_format("gpt-4o-mini-2024-07-18") == "chat"
    assert training_format("ft:gpt-4o-mini-2024-07-18:org::x") == "chat"
    assert training_format("gpt-4o-mini-2024-07-18", "completion") == "completion"
    assert training_format("davinci-002", "chat") == "chat"
    # a wrong override reaches the service, whose file validation fails the job
    with OpenAIFinetuneStub() as stub, pytest.raises(OpenAIFinetuneError, match="Invalid file format"):
        run(stub, replace(FAST, format="chat"))


def test_killed_after_job_created_resumes_the_same_job():
    state = {}

    def save_then_die(s):
        state.clear(), state.update(s)
        if "job_id" in s:
            raise Killed

    with OpenAIFinetuneStub(polls=3) as stub:
        with pytest.raises(Killed):
            run(stub, save_state=save_then_die)
        assert (stub.files_created, stub.jobs_created, stub.calls["jobs.retrieve"]) == (1, 1, 0)
        result = run(stub, state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 1)  # no second upload, no second job
        assert stub.calls["files.create"] == 1 and stub.calls["jobs.create"] == 1
        assert stub.calls["jobs.retrieve"] == 3  # the same job, polled to success
    assert result.job_id == "ftjob-0001" and result.model_id == "ft:davinci-002:org::0001"


def test_timeout_mid_poll_then_resume_polls_the_same_job():
    state = {}
    with OpenAIFinetuneStub(polls=50) as stub:
        short = replace(FAST, timeout_s=0.05, poll_interval_s=0.01)
        with pytest.raises(OpenAIFinetuneTimeout, match=r"ftjob-0001 still \w+ after 0.05 s .*run again"):
            run(stub, short, state=state, save_state=keep(state))
        polled = stub.calls["jobs.retrieve"]
        assert 1 <= polled < 50 and state["job_id"] == "ftjob-0001"
        result = run(stub, state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 1)
        assert stub.calls["jobs.retrieve"] == 50
        # a finished job in the state: one retrieve, the same answer, nothing new
        again = run(stub, state=state)
        assert (stub.files_created, stub.jobs_created, stub.calls["jobs.retrieve"]) == (1, 1, 51)
    assert result.job_id == "ftjob-0001" and result.status == "succeeded"
    assert again.model_id == result.model_id


def test_killed_after_upload_reuses_the_file():
    state = {}

    def save_then_die(s):
        state.clear(), state.update(s)
        if "file_id" in s:
            raise Killed

    with OpenAIFinetuneStub() as stub:
        with pytest.raises(Killed):
            run(stub, save_state=save_then_die)
        assert (stub.files_created, stub.jobs_created) == (1, 0)
        result = run(stub, state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 1)
        assert stub.calls["files.retrieve"] == 1  # checked it still exists
    assert result.file_id == "file-0001"


def test_job_created_but_its_id_never_saved_is_found_by_its_tag():
    state = {}

    def save_but_lose_job_id(s):
        if "job_id" in s:
            raise Killed  # died before the id was written
        state.clear(), state.update(s)

    with OpenAIFinetuneStub() as stub:
        with pytest.raises(Killed):
            run(stub, save_state=save_but_lose_job_id)
        assert stub.jobs_created == 1 and "job_id" not in state and "job_tag" in state
        result = run(stub, state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 1)
        assert stub.calls["jobs.list"] == 1
    assert result.job_id == "ftjob-0001"


def test_lost_create_response_does_not_start_a_second_job():
    with OpenAIFinetuneStub() as stub:
        stub.inject("jobs.create", "drop_after")  # the job exists, the client never hears of it
        result = run(stub)
        assert stub.jobs_created == 1 and stub.calls["jobs.create"] == 1 and stub.calls["jobs.list"] == 1
    assert result.job_id == "ftjob-0001" and result.retries == 1


def test_changed_data_or_settings_start_afresh():
    state = {}
    with OpenAIFinetuneStub() as stub:
        first = run(stub, state=state, save_state=keep(state))
        second = run(stub, replace(FAST, n_epochs=3), state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 2)  # same file, new job
        third = run(stub, pairs=PAIRS[:10], state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (2, 3)
    assert len({first.job_id, second.job_id, third.job_id}) == 3


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_failed_or_cancelled_job_is_one_clear_line_and_a_rerun_starts_a_new_job(outcome):
    state = {}
    with OpenAIFinetuneStub(outcome=outcome) as stub:
        with pytest.raises(OpenAIFinetuneError) as info:
            run(stub, state=state, save_state=keep(state))
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"fine-tuning job ftjob-0001 {outcome}: ")
        if outcome == "failed":
            assert message.endswith("Training failed: the training loss diverged. (training_failed)")
        assert "job_id" not in state and state["failed_jobs"] == ["ftjob-0001"]
        with pytest.raises(OpenAIFinetuneError, match="ftjob-0002"):
            run(stub, state=state, save_state=keep(state))
        assert (stub.files_created, stub.jobs_created) == (1, 2)


def test_transient_faults_are_retried_at_every_step():
    with OpenAIFinetuneStub() as stub:
        stub.inject("files.create", 500, 429)
        stub.inject("jobs.create", 503, "drop")
        stub.inject("jobs.retrieve", 500, "drop", 502)
        stub.inject("jobs.events", 500)  # progress only: skipped, never fatal
        result = run(stub)
        assert (stub.files_created, stub.jobs_created) == (1, 1)
        assert stub.calls["files.create"] == 3
    assert result.model_id == "ft:davinci-002:org::0001" and result.retries == 7


def test_key_never_in_errors_tracebacks_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    with OpenAIFinetuneStub() as stub:
        stub.inject("jobs.retrieve", *[500] * 4)  # the server quotes the key; retries run out
        with pytest.raises(OpenAIFinetuneError) as exhausted:
            run(stub)
        stub.inject("files.create", 401)  # not retried: the same key gets the same answer
        with pytest.raises(OpenAIFinetuneError) as rejected:
            run(stub)
        assert stub.calls["files.create"] == 2  # one from each run
    assert "after 4 attempts" in str(exhausted.value) and "InternalServerError" in str(exhausted.value)
    assert "AuthenticationError" in str(rejected.value) and "***" in str(rejected.value)
    for info in (exhausted, rejected):
        text = "".join(traceback.format_exception(info.value))
        assert KEY not in text and info.value.__cause__ is None
    assert "***" in caplog.text and KEY not in caplog.text


def test_too_few_or_malformed_pairs_fail_before_any_request():
    with OpenAIFinetuneStub() as stub:
        with pytest.raises(OpenAIFinetuneError, match="at least 10 examples, got 3"):
            run(stub, pairs=PAIRS[:3])
        with pytest.raises(OpenAIFinetuneError, match="training pair 1 needs string"):
            run(stub, pairs=[PAIRS[0], {"prompt": "x"}] + PAIRS[2:])
        assert sum(stub.calls.values()) == 0


@pytest.mark.parametrize("key, value, message", [
    ("model", "", "name the model"),
    ("n_epochs", 0, r"\[1, 50\], got 0"),
    ("n_epochs", 51, "got 51"),
    ("batch_size", 0, ">= 1 or null"),
    ("learning_rate_multiplier", -1.0, "> 0 or null"),
    ("suffix", "x" * 65, "1 to 64 characters"),
    ("format", "jsonl", "auto"),
    ("poll_interval_s", 0.0, "> 0"),
    ("timeout_s", -1.0, "> 0"),
])
def test_config_checks_name_the_key(key, value, message):
    validate(OpenAIFinetuneConfig())  # the defaults pass
    with pytest.raises(ConfigError, match=rf"`finetune\.openai\.{key}`: .*{message}"):
        validate(replace(OpenAIFinetuneConfig(), **{key: value}))


def test_defaults_follow_the_paper():
    cfg = OpenAIFinetuneConfig()
    assert (cfg.model, cfg.n_epochs, cfg.batch_size, cfg.learning_rate_multiplier, cfg.format) == \
        ("davinci-002", 2, None, None, "auto")
