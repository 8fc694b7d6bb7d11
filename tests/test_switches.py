"""The switches for the paper's and the original code's behaviour (issue 15): filters=paper against
filters=default, and each prompt, sampling, prepare and analyze switch, each tested so that the test
fails without the switch. The real-data fidelity tests are in test_fidelity.py."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from omegaconf import OmegaConf

from selfinstruct.analysis.diversity import find_object, find_verb
from selfinstruct.config import ConfigError, validate
from selfinstruct.datasets.seeds import Instance, SeedTask, load_seeds
from selfinstruct.files import read_jsonl
from selfinstruct.filtering.instance_rules import filter_instances
from selfinstruct.filtering.rouge import RougeIndex, rouge_l_f
from selfinstruct.generation.instances import instance_sampling
from selfinstruct.generation.instructions import filter_response
from selfinstruct.llm import Completion, Sampling
from selfinstruct.pipeline import run
from selfinstruct.prompts import instructions
from selfinstruct.prompts.styles import make_style
from tests.conftest import compose, run_cli

PAPER_RULES = {"too_short", "too_long", "blacklist", "banned_prefix", "punctuation_start", "non_ascii_start",
               "rouge", "truncated_response"}
BOOKKEEPING = {"parse_failure", "request_error"}  # a response without candidates, a failed request


def fake(tmp_path, *overrides) -> list[str]:
    return ["llm=fake", "tracking=none", f"llm.cache_dir={tmp_path / 'cache'}", *overrides]


# --- filters=paper is the paper's rules; filters=default adds the degenerate-output rules ---------

PROMPT = "Below is a list.\n1. Explain the rules of chess to a child.\n2. Name three rivers in Spain.\n3."
DEGENERATE = (" Explain the rules of chess to a child.\n"        # an echo of the prompt
              "4. Say in Russian: объясните правила игры в шахматы ребенку.\n"   # not English
              "5. Tell me a story story story story story story about a cat.\n"  # repetitive
              "6. Describe the water cycle for a class of ten-year-olds.")


@pytest.mark.parametrize("filters, rules", [
    ("paper", {}),
    ("default", {"Explain the rules of chess to a child.": "echo",
                 "Say in Russian: объясните правила игры в шахматы ребенку.": "not_english",
                 "Tell me a story story story story story story about a cat.": "repetitive"}),
])
def test_filters_paper_has_no_degenerate_output_rules(filters, rules):
    cfg = compose([f"filters={filters}"])
    kept, rejected = filter_response(Completion(DEGENERATE, "stop"), 3, "instructions/0", RougeIndex(),
                                     cfg.filters, make_style(cfg.prompt, []), PROMPT)
    assert {r["candidate"]: r["rule"] for r in rejected} == rules
    assert len(kept) == 4 - len(rules)
    # an empty response is a parse failure under the paper's rules, `empty_response` under ours
    _, (empty,) = filter_response(Completion(" \n", "stop"), 3, "instructions/1", RougeIndex(), cfg.filters,
                                  make_style(cfg.prompt, []), PROMPT)
    assert empty["rule"] == ("parse_failure" if filters == "paper" else "empty_response")
    # the instance-level `repetitive` rule is ours too
    pairs = [("a cat", "meow meow meow meow meow"), ("a dog", "It barks.")]
    kept_pairs, losses = filter_instances(pairs, truncated=False, f=cfg.filters, rng=random.Random(0))
    assert len(kept_pairs) == (2 if filters == "paper" else 1)
    assert losses.get("repetitive", 0) == (0 if filters == "paper" else 1)


def test_filters_default_is_the_default_and_is_paper_plus_degenerate_rules():
    default, paper = compose([]).filters, compose(["filters=paper"]).filters
    assert default.name == "default" and default.reject_degenerate and not paper.reject_degenerate
    differ = {k for k in OmegaConf.to_container(default) if default[k] != paper[k]}
    assert differ == {"name", "reject_degenerate", "reject_duplicates"}
    assert compose(["prompt=alpaca"]).filters.name == "alpaca"
    assert not compose(["filters=none"]).filters.reject_degenerate


def test_cli_filters_paper_rejects_by_the_papers_rules_only(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(fake(tmp_path, "filters=paper", "num_instructions=30",
                          "stages=[instructions,classify,instances,prepare]", f"hydra.run.dir={run_dir}"))
    assert result.returncode == 0, result.stderr[-3000:]
    rules = {r["rule"] for r in read_jsonl(run_dir / "rejected.jsonl")}
    assert rules and rules <= PAPER_RULES | BOOKKEEPING
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["quality/instance_filter/repetitive"] == 0


# --- prompt switches ------------------------------------------------------------------------------

def seed(text: str, clf: bool = True) -> SeedTask:
    return SeedTask(id=text[:10], name="", instruction=text, is_classification=clf,
                    instances=(Instance("", "x"),))


def test_classification_only_seeds_ask_for_classification_tasks(tmp_path):
    """With seeds.classification_only=true the original's prompt asks for classification tasks
    (prompt.classification_header, default true); false keeps the general header."""
    for chat in (False, True):
        prompt_cfg = compose(["prompt=selfinstruct_chat"] if chat else []).prompt
        asking = make_style(prompt_cfg, [seed("Is it spam?")], classification_only=True)
        prompt, _ = asking.instruction_prompt(random.Random(0), [], 0)
        assert "classification task" in prompt
        general = make_style(prompt_cfg, [seed("Is it spam?")])
        assert "classification task" not in general.instruction_prompt(random.Random(0), [], 0)[0]
    off = compose(["prompt.classification_header=false"]).prompt
    assert make_style(off, [seed("Is it spam?")], classification_only=True).instruction_prompt(
        random.Random(0), [], 0)[0].startswith(instructions.COMPLETION_HEADER)
    # and the pipeline passes seeds.classification_only on (the prompt, as kept with keep_prompt)
    run(compose(fake(tmp_path, "seeds.classification_only=true", "prompt.keep_prompt=true", "num_instructions=2",
                     "stages=[instructions]")), tmp_path / "run")
    assert all(r["prompt"].startswith(instructions.CLASSIFICATION_HEADER)
               for r in read_jsonl(tmp_path / "run" / "instructions.jsonl"))


def test_in_context_instructions_are_normalised_to_one_line():
    """The original's seed "Question: in which year did Yao Ming retire?\\nAnswer:" breaks the
    numbered list when shown verbatim (prompt.normalize_examples=false)."""
    original = load_seeds(_original_seeds())
    eight = [t for t in original if t.instruction.endswith("\nAnswer:")] + original[:7]
    assert len(eight) == 8
    for normalize in (True, False):
        prompt_cfg = compose([f"prompt.normalize_examples={str(normalize).lower()}"]).prompt
        prompt, first = make_style(prompt_cfg, eight).instruction_prompt(random.Random(0), [], 0)
        items = prompt[len(instructions.COMPLETION_HEADER):].split("\n")
        one_line = [line.split(". ", 1)[0] for line in items] == [str(k) for k in range(1, 9)] + ["9."] \
            and not any(line.endswith(":") for line in items)
        assert one_line == normalize
    assert instructions.one_line("Fix  the\ncode:\n") == "Fix the code"


def _original_seeds():
    from tests.conftest import shared_path

    return shared_path("self-instruct", "data", "seed_tasks.jsonl")


def test_paper_sampling_has_the_original_four_stops():
    stop = list(compose([]).sampling.instructions.stop)
    assert stop == ["\n\n", "\n16", "16.", "16 ."]  # at most 4: the OpenAI API's limit
    chat = make_style(compose(["prompt=selfinstruct_chat"]).prompt, [])
    assert chat.sampling("instructions", Sampling(stop=stop)).stop == ["\n16", "16.", "16 ."]


@pytest.mark.parametrize("how, expected", [
    ("none", "tell me what NASA does."),
    ("first", "Tell me what NASA does."),
    ("python", "Tell me what nasa does."),  # str.capitalize(): the original's
])
def test_capitalize(how, expected):
    style = make_style(compose([f"prompt.capitalize={how}"]).prompt, [])
    assert style.parse_tasks(" tell me what NASA does.\n10. next task here", 9)[0]["instruction"] == expected


def test_capitalize_was_a_boolean_and_says_how_to_migrate():
    for old, new in (("true", "first"), ("false", "none")):
        with pytest.raises(ConfigError, match=rf"prompt\.capitalize.*{old} is now {new}"):
            validate(compose([f"prompt.capitalize={old}"]))


def test_classification_instance_requests_get_their_own_max_tokens(tmp_path):
    """sampling.instances_classification_max_tokens (the original: 300, else 350) reaches the
    backend for classification tasks only: the fake cuts completions at max_tokens words."""
    params = instance_sampling(compose(["sampling.instances_classification_max_tokens=300"]).sampling)
    assert (params[True].max_tokens, params[False].max_tokens) == (300, 350)
    default = instance_sampling(compose([]).sampling)
    assert default[True] is default[False] and default[True].max_tokens == 350
    run(compose(fake(tmp_path, "num_instructions=24", "stages=[instructions,classify,instances]",
                     "sampling.instances_classification_max_tokens=2")), tmp_path / "run")
    raw = read_jsonl(tmp_path / "run" / "instances_raw.jsonl")
    finish = {clf: {r["finish_reason"] for r in raw if r["is_classification"] == clf} for clf in (True, False)}
    assert finish == {True: {"length"}, False: {"stop"}}


def test_all_labels_drops_the_example_stop_of_output_first_requests():
    """prompt.all_labels (the original: an output-first completion lists every label, then 5 are
    sampled): no "Example 6" stop for classification requests; the instance cap samples 5."""
    params = Sampling(stop=["Example 6", "Task:"])
    ours = make_style(compose([]).prompt, [])
    assert ours.sampling("instances", params, output_first=True).stop == ["Example 6", "Task:"]
    theirs = make_style(compose(["prompt.all_labels=true"]).prompt, [])
    assert theirs.sampling("instances", params, output_first=True).stop == ["Task:"]
    assert theirs.sampling("instances", params, output_first=False).stop == ["Example 6", "Task:"]
    chat = make_style(compose(["prompt=selfinstruct_chat", "prompt.all_labels=true"]).prompt, [])
    assert chat.sampling("instances", params, output_first=True).stop == []
    labels = [(f"input {k}", f"label {k}") for k in range(8)]
    kept, losses = filter_instances(labels, truncated=False, f=compose([]).filters, rng=random.Random(0))
    assert len(kept) == 5 and losses["over_cap"] == 3


def test_records_keep_avg_similarity_and_the_raw_response(tmp_path):
    """instructions.jsonl gains avg_similarity_score (mean ROUGE-L F to the pool the instruction
    entered: seeds and the instructions accepted before it), the response and its finish reason;
    with prompt.keep_prompt the prompt, also in instances_raw.jsonl."""
    stages = "stages=[instructions,classify,instances]"
    run(compose(fake(tmp_path, "num_instructions=6", stages, "prompt.keep_prompt=true")), tmp_path / "kept")
    accepted = read_jsonl(tmp_path / "kept" / "instructions.jsonl")
    pool = [t.instruction for t in load_seeds()]
    for r in accepted:
        assert r["avg_similarity_score"] == float(np.mean([rouge_l_f(r["instruction"], p) for p in pool]))
        pool.append(r["instruction"])
        assert r["instruction"] in r["response"] and r["finish_reason"] == "stop"
        assert r["prompt"].endswith(".") and r["prompt"].startswith(instructions.COMPLETION_HEADER)
    raw = read_jsonl(tmp_path / "kept" / "instances_raw.jsonl")
    assert all(r["prompt"].rstrip().endswith("Example 1") for r in raw)
    run(compose(fake(tmp_path, "num_instructions=6", stages)), tmp_path / "default")
    default = read_jsonl(tmp_path / "default" / "instructions.jsonl")
    assert [{k: v for k, v in r.items() if k != "prompt"} for r in accepted] == default
    assert not any("prompt" in r for r in default + read_jsonl(tmp_path / "default" / "instances_raw.jsonl"))


# --- prepare.num_instructions: the data-size curve ------------------------------------------------

def prepared(run_dir) -> tuple[set, set, int]:
    finetune_instructions = {r["instruction"] for r in json.loads((run_dir / "alpaca.json").read_text())}
    data = read_jsonl(run_dir / "data.jsonl")
    return finetune_instructions, {r["instruction"] for r in data}, len(read_jsonl(run_dir / "finetune.jsonl"))


def test_prepare_num_instructions_subsamples_nested_and_fixed(tmp_path):
    run_dir = tmp_path / "run"
    run(compose(fake(tmp_path, "num_instructions=16", "stages=[instructions,classify,instances,prepare]")), run_dir)
    everything, data_all, _ = prepared(run_dir)
    sizes = {}
    for n in (3, 6, 6, 100):
        stats = run(compose(fake(tmp_path, "stages=[prepare]", f"prepare.num_instructions={n}")), run_dir)
        chosen, data, pairs = prepared(run_dir)
        assert data == data_all  # data.jsonl keeps every instruction
        assert len(chosen) == min(n, len(everything)) == stats["data/num_finetune_instructions"]
        assert pairs == stats["data/num_finetune_pairs"]
        assert sizes.setdefault(n, chosen) == chosen  # the same sample for the same seed
    assert sizes[3] < sizes[6] < sizes[100] == everything  # smaller sizes are subsets of larger ones
    run(compose(fake(tmp_path, "stages=[prepare]", "prepare.num_instructions=6", "seed=1")), run_dir)
    assert prepared(run_dir)[0] != sizes[6]  # another seed, another sample
    with pytest.raises(ConfigError, match=r"prepare\.num_instructions"):
        validate(compose(["prepare.num_instructions=0"]))


def test_prepare_reads_a_dataset_given_as_input(tmp_path):
    """stages=[prepare,finetune,evaluate] input=RUN/data.jsonl: the data-size curve on a finished
    generation run; prepare refuses to replace a generation run's dataset."""
    source = tmp_path / "source"
    run(compose(fake(tmp_path, "num_instructions=10", "stages=[instructions,classify,instances,prepare]")), source)
    data = read_jsonl(source / "data.jsonl")
    target = tmp_path / "size4"
    stats = run(compose(fake(tmp_path, "stages=[prepare]", f"input={source / 'data.jsonl'}",
                             "prepare.num_instructions=4")), target)
    assert [(r["instruction"], r["input"], r["output"]) for r in read_jsonl(target / "data.jsonl")] == \
        [(r["instruction"], r["input"], r["output"]) for r in data]
    assert stats["data/num_finetune_instructions"] == 4
    from selfinstruct.errors import RunError

    with pytest.raises(RunError, match="holds a generation run"):
        run(compose(fake(tmp_path, "stages=[prepare]", f"input={source / 'data.jsonl'}")), source)


