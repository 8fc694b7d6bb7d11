"""Nothing a user has is ever lost, and every operational failure ends in one clear line and a
non-zero exit (no traceback). Each test reproduces one way a run can go wrong, as a user would meet
it (mostly `python run.py` as a subprocess), and checks the files that were there are untouched.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, compose, run_cli

FAKE = ["llm=fake", "tracking=none", "num_instructions=12"]


class Result:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr, self.stdout = returncode, stderr, ""


def run_here(overrides: list[str], run_dir: Path) -> Result:
    """What `python run.py OVERRIDES hydra.run.dir=RUN_DIR` does, in this process (no start-up cost):
    the exit code and what went to stderr."""
    import contextlib
    import io

    from selfinstruct.failures import exit_cleanly
    from selfinstruct.pipeline import run

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            with exit_cleanly():
                run(compose(overrides), run_dir)
            code = 0
        except SystemExit as e:
            code = e.code
    return Result(code, err.getvalue())


def fake_run(run_dir: Path, tmp_path: Path, *extra: str) -> Result:
    return run_here([*FAKE, f"llm.cache_dir={tmp_path / 'cache'}", *extra], run_dir)


def one_error_line(result) -> str:
    """The run failed with exactly one `error:` line and no traceback; that line."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.glob("*.jsonl")}


# --- the checkpoint never cuts what it did not write ---------------------------------------------

def test_a_stage_file_the_run_did_not_write_is_refused_and_kept(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mine = '{"id": "x", "instruction": "A list I wrote by hand and want to keep."}\n'
    (run_dir / "instructions.jsonl").write_text(mine)
    line = one_error_line(fake_run(run_dir, tmp_path))
    assert "instructions.jsonl" in line and "did not write it" in line and "move the file away" in line
    assert (run_dir / "instructions.jsonl").read_text() == mine


def test_a_finished_run_whose_progress_was_deleted_is_not_regenerated(tmp_path):
    run_dir = tmp_path / "run"
    assert fake_run(run_dir, tmp_path).returncode == 0
    before = snapshot(run_dir)
    (run_dir / "progress.json").unlink()
    line = one_error_line(fake_run(run_dir, tmp_path, "llm.cache=false"))
    assert "progress.json has no record" in line
    assert snapshot(run_dir) == before


def test_a_stage_file_changed_after_its_commit_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert fake_run(run_dir, tmp_path, "stages=[instructions]").returncode == 0
    path = run_dir / "instructions.jsonl"
    edited = path.read_text().replace("machine_task_3", "machine_task_X")  # same size, other bytes
    path.write_text(edited)
    line = one_error_line(fake_run(run_dir, tmp_path, "num_instructions=20"))
    assert "instructions.jsonl changed since this run committed it" in line
    assert path.read_text() == edited


def test_a_corrupt_progress_file_is_named_with_the_way_out(tmp_path):
    run_dir = tmp_path / "run"
    assert fake_run(run_dir, tmp_path).returncode == 0
    before = snapshot(run_dir)
    (run_dir / "progress.json").write_text('{"instructions": {"offsets": ')
    line = one_error_line(fake_run(run_dir, tmp_path))
    assert "progress.json is corrupt" in line and "start a new run dir" in line
    assert snapshot(run_dir) == before


def test_dedup_and_analyze_with_input_refuse_a_generation_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    assert fake_run(run_dir, tmp_path).returncode == 0
    before = snapshot(run_dir) | {"stats.json": (run_dir / "stats.json").read_bytes()}
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "Summarize the plot of a film you like in two sentences."}\n')
    line = one_error_line(fake_run(run_dir, tmp_path, "stages=[dedup]", f"input={other}"))
    assert "instructions.jsonl" in line and "instructions stage" in line and "new run dir" in line
    line = one_error_line(fake_run(run_dir, tmp_path, "stages=[analyze]", f"input={other}"))
    assert "holds a generation run" in line
    assert snapshot(run_dir) | {"stats.json": (run_dir / "stats.json").read_bytes()} == before
    # and the generation run goes on as if nothing had happened
    assert fake_run(run_dir, tmp_path, "num_instructions=16").returncode == 0
    assert len((run_dir / "instructions.jsonl").read_text().splitlines()) == 16


