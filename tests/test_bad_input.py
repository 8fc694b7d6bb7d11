"""Bad input anywhere gives a clear error and loses nothing.

* Config values and files fail before any model loads, from the command line, within seconds, with
  the key (or file and line) named and no traceback.
* Unreadable data files (input=, seed files) name the file and the line.
* Degenerate model output (empty, echoing the prompt, not English, looping, endless) is rejected
  with a rule of its own, and the run goes on.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from selfinstruct.filtering.rules import check_degenerate, prompt_segments, repeated_ngram
from selfinstruct.files import DataError, read_records
from selfinstruct.llm import Completion
from selfinstruct.pipeline import run
from selfinstruct.prompts.instructions import build_prompt
from selfinstruct.filtering.rouge import RougeIndex
from selfinstruct.datasets.seeds import load_seeds
from selfinstruct.generation.instructions import filter_response
from selfinstruct.prompts.styles import make_style
from tests.conftest import compose, run_cli
from tests.fake_openai_server import FakeOpenAIServer, default_answer

SEED = {"id": "seed_task_0", "name": "x", "instruction": "Give three tips for staying healthy.",
        "instances": [{"input": "", "output": "Eat well."}], "is_classification": False}


def seed_lines(n: int) -> list[str]:
    return [json.dumps({**SEED, "id": f"seed_task_{i}", "instruction": f"{SEED['instruction']} {i}"})
            for i in range(n)]


# -- the command line --------------------------------------------------------------------------------

def bad_seed_file(tmp_path, body: bytes):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(body)
    return path


CASES = {
    "threshold": (["filters.rouge_threshold=1.5"], r"filters\.rouge_threshold"),
    "temperature": (["sampling.instructions.temperature=-1"], r"sampling\.instructions\.temperature"),
    "group option": (["llm=nope"], r"llm/nope"),
    "misspelt key": (["filters.rouge_treshold=0.5"], r"rouge_treshold"),
    "wrong type": (["llm.concurrency=lots"], r"llm\.concurrency|concurrency"),
    "missing seed file": (["seeds=file", "seeds.path=/nonexistent/seeds.jsonl"], r"seeds\.path"),
    "missing input": (["stages=[dedup]", "input=/nonexistent/data.jsonl"], r"/nonexistent/data\.jsonl"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_config_fails_fast_naming_the_key(case, tmp_path):
    overrides, pattern = CASES[case]
    started = time.monotonic()
    result = run_cli(["llm=fake", "tracking=none", f"hydra.run.dir={tmp_path / 'run'}",
                      f"llm.cache_dir={tmp_path / 'cache'}", *overrides], timeout=60)
    assert result.returncode != 0
    assert re.search(pattern, result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 20  # before any model could load
    assert not (tmp_path / "cache").exists()  # no model backend was built


@pytest.mark.parametrize("body, where", [
    (b"\n".join(l.encode() for l in seed_lines(2)) + b'\n{"id": "seed_task_9", "instr\n', ":3: not valid JSON"),
    (("\n".join(seed_lines(3)) + "\n").encode().replace(b"staying", b"st\xffying", 2)[:], ":1: not UTF-8"),
    (f'{json.dumps({**SEED, "is_classification": "no"})}\n'.encode(), ":1: field 'is_classification'"),
    (f'{json.dumps(SEED)}\n{json.dumps(SEED)}\n'.encode(), ":2: duplicate id"),
])
def test_bad_seed_file_names_file_and_line(tmp_path, body, where):
    path = bad_seed_file(tmp_path, body)
    with pytest.raises(DataError) as info:
        load_seeds(path)
    assert f"{path}{where}" in str(info.value)


def test_bad_seed_file_on_the_command_line(tmp_path):
    path = bad_seed_file(tmp_path, ("\n".join(seed_lines(4)) + "\n[1, 2]\n").encode())
    result = run_cli(["llm=fake", "tracking=none", "seeds=file", f"seeds.path={path}",
                      f"hydra.run.dir={tmp_path / 'run'}"], timeout=60)
    assert result.returncode != 0
    assert f"{path}:5: expected a JSON object" in result.stderr
    assert "Traceback" not in result.stderr


# -- input= files ----------------------------------------------------------------------------------

def test_unreadable_input_files_name_the_file_and_line(tmp_path):
    bad_json = tmp_path / "a.jsonl"
    bad_json.write_text('{"instruction": "ok"}\n{"instruction": "broken\n')
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"instruction": "ok"}\n\x89PNG\r\n\x1a\n\x00\x00')
    not_objects = tmp_path / "c.json"
    not_objects.write_text('[{"instruction": "ok"}, "just a string"]')
    expectations = [(bad_json, f"{bad_json}:2: not valid JSON"), (binary, f"{binary}:2: not UTF-8"),
                    (not_objects, f"{not_objects}: item 1"), (tmp_path, f"{tmp_path}: is a directory")]
    for path, message in expectations:
        with pytest.raises(DataError) as info:
            read_records(path)
        assert message in str(info.value)


def test_unreadable_input_on_the_command_line(tmp_path):
    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b'{"instruction": "Name three rivers in Europe."}\n\xff\xfe\x00garbage\n')
    result = run_cli(["llm=fake", "tracking=none", "stages=[dedup]", f"input={binary}",
                      f"hydra.run.dir={tmp_path / 'run'}"], timeout=60)
    assert result.returncode != 0
    assert f"{binary}:2: not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


# -- degenerate model output ------------------------------------------------------------------------

EXAMPLES = ["Give three tips for staying healthy.", "Translate the sentence into French.",
            "Suggest a name for a coffee shop."]


def test_degenerate_output_rules():
    prompt, _ = build_prompt(EXAMPLES, chat=False, max_list_number=16)
    segments = prompt_segments(prompt)
    assert check_degenerate("  \n", segments)[0] == "empty_response"
    assert check_degenerate("give three tips for staying  healthy", segments)[0] == "echo"
    header_sentence = "Every task is a single self-contained instruction, and the tasks differ from one " \
                      "another in topic and in kind."
    assert check_degenerate(header_sentence, segments)[0] == "echo"
    assert check_degenerate("Объясните правила игры в шахматы ребенку.", segments)[0] == "not_english"
    assert check_degenerate("请解释一下国际象棋的规则。", segments)[0] == "not_english"
    assert check_degenerate("Tell me a story story story story about a dog.", segments)[0] == "repetitive"
    assert check_degenerate("List the the days of the week, the days of the week, the days of the "
                            "week, the days of the week.", segments)[0] == "repetitive"
    for fine in ["Give three tips for staying healthy at work.",  # not identical: ROUGE-L's call
                 "Explain what a café au lait is to a tourist in Zürich.",
                 "Count from 1 to 10: 1 2 3 4 5 6 7 8 9 10.",
                 "Write a short poem where every line starts with the word no."]:
        assert check_degenerate(fine, segments) is None, fine
    assert repeated_ngram("no no no") is None and repeated_ngram("no no no no") == "no"


def filter_one(text: str, finish: str = "stop", overrides=()):
    cfg = compose(["llm=fake", *overrides])
    prompt, first = build_prompt(EXAMPLES, chat=False, max_list_number=16)
    index = RougeIndex(EXAMPLES)
    return filter_response(Completion(text, finish), first, "instructions/0", index, cfg.filters, make_style(cfg.prompt, []), prompt)


def test_filter_response_names_each_kind_of_bad_output():
    kept, rejected = filter_one("   ")
    assert not kept and [r["rule"] for r in rejected] == ["empty_response"]
    kept, rejected = filter_one(" Suggest a name for a coffee shop.\n5. Plan a trip to Rome for a family.")
    assert [r["rule"] for r in rejected] == ["echo"] and [k["instruction"] for k in kept] == \
        ["Plan a trip to Rome for a family."]
    loop = " Tell me more and more and more and more and more and more and more"
    assert [r["rule"] for r in filter_one(loop)[1]] == ["repetitive"]
    # endless: the paper discards a response cut at max_tokens whole; without that rule the loop
    # rule still catches the degenerate part
    assert {r["rule"] for r in filter_one(loop, "length")[1]} == {"truncated_response"}
    assert [r["rule"] for r in filter_one(loop, "length", ["filters=alpaca"])[1]] == ["repetitive"]
    # filters=none turns our rules off, as it does the paper's
    assert filter_one(" Объясните правила игры в шахматы.", overrides=["filters=none"])[0]


def degenerate_server_answer(prompt: str, body: dict) -> str:
    """A model gone wrong, by turns: the five kinds of bad output, then a good list."""
    examples = re.findall(r"^\d+\. (.+)$", prompt, re.MULTILINE)
    kind = sum(map(ord, prompt)) % 6
    return [" ",
            f" {examples[0]}",
            " 5 причин, почему стоит изучать математику в школе.",  # starts ASCII: passes the paper's rules
            " Say hello hello hello hello hello hello to everyone.",
            " Describe the the the the the the the the " * 40,  # endless: cut by max_tokens
            default_answer(prompt, body)][kind]  # a good list


def test_a_model_gone_wrong_is_rejected_with_reasons_and_the_run_completes(tmp_path):
    with FakeOpenAIServer(answer=degenerate_server_answer) as server:
        cfg = compose(["llm=openai_compatible", f"llm.base_url={server.base_url}", "llm.model=m",
                       "tracking=none", "stages=[instructions]", "num_instructions=6",
                       "sampling.instructions.max_tokens=60", f"llm.cache_dir={tmp_path / 'cache'}"])
        stats = run(cfg, tmp_path / "run")
    accepted = [json.loads(line) for line in (tmp_path / "run" / "instructions.jsonl").open()]
    assert len(accepted) == 6
    assert all(check_degenerate(a["instruction"]) is None for a in accepted)
    for rule in ("empty_response", "echo", "not_english", "repetitive", "truncated_response"):
        assert stats.get(f"quality/rejected/{rule}", 0) > 0, rule
