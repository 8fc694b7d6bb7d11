"""Seed files: the original format loads; malformed files fail with the file and line named."""

from __future__ import annotations

import json

import pytest

from selfinstruct.files import DataError
from selfinstruct.datasets.seeds import load_seeds
from tests.conftest import shared_path

GOOD = {"id": "t1", "name": "n", "instruction": "Say something kind about the weather today.",
        "instances": [{"input": "", "output": "What a lovely day."}], "is_classification": False}


def write(tmp_path, lines):
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_original_seed_file_loads():
    tasks = load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26


def test_our_default_seed_set_loads():
    tasks = load_seeds()
    assert len(tasks) == 175
    assert len({t.id for t in tasks}) == 175


def test_limit_and_classification_only(tmp_path):
    lines = [json.dumps({**GOOD, "id": f"t{i}", "is_classification": i % 2 == 0}) for i in range(6)]
    path = write(tmp_path, lines)
    assert [t.id for t in load_seeds(path, limit=2)] == ["t0", "t1"]
    assert [t.id for t in load_seeds(path, classification_only=True)] == ["t0", "t2", "t4"]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "instances"}), "missing field 'instances'"),
    (json.dumps({**GOOD, "instruction": "   "}), "empty instruction"),
    (json.dumps({**GOOD, "is_classification": "no"}), "is_classification"),
    (json.dumps({**GOOD, "instances": [{"input": ""}]}), "missing field 'output'"),
    (json.dumps(GOOD), "duplicate id 't1'"),
])
def test_malformed_seed_line_is_named(tmp_path, bad, message):
    path = write(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "id": "t2"}), bad])
    with pytest.raises(DataError) as info:
        load_seeds(path)
    assert f"{path}:3" in str(info.value)
    assert message in str(info.value)
