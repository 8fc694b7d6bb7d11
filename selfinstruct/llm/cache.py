"""Per-request response cache in SQLite (WAL mode), safe for the parallel jobs of a sweep.

Keyed by a hash of backend, model, endpoint, prompt, sampling parameters and the request's id, so a
rerun, a resume, or a sweep over filter or analysis parameters gets the model's answers back
instead of paying for them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Optional

from .base import Completion


def default_cache_dir() -> Path:
    if os.environ.get("SELFINSTRUCT_CACHE"):
        return Path(os.environ["SELFINSTRUCT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfinstruct"


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: list[dict]) -> list[Optional[Completion]]:
        hashes = [key_hash(k) for k in keys]
        found: dict[str, str] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            rows = self.db.execute(
                f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update(rows.fetchall())
        return [Completion(**json.loads(found[h]), cached=True) if h in found else None for h in hashes]

    def put_many(self, items: list[tuple[dict, Completion]]) -> None:
        rows = []
        for key, c in items:
            value = {"text": c.text, "finish_reason": c.finish_reason,
                     "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
            rows.append((key_hash(key), json.dumps(value, ensure_ascii=False)))
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.close()
