"""The run dir: one Hydra run directory and its file contract (DESIGN.md, Outputs).

`RunDir` names every file of the contract once (stages use its attributes, never literal names),
holds the lock that keeps a second process out, the checkpoint (progress.json) that makes a killed
run resume exactly, the torn-tail readers, and the statistics each stage saved for stats.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from selfinstruct.errors import DataError
from selfinstruct.files import read_jsonl, write_json_atomic, write_jsonl_atomic
from selfinstruct.rundir.checkpoint import Checkpoint
from selfinstruct.rundir.lock import RunLock

log = logging.getLogger(__name__)

__all__ = ["RunDir", "Checkpoint"]


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        r = self.root
        # generation
        self.instructions = r / "instructions.jsonl"  # accepted machine instructions
        self.rejected = r / "rejected.jsonl"  # candidates and the rule that rejected them
        self.classification = r / "classification.jsonl"
        self.instances_raw = r / "instances_raw.jsonl"
        # the dataset (prepare)
        self.data = r / "data.jsonl"
        self.finetune_data = r / "finetune.jsonl"
        self.alpaca = r / "alpaca.json"
        # statistics and analysis
        self.stats = r / "stats.json"
        self.analysis = r / "analysis.json"
        self.analysis_rows = r / "analysis_instructions.jsonl"
        self.judge = r / "judge.jsonl"
        self.plots = r / "plots"
        # alignment
        self.finetune_dir = r / "finetune"
        self.eval = r / "eval.jsonl"  # one record per task: both answers and their scores
        self.eval_answers = r / "eval_answers.jsonl"  # the answers as they came, per model
        self.eval_judge = r / "eval_judge.jsonl"  # the judge's replies
        # the run's own state
        self.progress = r / "progress.json"
        self._lock = RunLock(r)
        self.checkpoint: Checkpoint | None = None

    # Files that hold generated records: an analysis of the run dir reads these.
    @property
    def dataset_files(self) -> tuple[Path, ...]:
        return (self.instructions, self.classification, self.data)

    def open(self) -> "RunDir":
        """Create the dir, take the lock (RunError if another process holds it), read progress.json
        (RunError if corrupt), and remove temporary files a killed write left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self.checkpoint = Checkpoint(self.root)
        except BaseException:
            self._lock.release()
            raise
        for leftover in [*self.root.glob("*.tmp"), *self.plots.glob("*.tmp")]:
            leftover.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        self._lock.release()

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def records(path: Path) -> list[dict]:
        """A run file's records ([] if absent), ignoring a torn last line a killed writer left."""
        return read_jsonl(path, allow_torn_tail=True) if path.exists() else []

    def instruction_records(self, stage: str) -> list[dict]:
        """instructions.jsonl, which every later generation stage starts from."""
        if not self.instructions.exists():
            raise DataError(f"{self.instructions}: not found; the {stage} stage needs the instructions "
                            "stage's output in the same run dir (add `instructions` to stages)")
        return read_jsonl(self.instructions)

    def done_ids(self, stage: str, path: Path) -> set[str]:
        """Ids already in a per-instruction stage's output, after cutting it to its last commit."""
        self.checkpoint.restore(stage, [path])
        return {r["id"] for r in read_jsonl(path)} if path.exists() else set()

    # --- writing whole files ------------------------------------------------------------------

    def replace_jsonl(self, path: Path, records: Iterable[dict], stage: str) -> None:
        self.checkpoint.claim(path, stage)
        write_jsonl_atomic(path, records)

    def replace_json(self, path: Path, data: Any, stage: str, *, indent: int | None = 2) -> None:
        self.checkpoint.claim(path, stage)
        write_json_atomic(path, data, indent=indent)

    # --- statistics of the stages --------------------------------------------------------------

    def file_sizes(self, paths: Iterable[Path]) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in paths if p.exists()}

    def save_stats(self, stage: str, values: dict[str, Any], inputs: Iterable[Path] = ()) -> None:
        """Statistics a stage computed from `inputs`; stats.json includes them while those files
        are unchanged (a grown run makes them stale until the stage runs again)."""
        saved = self.checkpoint.get("stats", {})
        saved[stage] = {"values": values, "inputs": self.file_sizes(inputs)}
        self.checkpoint.put("stats", saved)

    def saved_stats(self) -> dict[str, Any]:
        """The current statistics of every stage, merged in the order the stages saved them."""
        merged: dict[str, Any] = {}
        for stage, entry in self.checkpoint.get("stats", {}).items():
            current = self.file_sizes(self.root / name for name in entry["inputs"])
            if current != entry["inputs"]:
                log.warning("the %s statistics describe older run files and are left out of stats.json; "
                            "rerun stages=[%s] to refresh them", stage, stage)
                continue
            merged.update(entry["values"])
        return merged
