"""Per-request response cache in SQLite (WAL mode), safe for the parallel jobs of a sweep.

Keyed by a hash of backend, model, endpoint, prompt, sampling parameters (with the run seed) and the
request's id (the sample index), so a rerun, a resume, or a sweep over filter or analysis parameters
gets the model's answers back instead of paying for them again. Only successful answers are stored:
a request that failed is asked again by the next run.

Several processes may read and write one file at once: WAL lets readers and one writer work
together, and a writer waits (busy timeout) for another's short transaction instead of failing.
WAL needs a local file system; on NFS point llm.cache_dir at local disk or set llm.cache=false.
A cache that cannot be read or written costs a warning and the answers, never the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Optional

from selfinstruct.errors import RunError
from selfinstruct.llm.base import Completion

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction


class CacheError(RunError):
    """The cache file cannot be opened; the message names it and the way out."""


def default_cache_dir() -> Path:
    if os.environ.get("SELFINSTRUCT_CACHE"):
        return Path(os.environ["SELFINSTRUCT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfinstruct"


def cache_dir_for(llm_cfg) -> Path:
    """The cache directory of an `llm` config node (llm.cache_dir, else the default)."""
    return Path(llm_cfg.cache_dir) if llm_cfg.cache_dir else default_cache_dir()


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("response cache %s: WAL mode unavailable (%s); parallel jobs will wait "
                            "for each other", self.path, mode)
            # NORMAL: a killed process loses nothing committed; only a power cut may lose the
            # last transactions, which are then simply asked again.
            self.db.execute("PRAGMA synchronous=NORMAL")
            with self.db:
                self.db.execute("CREATE TABLE IF NOT EXISTS responses "
                                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"response cache {self.path}: {e}; delete the file, set "
                             f"llm.cache_dir=ANOTHER_DIR, or run with llm.cache=false") from e

    def get_many(self, keys: list[dict]) -> list[Optional[Completion]]:
        hashes = [key_hash(k) for k in keys]
        found: dict[str, str] = {}
        try:
            for start in range(0, len(hashes), 500):  # SQLite limits the number of parameters
                chunk = hashes[start:start + 500]
                rows = self.db.execute(
                    f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update(rows.fetchall())
        except sqlite3.Error as e:
            log.warning("response cache %s unreadable (%s); asking the model", self.path, e)
        return [self._decode(found[h]) if h in found else None for h in hashes]

    def get(self, key: dict) -> Optional[Completion]:
        try:
            row = self.db.execute("SELECT value FROM responses WHERE key = ?", (key_hash(key),)).fetchone()
        except sqlite3.Error as e:
            log.warning("response cache %s unreadable (%s); asking the model", self.path, e)
            return None
        return None if row is None else self._decode(row[0])

    @staticmethod
    def _decode(value: str) -> Optional[Completion]:
        try:
            return Completion(**json.loads(value), cached=True)
        except (ValueError, TypeError):
            return None  # a damaged entry is a miss; the fresh answer replaces it

    def put_many(self, items: list[tuple[dict, Completion]]) -> None:
        rows = []
        for key, c in items:
            value = {"text": c.text, "finish_reason": c.finish_reason,
                     "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
            rows.append((key_hash(key), json.dumps(value, ensure_ascii=False)))
        if not rows:
            return
        try:
            with self.db:  # one transaction per batch: short, so parallel writers barely wait
                self.db.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", rows)
        except sqlite3.Error as e:
            log.warning("response cache %s: could not store %d answers (%s)", self.path, len(rows), e)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.close()