def test_finetune_trains_on_what_prepare_wrote_when_both_run(tmp_path):
    from selfinstruct.pipeline import RunContext
    from selfinstruct.training.finetune import training_pairs

    source = tmp_path / "source"
    run(compose(fake(tmp_path, "num_instructions=6", "stages=[instructions,classify,instances,prepare]")), source)
    cfg = compose(fake(tmp_path, "stages=[prepare,finetune,evaluate]", f"input={source / 'data.jsonl'}",
                       "prepare.num_instructions=2"))
    target = tmp_path / "target"
    run(compose(fake(tmp_path, "stages=[prepare]", f"input={source / 'data.jsonl'}", "prepare.num_instructions=2")),
        target)
    ctx = RunContext.open(cfg, target)
    try:
        pairs, path = training_pairs(ctx)
    finally:
        ctx.close()
    assert path == target / "finetune.jsonl" and pairs == read_jsonl(target / "finetune.jsonl")


# --- analyze.verb_noun: ours against the original notebook's rule ---------------------------------

@dataclasses.dataclass
class Tok:
    """A hand-parsed token: text (as its lemma), coarse POS, dependency label, children in order."""
    text: str
    pos_: str
    dep_: str = ""
    children: list = dataclasses.field(default_factory=list)


def pos(token) -> str:
    return token.pos_


