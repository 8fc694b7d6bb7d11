"""The README's notebook commands, run as a user runs them: `jupyter lab` serves the notebook, and
`jupyter nbconvert --execute` runs both notebooks headless against real analysed runs (the
acceptance run on the Alpaca file for verb_noun_diversity, a two-job sweep for compare_runs), with
PNG figures, integer counts, the paper's numbers labelled as such, and one line instead of a
traceback where the run lacks something."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.analysis_runs import doffery_run, seeds_sweep

REPO = Path(__file__).resolve().parents[1]
JUPYTER = str(Path(sys.executable).with_name("jupyter"))  # the one requirements.txt installs
# The README's commands, less the `SELFINSTRUCT_RUN=... ` prefix (asserted to be in the README).
LAB = "jupyter lab notebooks/verb_noun_diversity.ipynb"
HTML = ("jupyter nbconvert --to html --execute notebooks/verb_noun_diversity.ipynb "
        "--output-dir outputs/DATE/TIME")
PAPER = "paper (GPT-3 davinci, 52K)"


def jupyter_env(tmp_path: Path, run_dir: Path | None) -> dict:
    """The environment of a user's shell, with Jupyter's runtime and config files kept in tmp."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SELFINSTRUCT_RUN", None)
    if run_dir is not None:
        env["SELFINSTRUCT_RUN"] = str(run_dir)
    return env


