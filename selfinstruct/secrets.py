"""Keeping the API key (`llm.api_key`, default OPENAI_API_KEY) out of everything a run writes.

Three layers, because Hydra writes .hydra/config.yaml, hydra.yaml (with the command-line overrides
and `override_dirname`), overrides.yaml and a sweep's multirun.yaml before our code runs:

1. `take_key_from_argv` (run.py, before Hydra starts) removes `llm.api_key=...` from the command
   line and keeps the value in this process's environment (SELFINSTRUCT_API_KEY), so Hydra never
   sees it. Sweep jobs (joblib, submitit) inherit the environment. W&B, which records sys.argv,
   sees the cleaned command line too.
2. `protect_run` masks every known key in log records (run.log, console) and in the files Hydra
   wrote, which still matters when a key sits in a YAML file of conf/ or an experiment.
3. `to_plain` (config.py) drops the key from the config that goes to W&B and to outputs, and the
   OpenAI backend masks it in error texts that end up in rejected.jsonl.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional

ENV_VAR = "SELFINSTRUCT_API_KEY"
KEY = "llm.api_key"
MASK = "***"
# Placeholders such as "EMPTY" (vLLM's convention) are not secrets, and masking a very short
# string would mangle unrelated text.
MIN_SECRET_LEN = 8


def take_key_from_argv(argv: list[str]) -> list[str]:
    """argv without `llm.api_key=V` (also `+llm.api_key=V`, `++llm.api_key=V`); V goes to ENV_VAR."""
    kept = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+") == KEY:
            if value and value != "null":
                os.environ[ENV_VAR] = value
            continue
        kept.append(arg)
    return kept


def api_key_of(llm_cfg) -> Optional[str]:
    """The key to send for an `llm` node: its api_key, else the command line's, else OPENAI_API_KEY."""
    return llm_cfg.get("api_key") or os.environ.get(ENV_VAR) or os.environ.get("OPENAI_API_KEY")


def known_secrets(cfg=None) -> list[str]:
    values = [os.environ.get(ENV_VAR), os.environ.get("OPENAI_API_KEY")]
    if cfg is not None:
        values.append(cfg.llm.get("api_key"))
    return sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Masks secrets in a log record's message and traceback before any handler formats it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        return True


def install_log_filter(secrets: list[str]) -> None:
    """Attach SecretFilter to every handler of the root logger (a filter on a handler sees the
    records of all loggers; a filter on a logger only its own)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter(secrets))


def scrub_files(paths: Iterable[Path], secrets: list[str]) -> list[Path]:
    """Replace secrets in these text files (atomically); return the files that held one."""
    changed = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        masked = mask(text, secrets)
        if masked != text:
            tmp = path.with_name(f"{path.name}.scrub{os.getpid()}")
            tmp.write_text(masked, encoding="utf-8")
            os.replace(tmp, path)
            changed.append(path)
    return changed


def hydra_files(run_dir: Path, sweep_dir: Optional[Path] = None) -> list[Path]:
    files = sorted((run_dir / ".hydra").glob("*.yaml"))
    if sweep_dir is not None:
        files.append(sweep_dir / "multirun.yaml")
    return [f for f in files if f.is_file()]


def protect_run(cfg, run_dir: Path, sweep_dir: Optional[Path] = None) -> list[str]:
    """Mask the known secrets in logs from now on and in the files Hydra wrote; call at the start
    of the task function (and again at its end)."""
    secrets = known_secrets(cfg)
    if secrets:
        install_log_filter(secrets)
        scrub_files(hydra_files(Path(run_dir), sweep_dir), secrets)
    return secrets
