"""Shared fixtures: composing the Hydra config, locating ../shared, keeping tests offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED, SHARED_DATA, compose  # noqa: F401  (tests import them from here)

# Tests never reach the network: W&B stays offline and no key is inherited from the environment.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("OPENAI_API_KEY", None)


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when ../shared is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared is absent (no {path}); it holds the real data this test reads")
    return path


@pytest.fixture
def fake_overrides(tmp_path) -> list[str]:
    """Overrides for a fast, offline run on the fake backend with a private response cache."""
    return ["llm=fake", "tracking=none", f"llm.cache_dir={tmp_path / 'cache'}"]


def run_cli(args: list[str], cwd: Path = REPO, timeout: float = 300, env: dict | None = None):
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
