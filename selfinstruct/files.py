"""Reading and writing JSON and JSONL files: readers that name the file and line of a bad record,
appends in one write, and atomic replacement (write a temporary file, fsync, rename) that leaves no
temporary file behind when the write fails. The run dir's own rules (which files a run may touch,
the checkpoint) live in selfinstruct/rundir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator


from selfinstruct.errors import DataError


def read_jsonl(path: str | Path, *, allow_torn_tail: bool = False) -> list[dict]:
    """Records of a JSONL file. A bad line raises DataError naming file and line, except a torn
    last line (no trailing newline) when allow_torn_tail is set: a killed writer leaves those."""
    return [record for _, record in iter_jsonl(path, allow_torn_tail=allow_torn_tail)]


def iter_jsonl(path: str | Path, text: str | None = None, *,
               allow_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line of a JSONL file, for readers whose own errors
    name the line; text: the file's contents when the caller has read them already."""
    path = Path(path)
    text = read_text(path) if text is None else text
    lines = text.split("\n")  # not splitlines(): U+2028 may sit inside a JSON string
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and number == len(lines):  # the last piece has no newline
                return
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


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
    return [r for _, r in read_located_records(path)]


def read_located_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) pairs of a dataset file, where = "FILE:LINE" (JSONL) or "FILE: item N" (a
    JSON list), for messages about a record's content."""
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
        return [(f"{path}: item {i}", r) for i, r in enumerate(data)]
    return [(f"{path}:{number}", record) for number, record in iter_jsonl(path, text)]


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append records in one write (the file is created even for none: an output file of the
    contract exists, if empty, once its stage has run)."""
    lines = "".join(dumps(r) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)


def _replace_atomic(path: Path, write) -> None:
    """Write through `write(file)` into PATH.tmp, fsync, rename over path; on any failure (a full
    disk, say) the temporary file is removed and the old file stays as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2) -> None:
    _replace_atomic(path, lambda f: json.dump(data, f, ensure_ascii=False, indent=indent))


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    _replace_atomic(path, lambda f: f.writelines(dumps(r) + "\n" for r in records))


def file_identity(path: str) -> str:
    """name:size:mtime of a file, so a changed or replaced file never gets another's cached answers."""
    p = Path(path)
    if not p.exists():
        return f"{p.name}:missing"
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
