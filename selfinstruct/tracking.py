"""Experiment tracking. `start_tracking` returns an object with log_stats(stats, ctx) and finish()."""

from __future__ import annotations


class NoTracking:
    def log_stats(self, stats, ctx) -> None:
        pass

    def finish(self) -> None:
        pass


def start_tracking(cfg, run_dir):
    return NoTracking()
