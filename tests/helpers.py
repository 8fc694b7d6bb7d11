"""Helpers that tests and benchmarks share: where the repository and ../shared are, Hydra's
compose on conf/, and the real instructions under ../shared/data. Benchmarks import this module,
so it needs no pytest (the skipping helpers stay in conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
ORIGINAL_SEEDS = SHARED_DATA / "self-instruct" / "data" / "seed_tasks.jsonl"  # the paper's 175


def compose(overrides: list[str]):
    """The run config as `python run.py <overrides>` composes it (without the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import selfinstruct.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def original_seed_instructions() -> list[str]:
    return [json.loads(line)["instruction"] for line in ORIGINAL_SEEDS.open()]


def real_instructions() -> list[str]:
    """Unique `instruction` fields of every JSON / JSONL file under ../shared/data/runs, in file
    order (about 17K)."""
    texts, seen = [], set()
    for path in sorted((SHARED_DATA / "runs").glob("*/*")):
        if path.suffix == ".json":
            records = json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.open() if line.strip()]
        else:
            continue
        for r in records:
            t = r.get("instruction") if isinstance(r, dict) else None
            if isinstance(t, str) and t.strip() and t not in seen:
                seen.add(t)
                texts.append(t)
    return texts


def fake_instructions(n: int) -> list[dict]:
    """n instruction records as the instructions stage writes them, with the fake model's texts."""
    from selfinstruct.llm.fake import fake_instruction

    rng = random.Random(0)
    return [{"id": f"machine_task_{i}", "instruction": fake_instruction(rng)} for i in range(n)]