def found(root, rule):
    verb = find_verb(root, pos, rule)
    noun = verb and find_object(verb, pos)
    return (verb and verb.text, noun and noun.text)


def test_verb_noun_rules_on_hand_parsed_sentences():
    # "Write a story about education." root = write (VERB), dobj story (NOUN): both rules agree
    write = Tok("write", "VERB", children=[Tok("story", "NOUN", "dobj", [Tok("a", "DET", "det")]),
                                            Tok(".", "PUNCT", "punct")])
    assert found(write, "ours") == found(write, "original") == ("write", "story")
    # "Here is a list of numbers, sort them." root = is (AUX): its first child "Here" has no
    # children, so the original finds no verb; ours finds "sort" (a conjunct of the root)
    here = Tok("be", "AUX", children=[Tok("here", "ADV", "advmod"), Tok("list", "NOUN", "nsubj"),
                                      Tok("sort", "VERB", "conj", [Tok("they", "PRON", "dobj")])])
    assert found(here, "original") == (None, None)
    assert found(here, "ours") == ("sort", None)
    # "The best way to learn French: practise daily." root = way (NOUN): its first child "the"
    # leads nowhere, so the original finds nothing; ours takes the first verb one level down
    way = Tok("way", "NOUN", children=[
        Tok("the", "DET", "det"), Tok("good", "ADJ", "amod"),
        Tok("practise", "VERB", "appos", [Tok("daily", "ADV", "advmod")]),
        Tok("learn", "VERB", "relcl", [Tok("french", "NOUN", "dobj")])])
    assert found(way, "original") == (None, None)
    assert found(way, "ours") == ("practise", None)
    # The original follows first children down: a non-verb root whose first child is the verb
    # ("Given a list, find its largest number." with "given" as the root): both find it
    given = Tok("given", "ADP", children=[Tok("find", "VERB", "prep", [Tok("number", "NOUN", "dobj")]),
                                          Tok("list", "NOUN", "pobj")])
    assert found(given, "original") == found(given, "ours") == ("find", "number")
    # A deeper verb under the first child and a closer one under a later child: the rules name
    # different verbs ("Daily notes, kept in a diary, or write a poem.", a noun root)
    kept = Tok("daily", "ADJ", "amod", [Tok("keep", "VERB", "acl", [Tok("diary", "NOUN", "dobj")])])
    mixed = Tok("note", "NOUN", children=[kept, Tok("write", "VERB", "acl", [Tok("poem", "NOUN", "dobj")])])
    assert found(mixed, "original") == ("keep", "diary")
    assert found(mixed, "ours") == ("write", "poem")


