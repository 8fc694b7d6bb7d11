"""Reading datasets and writing run files so that a killed run loses nothing and duplicates nothing.

Stages append records to JSONL files and, after each round of work, `Checkpoint.commit` fsyncs them
and records their sizes in progress.json (written atomically). On resume, `Checkpoint.restore`
truncates every file back to its committed size, which drops a torn last line and any records of a
round that did not finish, so the rerun continues exactly where the committed work ended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


def read_jsonl(path: str | Path, *, allow_torn_tail: bool = False) -> list[dict]:
    """Records of a JSONL file. A bad line raises DataError naming file and line, except a torn
    last line (no trailing newline) when allow_torn_tail is set: a killed writer leaves those."""
    path = Path(path)
    records = []
    lines = read_text(path).split("\n")  # not splitlines(): U+2028 may sit inside a JSON string
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and number == len(lines):  # the last piece has no newline
                break
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; an unreadable file raises DataError naming it (and the line
    of a byte that is not UTF-8)."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None


def read_records(path: str | Path) -> list[dict]:
    """Records of a dataset file: JSONL, or a JSON list of objects (Alpaca's format)."""
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"{path}: item {i} of the JSON list is not an object")
        return data
    return read_jsonl(path)


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append records in one write (the file is created even for none: an output file of the
    contract exists, if empty, once its stage has run)."""
    lines = "".join(dumps(r) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """progress.json of a run dir: per stage, the committed size of each file it appends to, plus
    whatever small state the stage needs to resume (e.g. how many requests it has sent)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "progress.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        # Called at each commit for more top-level entries to save with it (the run's usage).
        self.extra: Optional[Callable[[], dict]] = None

    def restore(self, stage: str, files: list[str]) -> dict:
        """Truncate the stage's files to their committed sizes; return the stage's saved state."""
        saved = self.data.get(stage, {})
        offsets = saved.get("offsets", {})
        for name in files:
            path = self.run_dir / name
            if path.exists():
                committed = offsets.get(name, 0)
                if path.stat().st_size != committed:
                    with open(path, "r+b") as f:
                        f.truncate(committed)
        return dict(saved.get("state", {}))

    def commit(self, stage: str, files: list[str], state: dict) -> None:
        offsets = {}
        for name in files:
            path = self.run_dir / name
            if path.exists():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                offsets[name] = path.stat().st_size
            else:
                offsets[name] = 0
        self.data[stage] = {"offsets": offsets, "state": state}
        if self.extra is not None:
            self.data.update(self.extra())
        write_json_atomic(self.path, self.data)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json_atomic(self.path, self.data)
