"""Our parsers and filters on the raw outputs of real runs of the original code (../shared/data/runs,
described in its SOURCES.md): they must reproduce what those runs kept."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter, defaultdict

import pytest

from selfinstruct.filtering.rules import check_instruction
from selfinstruct.filtering.instance_rules import filter_instances
from selfinstruct.llm import Completion
from selfinstruct.prompts import alpaca
from selfinstruct.prompts.classify import parse_answer
from selfinstruct.prompts.instances import parse_instances
from selfinstruct.prompts.instructions import parse_instruction_list
from selfinstruct.filtering.rouge import RougeIndex, rouge_l_f
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
    # The paper's rules only (the instance-level `repetitive` is our addition, in filters=default).
    return compose(["filters=paper"]).filters


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


def responses(records: list[dict], text_of) -> list[list[dict]]:
    """The records of a machine_generated_instructions.jsonl grouped by response, in file order:
    the original code repeats a response's metadata on each instruction it accepted from it (a
    response that gave none is not in the file, and it left the pool unchanged)."""
    return [list(g) for _, g in itertools.groupby(records, key=lambda r: (r["request_idx"], text_of(r)))]


def original_split(text: str) -> list[str]:
    """What the original code makes of a bootstrap response before its filters (a fact of its
    code, as the paper's appendix and DESIGN.md describe the prompt): the text cut at every line
    break followed by a number, an optional space, a dot and a space; each piece with its
    whitespace collapsed and str.capitalize()'d; empty pieces dropped."""
    pieces = (re.sub(r"\s+", " ", p).strip().capitalize() for p in re.split(r"\n\d+\s?\. ", text))
    return [p for p in pieces if p]


def test_gpt35_bootstrap_replays_exactly():
    """lprlpr666/Mini-LIMA (gpt-3.5-turbo-instruct, the original code, the original 175 seeds):
    every raw bootstrap response replayed through our instruction filter, in file order with the
    pool growing as in that run, with the paper's rules (filters=paper) and the original's
    capitalisation (prompt.capitalize=python):
    - our parser gives the exact candidate list of the original's split, per response;
    - we accept exactly the instructions that run accepted from it, in order;
    - each one's avg_similarity_score (mean ROUGE-L to the pool it entered) is bit-identical, and
      so are its 10 most_similar scores;
    - every most_similar score that run recorded (11,660) equals our exact ROUGE-L F."""
    run = shared_path("runs", "lprlpr666__Mini-LIMA")
    seeds = load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
    cfg = compose(["filters=paper", "prompt.capitalize=python"])
    style = make_style(cfg.prompt, seeds)
    records = jsonl(run / "machine_generated_instructions.jsonl")
    assert len(records) == 1166

    def text(r):
        return r["metadata"]["response"]["choices"][0]["text"]

    groups = responses(records, text)
    assert len(groups) == 627
    index = RougeIndex([t.instruction for t in seeds])
    for group in groups:
        prompt, response = group[0]["metadata"]["prompt"], group[0]["metadata"]["response"]["choices"][0]
        first = int(re.search(r"(\d+)\.\s*$", prompt).group(1))
        assert [t["instruction"] for t in style.parse_tasks(response["text"], first)] == original_split(response["text"])
        kept, _ = filter_response(Completion(response["text"], response["finish_reason"]), first,
                                  f"instructions/{group[0]['request_idx']}", index, cfg.filters, style, prompt)
        assert [k["instruction"] for k in kept] == [r["instruction"] for r in group]
        for ours, theirs in zip(kept, group):
            assert ours["avg_similarity_score"] == theirs["avg_similarity_score"]
            assert sorted(ours["most_similar"].values()) == sorted(theirs["most_similar"].values())
            assert ours["response"] == response["text"] and ours["finish_reason"] == "stop"
    scores = [(r["instruction"], other, score) for r in records for other, score in r["most_similar"].items()]
    assert len(scores) == 11660
    assert [s for s in scores if rouge_l_f(s[0], s[1]) != s[2]] == []


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


def test_falcon_run_what_the_original_accepted_and_what_we_reject():
    """han-shanshan/self-instruct_for_falcon (falcon-7b through a Hugging Face pipeline, which
    returns the prompt followed by the continuation; its pool: seed tasks 148 and 150-158).

    What the original accepted: its split of the whole text, with the paper's rules and ROUGE-L,
    kept the echoed prompt header "Come up with a series of tasks:" as an instruction (the 8 echoed
    seeds fell to ROUGE-L). filters=paper does exactly the same, to the last bit of
    avg_similarity_score. What we reject by default (filters=default): every echoed line of the
    prompt, as `echo`, so only the model's own text is kept. Nothing crashes any parser."""
    run = shared_path("runs", "han-shanshan__self-instruct_for_falcon")
    seeds = [t for t in load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
             if t.id in {"seed_task_148", *(f"seed_task_{n}" for n in range(150, 159))}]
    seed_texts = {t.instruction for t in seeds}
    records = jsonl(run / "machine_generated_instructions.jsonl")
    assert "Come up with a series of tasks:" in [r["instruction"] for r in records]  # the original's
    groups = responses(records, lambda r: r["metadata"][0]["generated_text"])
    assert [len(g) for g in groups] == [2, 1, 2]

    def replay(overrides):
        cfg = compose(["prompt.capitalize=python", *overrides])
        style, index = make_style(cfg.prompt, seeds), RougeIndex([t.instruction for t in seeds])
        for group in groups:
            text = group[0]["metadata"][0]["generated_text"]
            prompt = text[: re.search(r"\n9\.", text).end()]  # the header, 8 numbered seeds and "9."
            yield group, text, prompt, *filter_response(Completion(text, "stop"), 9, "falcon", index, cfg.filters,
                                                        style, prompt)

    for group, _, _, kept, rejected in replay(["filters=paper"]):
        assert [(k["instruction"], k["avg_similarity_score"]) for k in kept] == \
            [(r["instruction"], r["avg_similarity_score"]) for r in group]
        assert {r["rule"] for r in rejected} == {"rouge"}
    for group, text, prompt, kept, rejected in replay([]):
        by_candidate = {x["candidate"]: x["rule"] for x in rejected}
        assert by_candidate["Come up with a series of tasks:"] == "echo"
        echoed = [c for c in by_candidate if c.lower() in {t.lower() for t in seed_texts}]
        assert len(echoed) == 8 and {by_candidate[c] for c in echoed} == {"echo"}
        continuation = " ".join(text[len(prompt):].split()).lower()
        assert kept and all(k["instruction"].lower() in continuation for k in kept)  # only the model's own text

    # The pipeline reports no finish reason; these texts stop mid-item ("Given a sentence, tell
    # me"), i.e. at its new-token limit, and such responses are discarded whole.
    cfg = compose([])
    for group in groups:
        text = group[0]["metadata"][0]["generated_text"]
        kept, rejected = filter_response(Completion(text, "length"), 9, "falcon", RougeIndex(sorted(seed_texts)),
                                         cfg.filters, make_style(cfg.prompt, []), text)
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


@pytest.mark.parametrize("run_name, file_name, size", [
    ("AliceShen122__self-instruct", "gpt3_finetuning_data_401.jsonl", 401),
    ("lprlpr666__Mini-LIMA", "gpt3_finetuning_data_1756.jsonl", 1756),
])
def test_finetuning_formats_of_real_runs(run_name, file_name, size):
    """The original code's finetuning files (its instances plus the 175 seed tasks): every
    prompt/completion pair is one of our prepare formats applied to its source instance, with the
    input as it is or made plain (the single field name dropped, blank lines single), and each of
    our 13 formats occurs there. So our formats are the original's set, no more and no fewer."""
    from selfinstruct.generation.prepare import WITH_INPUT, WITHOUT_INPUT, plain_input, render

    run = shared_path("runs", run_name)
    seeds = load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
    sources = [(r["instruction"].strip(), r["input"].strip(), r["output"].strip())
               for r in jsonl(run / "all_generated_instances.jsonl")]
    sources += [(t.instruction.strip(), i.input.strip(), i.output.strip()) for t in seeds for i in t.instances]
    by_output = defaultdict(list)
    for source in sources:
        by_output[source[2]].append(source)
    pairs = jsonl(run / file_name)
    assert len(pairs) == size == len(sources)
    used: Counter = Counter()
    for pair in pairs:
        assert pair["completion"].endswith("<|endoftext|>")
        completion = pair["completion"][: -len("<|endoftext|>")]
        shapes = set()
        for instruction, inp, out in by_output[completion.removeprefix(" ")]:
            for shown in {inp, plain_input(inp)}:
                for k, template in enumerate(WITH_INPUT if shown else WITHOUT_INPUT):
                    space = " " if template[-1] else ""
                    if render(template, instruction, shown) == pair["prompt"] and space + out == completion:
                        shapes.add((bool(shown), k))
        assert shapes, pair
        used.update(shapes)
    assert set(used) == {(True, k) for k in range(len(WITH_INPUT))} | {(False, k) for k in range(len(WITHOUT_INPUT))}


@pytest.mark.parametrize("run_name, replays", [
    ("minpeter__stanford_alpaca", True),      # unmodified Alpaca prompt, Llama 3.3 70B
    ("chantomkit__COMP0087_SNLP", True),      # Alpaca with a modified prompt, gpt-3.5-turbo-instruct
    ("Doffery__stanford_alpaca", False),      # GPT-4, family-medicine prompt
])
def test_alpaca_runs_parse_and_score_alike(run_name, replays):
    """No run in ../shared/data/runs keeps Alpaca's raw responses: the three regen.json files hold
    the parsed tasks only (instruction, input, output, most_similar_instructions,
    avg_similarity_score). So the parsing test is on what there is: every real task, written in our
    Alpaca format (prompt=alpaca), is read back by our parser exactly (instruction whitespace
    collapsed; an input "None" reads as no input, like Alpaca's <noinput>). And every
    most_similar_instructions score Alpaca recorded equals our exact ROUGE-L F; where regen.json
    is one run's pool in order (not Doffery's: 1,115 unique of 1,161 instructions, so not one
    pool), each avg_similarity_score replays bit-identically too, pool = seeds + the tasks before."""
    tasks = json.loads(shared_path("runs", run_name, "regen.json").read_text())
    seeds = load_seeds(shared_path("self-instruct", "data", "seed_tasks.jsonl"))
    index = RougeIndex([t.instruction for t in seeds])
    for task in tasks:
        text = alpaca.render_task(4, task["instruction"], task["input"], task["output"])
        no_input = task["input"].strip().lower() in ("", "none", "<noinput>")
        assert alpaca.parse_tasks(text.split("Instruction:", 1)[1], 4, 20) == [
            {"instruction": " ".join(task["instruction"].split()), "input": "" if no_input else task["input"].strip(),
             "output": task["output"].strip()}]
        for other, score in task["most_similar_instructions"].items():
            assert rouge_l_f(task["instruction"], other) == score
        if replays:
            assert index.mean_score(task["instruction"], len(index)) == task["avg_similarity_score"]
        index.add(task["instruction"])
