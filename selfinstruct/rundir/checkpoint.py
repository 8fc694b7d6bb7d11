"""progress.json: what a run has committed, so that a killed run loses nothing and duplicates nothing.

Stages append records to JSONL files and, after each batch of work, `commit` fsyncs them and records
per stage each file's size and the CRC-32 of its committed bytes (extended with only the bytes
appended since the last commit, so a commit costs what it wrote), plus whatever small state the
stage needs to resume. On resume, `restore` cuts each file back to its committed size, which drops a torn
last line and the records of a batch that was not committed, so the rerun continues exactly where
the committed work ended.

It never cuts bytes it did not write: a file that progress.json does not know, one shorter than
committed, or one whose committed bytes changed, is refused with a message naming it. Files that
stages replace whole (data.jsonl, stats.json, ...) are claimed before they are written, so a file
the run did not write is never replaced either.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

from selfinstruct.errors import RunError
from selfinstruct.files import write_json_atomic

def _crc(path: Path, start: int, end: int, crc: int = 0) -> int:
    """CRC-32 of bytes [start, end) of the file, continuing from the CRC of the bytes before."""
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
    return crc


class Checkpoint:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "progress.json"
        self.data: dict = self._load()
        # Runs written before files were claimed have no "written" entry: their files are theirs.
        self._legacy = self.path.exists() and "written" not in self.data
        self.data.setdefault("written", {})
        # Called at each commit for more top-level entries to save with it (the run's usage).
        self.extra: Optional[Callable[[], dict]] = None

    def _load(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except (ValueError, UnicodeDecodeError) as e:
            raise RunError(f"{self.path} is corrupt ({e}); it records what this run committed, so the "
                           "run cannot resume from it: start a new run dir, or move progress.json and the "
                           "run's .jsonl files away to start this one over") from None

    # --- files appended to -------------------------------------------------------------------

    def owner(self, path: Path) -> Optional[str]:
        """The stage of this run that wrote the file, or None."""
        name = Path(path).name
        for stage, entry in self.data.items():
            if isinstance(entry, dict) and name in entry.get("offsets", {}):
                return stage
        return self.data["written"].get(name) or ("an earlier version of this run" if self._legacy else None)

    def _refuse(self, path: Path, stage: str, owner: Optional[str]) -> RunError:
        if owner is None:
            why = "this run did not write it (progress.json has no record of it)"
        else:
            why = f"it holds the output of the {owner} stage"
        return RunError(f"{path}: {why}, and the {stage} stage would overwrite it. Nothing was changed: "
                        "move the file away, or run in a new run dir (leave hydra.run.dir unset)")

    def restore(self, stage: str, files: list[Path]) -> dict:
        """Cut the stage's files back to their committed sizes; return the stage's saved state."""
        saved = self.data.get(stage, {})
        offsets, crcs = saved.get("offsets", {}), saved.get("crc", {})
        for path in map(Path, files):
            if not path.exists():
                continue
            size, name = path.stat().st_size, path.name
            if name not in offsets:
                if size:
                    raise self._refuse(path, stage, self.owner(path))
                continue
            committed = offsets[name]
            if size < committed or (name in crcs and _crc(path, 0, committed) != crcs[name]):
                raise RunError(f"{path} changed since this run committed it ({committed} bytes then, {size} "
                               "now): it was edited or replaced outside the run. Nothing was changed: move "
                               "it away, or run in a new run dir")
            if size > committed:  # a torn line or an uncommitted batch of this run's own
                with open(path, "r+b") as f:
                    f.truncate(committed)
        if stage not in self.data:
            # Own the files before the first append: bytes a kill leaves before the first commit
            # are then this run's uncommitted tail, cut on resume like any other.
            self.commit(stage, files, {})
        return dict(saved.get("state", {}))

    def commit(self, stage: str, files: list[Path], state: dict) -> None:
        before = self.data.get(stage, {})
        offsets, crcs = {}, {}
        for path in map(Path, files):
            size = 0
            if path.exists():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                size = path.stat().st_size
                start, crc = before.get("offsets", {}).get(path.name, 0), before.get("crc", {}).get(path.name)
                if crc is None or start > size:
                    start, crc = 0, 0
                crcs[path.name] = _crc(path, start, size, crc)
            offsets[path.name] = size
        self.data[stage] = {"offsets": offsets, "crc": crcs, "state": state}
        if self.extra is not None:
            self.data.update(self.extra())
        self._save()

    # --- files replaced whole ----------------------------------------------------------------

    def claim(self, path: Path, stage: str) -> None:
        """Record that `stage` writes the file, after checking that no one else's file is there."""
        path = Path(path)
        owner = self.owner(path)
        if path.exists() and owner != stage and not (owner is not None and owner.startswith("an earlier")):
            raise self._refuse(path, stage, owner)
        if self.data["written"].get(path.name) != stage:
            self.data["written"][path.name] = stage
            self._save()

    # --- small state -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, self.data)