def test_a_dedup_run_dir_is_not_taken_over_by_generation(tmp_path):
    run_dir = tmp_path / "run"
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "Summarize the plot of a film you like in two sentences."}\n')
    assert fake_run(run_dir, tmp_path, "stages=[dedup]", f"input={other}").returncode == 0
    kept = (run_dir / "instructions.jsonl").read_bytes()
    line = one_error_line(fake_run(run_dir, tmp_path))
    assert "dedup stage" in line
    assert (run_dir / "instructions.jsonl").read_bytes() == kept
    assert fake_run(run_dir, tmp_path, "stages=[dedup]", f"input={other}").returncode == 0  # its own


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    run_dir = tmp_path / "run"
    assert fake_run(run_dir, tmp_path).returncode == 0
    (run_dir / "progress.json.tmp").write_text('{"half": ')
    (run_dir / "data.jsonl.tmp").write_text('{"instruction": "a')
    assert fake_run(run_dir, tmp_path).returncode == 0
    assert not list(run_dir.glob("*.tmp"))


# --- one process per run dir ---------------------------------------------------------------------

def test_a_second_process_on_the_run_dir_fails_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "run.py"), *FAKE, "num_instructions=24", "llm.latency_s=0.3",
            "llm.concurrency=2", "llm.cache=false", f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "instructions.jsonl").exists():  # the first holds the lock by now
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli(args[2:])
        line = one_error_line(second)
        assert f"pid {first.pid}" in line and str(run_dir) in line
        assert time.monotonic() - started < 20  # at once: start-up only, no waiting
    finally:
        assert first.wait(timeout=180) == 0, first.stderr.read().decode()[-3000:]
    records = [json.loads(line) for line in (run_dir / "instructions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"machine_task_{i}" for i in range(24)]


def test_the_lock_of_a_killed_run_does_not_outlive_it(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "run.py"), *FAKE, "llm.latency_s=0.3", "llm.concurrency=1",
            f"hydra.run.dir={run_dir}", f"llm.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (run_dir / "instructions.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (run_dir / ".selfinstruct.lock").exists()
    assert fake_run(run_dir, tmp_path).returncode == 0


# --- a model server that is not there --------------------------------------------------------------

def test_a_closed_port_stops_the_run_soon_naming_the_url(tmp_path, monkeypatch):
    from selfinstruct.llm import openai_backend

    monkeypatch.setattr(openai_backend, "UNREACHABLE_AFTER_S", 3.0)  # 20 s in real runs
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    result = run_here(["llm=openai_compatible", f"llm.base_url={url}", "llm.model=m", "tracking=none",
                       "llm.cache=false"], tmp_path / "run")
    elapsed = time.monotonic() - started
    line = one_error_line(result)
    assert url in line and "cannot reach" in line
    # seconds, not minutes: retrying each request 7 times with backoff took 168 s; the rest of the
    # bound is the start of a Python process on a busy machine
    assert elapsed < 3.0 + 2 * openai_backend.UNANSWERED_MAX_BACKOFF_S + 25, elapsed


class SilentServer:
    """Accepts connections and never answers (a hung server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_server_that_answers_nothing_stops_the_run_soon(tmp_path, monkeypatch):
    from selfinstruct.llm import openai_backend

    monkeypatch.setattr(openai_backend, "UNREACHABLE_AFTER_S", 3.0)  # 20 s in real runs
    server = SilentServer()
    started = time.monotonic()
    try:
        result = run_here(["llm=openai_compatible", f"llm.base_url={server.url}", "llm.model=m",
                           "llm.timeout_s=1", "llm.concurrency=4", "tracking=none", "llm.cache=false"],
                          tmp_path / "run")
    finally:
        server.close()
    elapsed = time.monotonic() - started
    line = one_error_line(result)
    assert server.url in line and "has answered no request" in line and "llm.timeout_s=1 s" in line
    assert elapsed < 10, elapsed  # 7 attempts of 1 s with backoff for each of 2 rounds of requests: > 20 s


def test_a_stage_in_which_every_request_failed_exits_non_zero(tmp_path):
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer(fault_rate=1.0, faults=("401",)) as server:  # every request refused
        result = run_here(["llm=openai_compatible", f"llm.base_url={server.base_url}", "llm.model=m",
                           "llm.api_key=sk-test-0123456789", "llm.concurrency=4", "tracking=none",
                           "llm.cache=false"], tmp_path / "run")
    line = one_error_line(result)
    assert "instructions: the first 8 requests all failed" in line and server.base_url in line
    assert "HTTP 401" in line
    # the failed requests are noted, so the same command asks them again
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert len(progress["instructions"]["state"]["failed"]) == 8


# --- the machine ---------------------------------------------------------------------------------

def test_a_read_only_run_dir_ends_with_one_line(tmp_path):  # before Hydra writes: the CLI
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    made = subprocess.run(["chattr", "+i", str(run_dir)], capture_output=True)
    if made.returncode != 0:  # root ignores permission bits; an immutable dir refuses even root
        os.chmod(run_dir, 0o555)
        if os.access(run_dir, os.W_OK):
            pytest.skip("cannot make a read-only directory here (root without chattr)")
    try:
        line = one_error_line(run_cli([*FAKE, f"hydra.run.dir={run_dir}"]))
    finally:
        subprocess.run(["chattr", "-i", str(run_dir)], capture_output=True)
        os.chmod(run_dir, 0o755)
    assert str(run_dir) in line and "hydra.run.dir" in line


def test_a_full_disk_ends_with_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    from selfinstruct import files
    from selfinstruct.failures import exit_cleanly
    from selfinstruct.pipeline import run

    cfg = compose([*FAKE, "llm.cache=false"])
    real_dump = json.dump

    def dump_until_full(data, f, **kwargs):
        if "instructions" in data:  # progress.json after the first commit: the disk is full now
            f.write("{")
            raise OSError(errno.ENOSPC, "No space left on device", str(f.name))
        return real_dump(data, f, **kwargs)

    monkeypatch.setattr(files.json, "dump", dump_until_full)
    with pytest.raises(SystemExit) as exit_info, exit_cleanly():
        run(cfg, tmp_path / "run")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "disk full while writing" in err and "rerun the same command" in err
    assert not list((tmp_path / "run").glob("*.tmp"))
    monkeypatch.setattr(files.json, "dump", real_dump)
    run(cfg, tmp_path / "run")  # space again: the same command resumes
    assert len((tmp_path / "run" / "instructions.jsonl").read_text().splitlines()) == 12


def test_a_corrupt_response_cache_ends_with_one_line_naming_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "responses.sqlite").write_bytes(b"this is not a database" * 100)
    line = one_error_line(run_here([*FAKE, f"llm.cache_dir={cache}"], tmp_path / "run"))
    assert "responses.sqlite" in line and "llm.cache=false" in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_an_interrupted_run_says_how_to_resume_and_resumes(tmp_path, sig):
    run_dir = tmp_path / "run"
    args = [*FAKE, "num_instructions=100", "llm.latency_s=0.3", "llm.concurrency=2", "stages=[instructions]",
            f"hydra.run.dir={run_dir}", f"llm.cache_dir={tmp_path / 'cache'}"]
    # A shell's background job (nohup ... &) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: give the run the disposition of a terminal's foreground process.
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (run_dir / "instructions.jsonl").exists() or not (run_dir / "instructions.jsonl").stat().st_size:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.count("error: ") == 1
    assert "error: interrupted; rerun the same command to resume" in err
    assert run_cli(args).returncode == 0
    assert len((run_dir / "instructions.jsonl").read_text().splitlines()) == 100


def test_a_config_error_is_printed_once(tmp_path):  # the CLI: also no log line of it
    result = run_cli([*FAKE, "+filters.rouge_treshold=0.5", f"hydra.run.dir={tmp_path / 'run'}"])
    line = one_error_line(result)
    assert "filters.rouge_treshold" in line and "unknown key" in line
    assert result.stderr.count("rouge_treshold") == 1
