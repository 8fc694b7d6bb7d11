"""Our parsers and filters on the raw outputs of real runs of the original code (../shared/data/runs,
described in its SOURCES.md): they must reproduce what those runs kept."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict

import pytest

from selfinstruct.filtering.rules import check_instruction
from selfinstruct.filtering.instance_rules import filter_instances
from selfinstruct.llm import Completion
from selfinstruct.prompts import alpaca
from selfinstruct.prompts.classify import parse_answer
from selfinstruct.prompts.instances import parse_instances
from selfinstruct.prompts.instructions import parse_instruction_list
from selfinstruct.filtering.rouge import RougeIndex
from selfinstruct.datasets.seeds import load_seeds
from selfinstruct.generation.instructions import filter_response
from selfinstruct.prompts.styles import make_style
from tests.conftest import compose, shared_path


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def finish_reason(metadata):
    response = (metadata or {}).get("response") if isinstance(metadata, dict) else None
    return response["choices"][0]["finish_reason"] if response else None


@pytest.fixture(scope="module")
def paper_filters():
    # The paper's rules only: `repetitive` (reject_degenerate) is our addition.
    return compose(["filters.reject_degenerate=false"]).filters


def test_davinci_instances_give_that_runs_dataset(paper_filters):
    """AliceShen122/self-instruct (davinci, original prompt format): the raw instance completions,
    with that run's Yes/No labels, parsed and filtered by our code give the (instruction, input,
    output) set of its all_generated_instances.jsonl exactly.

    The one difference: in classification (output-first) completions the original code keeps an
    "Input:" marker at the start of an input ("Input: Product 1 is ..."), ours removes it as it does
    for input-first completions. That is normalised here, and it concerns exactly 3 records."""
    run = shared_path("runs", "AliceShen122__self-instruct")
    labels = {r["instruction"]: parse_answer(r["is_classification"])
              for r in jsonl(run / "is_clf_or_not_davinci_template_1.jsonl")}
    assert set(labels.values()) == {True, False}  # " Yes" / " No" only in this run
    ours: dict[str, set] = defaultdict(set)
    tasks = jsonl(run / "machine_generated_instances.jsonl")
    for task in tasks:
        pairs = parse_instances(task["raw_instances"], labels[task["instruction"]])
        kept, _ = filter_instances(pairs, truncated=finish_reason(task["instance_metadata"]) == "length",
                                   f=paper_filters, rng=random.Random(0))
        ours[task["instruction"].strip()].update(kept)
    theirs: dict[str, set] = defaultdict(set)
    marker_removed = 0
    for r in jsonl(run / "all_generated_instances.jsonl"):
        inp = r["input"]
        if labels[r["instruction"]] and inp.startswith("Input:"):
            inp, marker_removed = inp[len("Input:"):].strip(), marker_removed + 1
        theirs[r["instruction"]].add((inp, r["output"]))
    assert marker_removed == 3
    assert len(tasks) == 185 and len(theirs) == 151
    # No task of this run keeps more than 5 (its stop sequence ended completions before a 6th
    # example), so the random 5-per-task draw never mattered and the sets must be equal.
    assert max(len(v) for v in ours.values()) <= 5
    assert {k: v for k, v in ours.items() if v} == dict(theirs)


def test_gpt35_instruction_responses_contain_every_accepted_instruction():
    """lprlpr666/Mini-LIMA (gpt-3.5-turbo-instruct): each raw bootstrap response, parsed by our
    numbered-list parser from the number its prompt ended with, yields every instruction that run
    accepted from it, and each passes our rule filters. The original code applies Python's
    str.capitalize() to candidates (upper-cases the first letter, lower-cases the rest: every
    accepted instruction of that run is lower case after its first letter), so the comparison does
    the same; prompt.capitalize only upper-cases the first letter."""
    run = shared_path("runs", "lprlpr666__Mini-LIMA")
    filters = compose([]).filters
    records = jsonl(run / "machine_generated_instructions.jsonl")
    assert len(records) == 1166
    for r in records:
        first = int(re.search(r"(\d+)\.\s*$", r["metadata"]["prompt"]).group(1))
        text = r["metadata"]["response"]["choices"][0]["text"]
        candidates = [c.capitalize() for c in parse_instruction_list(text, first)]
        assert r["instruction"] in candidates, r["instruction"]
        assert check_instruction(r["instruction"], filters) is None, r["instruction"]


def test_classification_labels_of_real_runs():
    """The raw Yes/No answers of three runs: ours agrees with the paper's rule (the stripped answer
    is yes) except that we also read "Yes, this ..." as yes; free text is neither (None)."""
    runs = shared_path("runs")
    answers = [r["is_classification"] for name in (
        "lprlpr666__Mini-LIMA/is_clf_or_not_gpt-3.5-turbo-instruct_template_1.jsonl",
        "AliceShen122__self-instruct/is_clf_or_not_davinci_template_1.jsonl",
        "FedericoMansutti__Auto-Instruct/is_clf_or_not_gpt-4o_template_1.jsonl") for r in jsonl(runs / name)]
    assert len(answers) == 2000 + 1241 + 10021
    differ = [a for a in answers if bool(parse_answer(a)) != (a.strip() in ("Yes", "yes", "YES"))]
    assert sorted(differ) == ["Yes, the", "Yes, this"]
    unreadable = [a for a in answers if parse_answer(a) is None]
    assert len(unreadable) == 5 and all(a.startswith(("The task", "To determine")) for a in unreadable)


def test_degenerate_falcon_outputs_are_rejected_with_reasons(tmp_path):
    """han-shanshan/self-instruct_for_falcon (falcon-7b through a Hugging Face pipeline, which
    returns the prompt followed by the continuation): nothing crashes any parser, and what is
    echoed of the prompt never gets through."""
    run = shared_path("runs", "han-shanshan__self-instruct_for_falcon")
    seeds = load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
    seed_texts = {t.instruction for t in seeds}
    cfg = compose([])

    # Instructions: the prompt was the header, 8 numbered seed instructions and "9.".
    for r in jsonl(run / "machine_generated_instructions.jsonl"):
        text = r["metadata"][0]["generated_text"]
        prompt = text[: re.search(r"\n9\.", text).end()]
        index = RougeIndex(sorted(seed_texts))
        kept, rejected = filter_response(Completion(text, "stop"), 9, "falcon", index, cfg.filters, make_style(cfg.prompt, []), prompt)
        by_candidate = {x["candidate"]: x["rule"] for x in rejected}
        assert by_candidate["Come up with a series of tasks:"] == "echo"
        echoed = [c for c in by_candidate if c in seed_texts]
        assert len(echoed) == 8 and {by_candidate[c] for c in echoed} == {"echo"}
        continuation = " ".join(text[len(prompt):].split())
        assert all(k["instruction"] in continuation for k in kept)  # only the model's own text
        # The pipeline reports no finish reason; these texts stop mid-item ("Given a sentence,
        # tell me"), i.e. at its new-token limit, and such responses are discarded whole.
        kept, rejected = filter_response(Completion(text, "length"), 9, "falcon", index, cfg.filters, make_style(cfg.prompt, []), prompt)
        assert kept == [] and {x["rule"] for x in rejected} == {"truncated_response"}
        for parse in (lambda t: parse_instruction_list(t, 9), lambda t: alpaca.parse_tasks(t, 9, 20)):
            parse(text)

    # Classification labels are plain " Yes" / " No".
    assert [parse_answer(r["is_classification"]) for r in jsonl(run / "is_clf_or_not_davinci_template_1.jsonl")] \
        == [True, True, True, False, False]

    # Instances: each raw completion is the whole few-shot prompt again plus one word. The parser
    # stops at the first "Task:" line (another task), so the echoed demonstrations are never taken
    # for instances: every task is a parse failure, in either format.
    for r in jsonl(run / "machine_generated_instances.jsonl"):
        for output_first in (False, True):
            assert parse_instances(r["raw_instances"], output_first) == []
            parse_instances(r["raw_instances"], output_first, chat=True)  # no crash either
