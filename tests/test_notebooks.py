"""Both notebooks executed with nbclient (kernel python3) against real analysed runs: the acceptance
run on the Alpaca file for verb_noun_diversity, a two-job sweep for compare_runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.analysis_runs import doffery_run, seeds_sweep

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, run_dir: Path, monkeypatch) -> str:
    """Run the notebook with SELFINSTRUCT_RUN=run_dir; all text output, joined."""
    monkeypatch.setenv("SELFINSTRUCT_RUN", str(run_dir))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    texts, kinds = [], set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream":
                texts.append(out.text)
            else:
                kinds.update(out.get("data", {}))
                texts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(texts), kinds


def test_verb_noun_notebook(tmp_path_factory, monkeypatch):
    run_dir = doffery_run(tmp_path_factory)
    stats = json.loads((run_dir / "stats.json").read_text())
    text, kinds = execute("verb_noun_diversity.ipynb", run_dir, monkeypatch)
    assert f"run: {run_dir}" in text
    assert f"verb-noun share: {stats['diversity/verb_noun_share']:.3f} ({stats['diversity/num_verb_noun']} of 1115" in text
    assert f"top-20x4 coverage: {stats['diversity/top20x4_coverage']:.3f}" in text
    assert f"ROUGE-L to nearest seed: mean {stats['diversity/rouge_to_seed_mean']:.3f}" in text
    assert "52445" in text and "1115" in text  # Table 1: the paper beside the run
    assert "seed tasks" in text  # the run against its seed set
    assert {"application/vnd.plotly.v1+json", "image/png"} <= kinds  # sunbursts and figures


def test_compare_runs_notebook(tmp_path_factory, monkeypatch):
    sweep = seeds_sweep(tmp_path_factory)
    text, kinds = execute("compare_runs.ipynb", sweep, monkeypatch)
    assert f"sweep: {sweep} (2 jobs); swept: ['seeds.limit']" in text
    means = [json.loads((sweep / j / "stats.json").read_text())["diversity/rouge_to_seed_mean"] for j in "01"]
    assert all(f"{m:.6f}" in text for m in means)  # both jobs in the tables (pandas shows 6 decimals)
    assert "W&B API: offline (no WANDB_API_KEY), skipped" in text
    assert "image/png" in kinds  # the plots against the swept values


def test_default_run_is_the_newest_under_outputs_and_multirun(tmp_path, monkeypatch):
    import os

    from selfinstruct.notebook_utils import find_run

    monkeypatch.delenv("SELFINSTRUCT_RUN", raising=False)
    monkeypatch.chdir(tmp_path)
    for i, rel in enumerate(["outputs/2026-01-02/09-00-00", "outputs/2026-01-01/10-00-00",
                             "multirun/2026-01-01/08-00-00/0", "multirun/2026-01-01/08-00-00/1",
                             "multirun/2026-01-03/07-00-00/0"]):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "stats.json").write_text("{}")
        os.utime(tmp_path / rel / "stats.json", (1000 + i, 1000 + i))
    assert find_run("run") == tmp_path / "outputs/2026-01-01/10-00-00"  # newest stats.json
    assert find_run("sweep") == tmp_path / "multirun/2026-01-03/07-00-00"
    monkeypatch.setenv("SELFINSTRUCT_RUN", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SELFINSTRUCT_RUN"):
        find_run("run")