def test_analyze_verb_noun_rule_reaches_the_parser(tmp_path):
    """analyze.verb_noun=original on real parses: "What is ..." has the copula as its root and
    "What" as the root's first child, so the original finds no verb where ours finds "learn"."""
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in (
        "Write me a story about education.", "What is the best way to learn Python?")))
    shares = {}
    for rule in ("ours", "original"):
        stats = run(compose(fake(tmp_path, "stages=[analyze]", f"input={path}", f"analyze.verb_noun={rule}",
                                 "analyze.plots=false")), tmp_path / rule)
        shares[rule] = stats["diversity/verb_share"], stats["diversity/verb_noun_share"]
    assert shares == {"ours": (1.0, 0.5), "original": (0.5, 0.5)}
    with pytest.raises(ConfigError, match=r"analyze\.verb_noun"):
        validate(compose(["analyze.verb_noun=bfs"]))


def test_original_format_writes_class_label_lines_and_runs(tmp_path):
    style = make_style(compose(["prompt=original_format"]).prompt, [])
    prompt = style.instances_prompt("Is the review positive?", True, 5)
    assert "\nClass label: " in prompt and "\nLabel: " not in prompt
    assert style.instances_prompt("Name a fruit.", False, 5) == make_style(compose([]).prompt, []).instances_prompt(
        "Name a fruit.", False, 5)
    raw = "Class label: Positive\nReview: I loved it.\nClass label: Negative\nReview: Dull."
    assert style.parse_instances(raw, True) == [("Review: I loved it.", "Positive"), ("Review: Dull.", "Negative")]
    stats = run(compose(fake(tmp_path, "prompt=original_format", "num_instructions=12",
                             "stages=[instructions,classify,instances,prepare]")), tmp_path / "run")
    data = read_jsonl(tmp_path / "run" / "data.jsonl")
    assert stats["data/num_instances"] == len(data) and any(r["is_classification"] for r in data)
