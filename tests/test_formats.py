"""Dataset format detection and normalisation (selfinstruct/formats.py) on the real files of every
known format in ../shared/data/runs, against counts taken from the files directly."""

from __future__ import annotations

import json

import pytest

from selfinstruct.datasets.formats import load_dataset, load_run_dir, parse_raw_instances, split_finetuning_prompt
from selfinstruct.files import DataError
from tests.conftest import shared_path


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_alpaca_json_list():
    path = shared_path("runs", "Doffery__stanford_alpaca", "regen.json")
    raw = json.loads(path.read_text())
    ds = load_dataset(path)
    assert ds.format == "instances" and ds.has_instances
    assert len(ds.records) == len(raw) == 1161
    assert len({r["instruction"] for r in ds.records}) == 1115
    assert all(r["is_classification"] is None for r in ds.records)  # Alpaca has no labels
    assert ds.records[0]["most_similar"] == raw[0]["most_similar_instructions"]


def test_classification_stage_file_counts_only_exact_yes():
    path = shared_path("runs", "FedericoMansutti__Auto-Instruct", "is_clf_or_not_gpt-4o_template_1.jsonl")
    raw = jsonl(path)
    ds = load_dataset(path)
    assert ds.format == "classification" and not ds.has_instances
    assert len(ds.records) == len(raw) == 10021
    assert all(r["output"] is None for r in ds.records)
    # "Yes, this" and "No, the" are free text, not the answer "Yes" (as the original code reads it)
    assert sum(r["is_classification"] for r in ds.records) == sum(r["is_classification"].strip() == "Yes" for r in raw) == 161


def test_machine_generated_instructions():
    path = shared_path("runs", "kissshhot__self-instruct", "machine_generated_instructions.jsonl")
    ds = load_dataset(path)
    assert ds.format == "instructions" and len(ds.records) == 306
    assert all(r["is_classification"] is None and r["input"] is None for r in ds.records)


def test_raw_instances_are_parsed_from_the_completions():
    path = shared_path("runs", "AliceShen122__self-instruct", "machine_generated_instances.jsonl")
    raw = jsonl(path)
    ds = load_dataset(path)
    assert ds.format == "selfinstruct_raw_instances"
    assert len({r["instruction"] for r in ds.records}) == len({r["instruction"].strip() for r in raw})
    first = [r for r in ds.records if r["instruction"] == raw[0]["instruction"].strip()]
    # "Example 1\nInput: 123456789\nOutput: 9876543210\nExample 2\nInput: -123456789\nOutput: -9876543210"
    assert [(r["input"], r["output"]) for r in first] == [("123456789", "9876543210"),
                                                          ("-123456789", "-9876543210")]
    # the filtered instances of the same run (all_generated_instances) hold 226 of them
    assert len([r for r in ds.records if r["output"] is not None]) >= 226


def test_raw_instance_parser():
    clf, pairs = parse_raw_instances("Class label: Positive\nSentence: I love it.\nClass label: Negative\n"
                                     "Sentence: I hate it.", truncated=False)
    assert clf and pairs == [("Sentence: I love it.", "Positive"), ("Sentence: I hate it.", "Negative")]
    clf, pairs = parse_raw_instances("Example 1\nInput: a\nOutput: b\nExample 2\nInput: c\nOutput: d",
                                     truncated=True)
    assert not clf and pairs == [("a", "b")]  # the cut-off last instance is dropped
    assert parse_raw_instances("Output: 42", truncated=False) == (False, [("", "42")])
    assert parse_raw_instances("no structure at all", truncated=False) == (False, [])


def test_class_label_variant():
    path = shared_path("runs", "FedericoMansutti__Auto-Instruct", "machine_generated_instances.jsonl")
    ds = load_dataset(path)
    assert ds.format == "class_label_instances"
    assert len(ds.records) == 508 and len({r["instruction"] for r in ds.records}) == 161
    assert all(r["is_classification"] for r in ds.records)


def test_finetuning_data_recovers_the_instances():
    """gpt3_finetuning_data_1756 is all_generated_instances (1,581) plus the 175 seed tasks, written
    in random prompt formats: parsing it back gives those instructions."""
    ft = load_dataset(shared_path("runs", "lprlpr666__Mini-LIMA", "gpt3_finetuning_data_1756.jsonl"))
    inst = load_dataset(shared_path("runs", "lprlpr666__Mini-LIMA", "all_generated_instances.jsonl"))
    seeds = {json.loads(line)["instruction"].strip() for line in
             shared_path("self-instruct", "data", "seed_tasks.jsonl").read_text().splitlines()}
    assert ft.format == "finetuning" and len(ft.records) == 1756
    parsed = {r["instruction"] for r in ft.records}
    expected = {r["instruction"] for r in inst.records} | seeds
    # multi-line instructions cannot be told from their input; nearly all come back exactly
    assert len(parsed & expected) / len(expected) > 0.95
    assert not any(r["output"].endswith("<|endoftext|>") for r in ft.records)


def test_finetuning_prompt_formats():
    assert split_finetuning_prompt("Task: Sort the list.\nInput: 3, 1, 2\nOutput:") == ("Sort the list.", "3, 1, 2")
    assert split_finetuning_prompt("Sort the list.\n\n3, 1, 2\n\n") == ("Sort the list.", "3, 1, 2")
    assert split_finetuning_prompt("Tell a joke. Output:") == ("Tell a joke.", "")


def test_unknown_format_names_the_file_and_what_was_expected(tmp_path):
    path = tmp_path / "mystery.jsonl"
    path.write_text('{"text": "hello", "label": 1}\n')
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert str(path) in message and "['label', 'text']" in message and "instruction" in message


def test_a_record_lacking_the_detected_format_fails_naming_it(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: the record lacks \['instruction', 'output'\]"):
        load_dataset(path)


def test_run_dir_joins_instructions_labels_and_instances(tmp_path):
    (tmp_path / "instructions.jsonl").write_text(
        '{"id": "m0", "instruction": "Sort the numbers.", "most_similar": {"Sort words.": 0.5}}\n'
        '{"id": "m1", "instruction": "Is this spam?"}\n')
    (tmp_path / "classification.jsonl").write_text(
        '{"id": "m0", "is_classification": false, "raw": " No"}\n{"id": "m1", "is_classification": true, "raw": " Yes"}\n')
    (tmp_path / "data.jsonl").write_text(
        '{"id": "m0", "instruction": "Sort the numbers.", "input": "3 1 2", "output": "1 2 3", "is_classification": false}\n')
    ds = load_run_dir(tmp_path)
    assert ds.has_instances
    by = {r["instruction"]: r for r in ds.records}
    assert by["Sort the numbers."]["output"] == "1 2 3"
    assert by["Sort the numbers."]["most_similar"] == {"Sort words.": 0.5}
    assert by["Is this spam?"] == {"instruction": "Is this spam?", "input": None, "output": None,
                                   "is_classification": True}
