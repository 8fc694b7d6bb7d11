"""Seed tasks: the human-written pool the bootstrap starts from (original seed_tasks.jsonl format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfinstruct.files import DataError, iter_jsonl

DEFAULT_SEEDS = Path(__file__).resolve().parents[1] / "data" / "seed_tasks.jsonl"


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool


def _field(record: dict, key: str, kind: type, where: str):
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_seed(record: dict, where: str) -> SeedTask:
    instruction = _field(record, "instruction", str, where).strip()
    if not instruction:
        raise DataError(f"{where}: empty instruction")
    instances = []
    for i, inst in enumerate(_field(record, "instances", list, where)):
        if not isinstance(inst, dict):
            raise DataError(f"{where}: instances[{i}] must be an object")
        instances.append(Instance(_field(inst, "input", str, f"{where} instances[{i}]"),
                                  _field(inst, "output", str, f"{where} instances[{i}]")))
    if not instances:
        raise DataError(f"{where}: no instances")
    return SeedTask(
        id=str(_field(record, "id", str, where)),
        name=str(record.get("name", "")),
        instruction=instruction,
        instances=tuple(instances),
        is_classification=bool(_field(record, "is_classification", bool, where)),
    )


def load_seeds(path: str | Path | None = None, *, limit: int | None = None,
               classification_only: bool = False) -> list[SeedTask]:
    """Seed tasks from a JSONL file; any malformed line fails with the file and line named."""
    path = Path(path) if path else DEFAULT_SEEDS
    if not path.is_file():
        raise DataError(f"{path}: seed file not found")
    tasks: list[SeedTask] = []
    seen: dict[str, int] = {}
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        task = parse_seed(record, where)
        if task.id in seen:
            raise DataError(f"{where}: duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise DataError(f"{path}: no seed tasks")
    if classification_only:
        tasks = [t for t in tasks if t.is_classification]
    if limit is not None:
        tasks = tasks[:limit]
    return tasks


def seeds_from_config(seeds_cfg) -> list[SeedTask]:
    return load_seeds(seeds_cfg.path, limit=seeds_cfg.limit,
                      classification_only=seeds_cfg.classification_only)