def readme_command(command: str, run_dir: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    assert f"SELFINSTRUCT_RUN={run_dir} {command}" in readme, "the README no longer shows this command"
    return [JUPYTER, *shlex.split(command)[1:]]


def execute(notebook: Path, run_dir: Path | None, tmp_path: Path, **env) -> nbformat.NotebookNode:
    """`jupyter nbconvert --to notebook --execute` (what the README's HTML command runs, saved as
    a notebook to read its outputs); fails on an error in any cell."""
    out = tmp_path / "executed"
    result = subprocess.run([JUPYTER, "nbconvert", "--to", "notebook", "--execute", str(notebook),
                             "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**jupyter_env(tmp_path, run_dir), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return nbformat.read(out / notebook.name, as_version=4)


def outputs(nb) -> tuple[str, set[str], list]:
    """All text output joined (stdout and text/plain), the MIME types shown, the outputs in order."""
    texts, kinds, every = [], set(), []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{out.get('ename')}: {out.get('evalue')}"
            every.append(out)
            if out.output_type == "stream":
                texts.append(out.text)
            else:
                kinds.update(out.get("data", {}))
                texts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(texts), kinds, every


def test_readme_jupyter_lab_command_serves_the_notebook(tmp_path):
    """The README's `jupyter lab` command starts a server that answers over HTTP and serves the
    notebook; headless here (--no-browser, any free port; --allow-root as root)."""
    command = readme_command(LAB, "outputs/DATE/TIME")
    command += ["--no-browser", "--port=0"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = tmp_path / "lab.log"
    with log.open("w") as stream:
        server = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                  env=jupyter_env(tmp_path, REPO / "outputs/DATE/TIME"))
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and server.poll() is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/lab\?token=(\w+)", log.read_text())
            url = found and (f"http://127.0.0.1:{found[1]}", found[2])
            time.sleep(0.5)
        assert url, f"no server URL (exit {server.poll()}):\n{log.read_text()[-3000:]}"
        base, token = url
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=30) as page:
            assert page.status == 200 and "JupyterLab" in page.read().decode()
        # the server's root is notebooks/ (the notebook's folder)
        with urllib.request.urlopen(f"{base}/api/contents/verb_noun_diversity.ipynb?content=0&token={token}",
                                    timeout=30) as reply:
            assert json.load(reply)["type"] == "notebook"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_readme_html_copy_of_verb_noun_notebook(tmp_path_factory, tmp_path):
    """The README's static copy of the verb-noun notebook on the acceptance run: it executes with
    no error, its figures are PNGs, Table 1 counts are integers, the paper's column is labelled."""
    run_dir = doffery_run(tmp_path_factory)
    stats = json.loads((run_dir / "stats.json").read_text())
    out = tmp_path / "copy"
    command = readme_command(HTML, "outputs/DATE/TIME")
    command[command.index("outputs/DATE/TIME")] = str(out)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=jupyter_env(tmp_path, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    page = html.unescape((out / "verb_noun_diversity.html").read_text())
    assert "Traceback" not in page
    assert page.count('src="data:image/png;base64,') >= 4  # 2 sunbursts, rank curve, ROUGE-L histogram
    assert f"run: {run_dir}" in page
    source = json.loads((run_dir / "analysis.json").read_text())["source"]["input"]
    assert f"data: {source} (an external dataset" in page  # where the data came from
    assert f"verb-noun share: {stats['diversity/verb_noun_share']:.3f} ({stats['diversity/num_verb_noun']} of 1115" in page
    assert f"top-20x4 coverage: {stats['diversity/top20x4_coverage']:.3f} ({PAPER}: 0.14)" in page
    assert f"ROUGE-L to nearest seed: mean {stats['diversity/rouge_to_seed_mean']:.3f}" in page
    # Table 1: the run's counts beside the paper's, as integers, in a column named for the paper
    assert f"<th>{PAPER}</th>" in page and "Not a like-for-like comparison" in page
    row = re.search(r"<th>instructions</th>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>", page)
    assert row and row.groups() == ("1,115", "52,445")
    row = re.search(r"<th>instances with empty input</th>\s*<td>([^<]*)</td>", page)
    assert row and row[1] == f"{stats['data/num_instances_empty_input']:,}"
    assert not re.search(r"<td>\d+\.0{6}</td>", page)  # no count shown as 20.000000
    assert "seed tasks" in page  # the run against its seed set


def test_compare_runs_notebook_on_a_sweep(tmp_path_factory, tmp_path):
    sweep = seeds_sweep(tmp_path_factory)
    text, kinds, _ = outputs(execute(REPO / "notebooks/compare_runs.ipynb", sweep, tmp_path))
    assert f"sweep: {sweep} (2 jobs); swept: ['seeds.limit']" in text
    means = [json.loads((sweep / j / "stats.json").read_text())["diversity/rouge_to_seed_mean"] for j in "01"]
    assert all(f"{m:.6f}" in text for m in means)  # both jobs in the tables (pandas shows 6 decimals)
    assert "W&B API: offline (no WANDB_API_KEY), skipped" in text
    assert "image/png" in kinds  # the plots against the swept values, as a static image


def test_compare_runs_on_a_single_run_says_what_it_needs(tmp_path_factory, tmp_path):
    run_dir = doffery_run(tmp_path_factory)
    _, _, every = outputs(execute(REPO / "notebooks/compare_runs.ipynb", run_dir, tmp_path))
    assert [(o.output_type, o.get("name")) for o in every] == [("stream", "stdout")]  # one line, nothing else
    assert every[0].text == (f"compare_runs needs a multirun dir (from `python run.py -m ...`), and "
                             f"{run_dir} is a single run: set SELFINSTRUCT_RUN=multirun/DATE/TIME\n")


def test_verb_noun_notebook_without_analysis_says_what_to_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stats.json").write_text('{"data/num_instructions": 3}')  # the analyze stage never ran
    _, _, every = outputs(execute(REPO / "notebooks/verb_noun_diversity.ipynb", run_dir, tmp_path))
    assert [o.output_type for o in every] == ["stream"]
    assert every[0].text == (f"{run_dir} has no current analysis.json: run "
                             f"`python run.py stages=[analyze] hydra.run.dir={run_dir}`\n")


def test_notebooks_without_any_run_say_so(tmp_path):
    """No SELFINSTRUCT_RUN and no outputs/ or multirun/: one line each (the notebooks copied to an
    empty checkout, the package on PYTHONPATH)."""
    (tmp_path / "notebooks").mkdir()
    for name, line in [("compare_runs", "Nothing to compare: no sweep found in "),
                       ("verb_noun_diversity", "Nothing to analyse: no run found in ")]:
        copy = tmp_path / "notebooks" / f"{name}.ipynb"
        copy.write_text((REPO / "notebooks" / copy.name).read_text())
        _, _, every = outputs(execute(copy, None, tmp_path, PYTHONPATH=str(REPO)))
        assert len(every) == 1 and every[0].text.startswith(line), every
        assert every[0].text.count("\n") == 1 and "SELFINSTRUCT_RUN=" in every[0].text


# --- the helpers, without a kernel ---------------------------------------------------------------

def test_table1_counts_are_integers_and_the_paper_column_is_labelled():
    from selfinstruct.notebook_utils import PAPER as column, table1

    stats = {"data/num_instructions": 20.0, "data/num_instances": 37, "data/avg_instruction_words": 9.4567,
             "diversity/verb_noun_share": 0.5, "diversity/rouge_to_seed_mean": 0.31234}
    table = table1(stats)
    assert list(table.columns) == ["this run", column] and column == PAPER
    assert table.loc["instructions"].tolist() == ["20", "52,445"]
    assert table.loc["instances", "this run"] == "37"
    assert table.loc["avg. instruction words", "this run"] == "9.5"
    assert table.loc["verb-noun share"].tolist() == ["50.0%", "50.6%"]
    assert table.loc["ROUGE-L to nearest seed (mean)", "this run"] == "0.312"
    assert table.loc["classification instructions", "this run"] == "-"  # not in the stats


def test_the_model_that_generated_the_run_is_named(tmp_path):
    from omegaconf import OmegaConf

    from selfinstruct.notebook_utils import about_data

    def run(llm, source=None):
        return {"analysis": {"source": source or {"input": None}}, "config": OmegaConf.create({"llm": llm})}

    line = about_data(run({"backend": "llamacpp", "model": "gemma-3-270m-q4_k_m", "model_path": None}))
    assert line.startswith("model: llamacpp gemma-3-270m-q4_k_m (the embedded Gemma 3 270M base model")
    assert "not comparable to the paper's GPT-3 davinci" in line
    assert about_data(run({"backend": "openai", "model": "gpt-4o-mini"})) == "model: openai gpt-4o-mini"
    assert about_data(run({"backend": "fake", "model": "fake-v1"})).startswith("model: fake fake-v1 (the deterministic test double")
    line = about_data(run({"backend": "llamacpp", "model": "x"}, {"input": "/data/regen.json"}))
    assert line.startswith("data: /data/regen.json (an external dataset")


def test_default_run_is_the_newest_under_outputs_and_multirun(tmp_path, monkeypatch):
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
    # a relative SELFINSTRUCT_RUN is relative to the repository root, also from notebooks/
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("SELFINSTRUCT_RUN", "outputs/2026-01-02/09-00-00")
    assert find_run("run") == tmp_path / "outputs/2026-01-02/09-00-00"
    monkeypatch.setenv("SELFINSTRUCT_RUN", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SELFINSTRUCT_RUN"):
        find_run("run")
