"""The API key never lands in a file under the run dir (or a sweep dir): not in Hydra's .hydra/*.yaml
or multirun.yaml, not in run.log, not in rejected.jsonl when a server quotes it back, not in W&B's
files; whether it came on the command line or from a YAML config. The runs talk to a local
OpenAI-compatible server, which checks that the key was sent all the same."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from selfinstruct.secrets import (ENV_VAR, MASK, SecretFilter, known_secrets, scrub_files,
                                  take_key_from_argv)
from tests.conftest import run_cli
from tests.fake_openai_server import FakeOpenAIServer

KEY = "sk-test-4f9c2a7e1b3d5f60a8c9e0d1b2c3d4e5"


def files_containing(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def base_args(server: FakeOpenAIServer, tmp_path: Path) -> list[str]:
    return ["llm=openai_compatible", f"llm.base_url={server.base_url}", "llm.model=m",
            "llm.max_retries=1", "llm.concurrency=4", "stages=[instructions]", "num_instructions=8",
            f"llm.cache_dir={tmp_path / 'cache'}"]


def test_key_is_taken_off_the_command_line(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    argv = ["run.py", "llm=openai", f"llm.api_key={KEY}", "num_instructions=3"]
    assert take_key_from_argv(argv) == ["run.py", "llm=openai", "num_instructions=3"]
    assert os.environ[ENV_VAR] == KEY
    for spelling in (f"+llm.api_key={KEY}x", f"++llm.api_key={KEY}y"):
        assert take_key_from_argv(["run.py", spelling]) == ["run.py"]
        assert os.environ[ENV_VAR] == spelling.split("=", 1)[1]
    assert take_key_from_argv(["run.py", "llm.api_key_file=x"]) == ["run.py", "llm.api_key_file=x"]


def test_log_filter_masks_messages_arguments_and_tracebacks(monkeypatch):
    monkeypatch.setenv(ENV_VAR, KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(known_secrets()))
    logger = logging.getLogger("test_secrets")
    logger.addHandler(handler)
    try:
        logger.warning("key in the message %s", KEY)
        logger.warning(f"key in an f-string {KEY}")
        try:
            raise RuntimeError(f"server said: bad key {KEY}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert KEY not in text
    assert text.count(MASK) == 3 and "RuntimeError" in text


def test_short_placeholders_are_not_treated_as_secrets(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "EMPTY")  # vLLM's convention for "no key"
    assert known_secrets() == []


def test_scrub_files_masks_only_the_files_holding_a_secret(tmp_path):
    holding, clean = tmp_path / "a.yaml", tmp_path / "b.yaml"
    holding.write_text(f"llm:\n  api_key: {KEY}\n")
    clean.write_text("llm:\n  api_key: null\n")
    assert scrub_files([holding, clean], [KEY]) == [holding]
    assert holding.read_text() == f"llm:\n  api_key: {MASK}\n"
    assert clean.read_text() == "llm:\n  api_key: null\n"


def test_key_on_the_command_line_reaches_the_server_and_no_file(tmp_path):
    run_dir = tmp_path / "run"
    # the server rejects the first request quoting the key, as OpenAI does for a wrong one
    with FakeOpenAIServer(faults=("401",), fail_first=1) as server:
        result = run_cli([*base_args(server, tmp_path), f"llm.api_key={KEY}", "tracking=wandb",
                          "llm.concurrency=1", f"hydra.run.dir={run_dir}"],
                         env={"WANDB_MODE": "offline"}, timeout=240)
        stats, auth = server.stats(), server.auth_headers
    assert result.returncode == 0, result.stderr[-3000:]
    assert auth == {f"Bearer {KEY}"}
    assert stats["401"] == 1  # the server did quote the key back
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "run.log").exists()
    assert "request_error" in (run_dir / "rejected.jsonl").read_text()
    assert files_containing(run_dir, KEY) == []
    assert KEY not in result.stdout + result.stderr


def test_sweep_with_the_key_on_the_command_line_leaves_it_nowhere(tmp_path):
    sweep_dir = tmp_path / "sweep"
    with FakeOpenAIServer() as server:
        result = run_cli(["-m", *base_args(server, tmp_path), f"llm.api_key={KEY}", "tracking=none",
                          "filters.rouge_threshold=0.6,0.7", f"hydra.sweep.dir={sweep_dir}"], timeout=240)
        auth = server.auth_headers
    assert result.returncode == 0, result.stderr[-3000:]
    assert auth == {f"Bearer {KEY}"}
    assert (sweep_dir / "multirun.yaml").exists() and (sweep_dir / "1" / "stats.json").exists()
    assert files_containing(sweep_dir, KEY) == []


def test_key_in_a_yaml_config_is_masked_in_hydra_files(tmp_path):
    """A key written into a config file (a user's own llm option) is copied by Hydra into
    .hydra/config.yaml and the sweep's multirun.yaml before our code runs; we mask it there."""
    conf = tmp_path / "myconf"
    (conf / "llm").mkdir(parents=True)
    (conf / "llm" / "mine.yaml").write_text(
        f"defaults:\n  - openai_compatible\n  - _self_\napi_key: {KEY}\n")
    sweep_dir = tmp_path / "sweep"
    with FakeOpenAIServer() as server:
        result = run_cli(["-m", f"--config-dir={conf}", "llm=mine", *base_args(server, tmp_path)[1:],
                          "tracking=none", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"], timeout=240)
        auth = server.auth_headers
    assert result.returncode == 0, result.stderr[-3000:]
    assert auth == {f"Bearer {KEY}"}
    assert f"api_key: '{MASK}'" in (sweep_dir / "0" / ".hydra" / "config.yaml").read_text() \
        or f"api_key: {MASK}" in (sweep_dir / "0" / ".hydra" / "config.yaml").read_text()
    assert files_containing(sweep_dir, KEY) == []
