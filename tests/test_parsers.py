"""Prompts, parsers and instance filters of the classify, instances, prepare and alpaca steps, on
hand-written edge cases."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from omegaconf import OmegaConf

from selfinstruct.filtering.instance_rules import filter_instances
from selfinstruct.prompts import alpaca, classify, instances
from selfinstruct.generation.prepare import WITH_INPUT, WITHOUT_INPUT, encode, vary_input
from tests.conftest import compose


# --- classify -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (" Yes", True), ("Yes", True), ("yes", True), (" YES\n", True), ("Yes.", True), ("**Yes**", True),
    ("Yes, the labels are finite.", True), (" No", False), ("no", False), ("No, the", False),
    ("**No**", False), ("", None), (" Maybe", None), ("Yesterday", None), ("The task is", None),
])
def test_classify_answer(raw, expected):
    assert classify.parse_answer(raw) is expected


def test_classify_prompts_share_the_demo_prefix_and_end_with_the_instruction():
    a = classify.build_prompt("Sort the list of numbers.", chat=False)
    b = classify.build_prompt("Is this email spam?", chat=False)
    assert a.endswith("Task: Sort the list of numbers.\nClassification:")
    prefix = a[: a.rindex("Task: ")]
    assert b.startswith(prefix) and len(prefix) > 1000  # only the last block differs
    demos = classify.load_demos()
    assert len(demos) >= 20 and {label for _, label in demos} == {True, False}
    assert all(f"Task: {text}\nClassification: {'Yes' if label else 'No'}" in a for text, label in demos)
    chat = classify.build_prompt("Is this email spam?", chat=True)
    assert classify.QUESTION in chat and chat.rstrip().endswith("Reply with one word: Yes or No.")


# --- instances: prompt and parser -----------------------------------------------------------------

@pytest.mark.parametrize("output_first", [False, True])
def test_every_demonstration_parses_back_to_its_instances(output_first):
    """Rendering a demo task and parsing it as a completion gives its instances back: the demos hold
    nothing the parser would misread, and render and parse agree on the format."""
    demos = instances.load_demos(instances.DEMOS[output_first])
    assert len(demos) == (15 if output_first else 10)
    for instruction, pairs in demos:
        rendered = instances.render_task(instruction, pairs, output_first)
        completion = rendered.split("\nExample 1\n", 1)[1]  # the prompt ends with "Example 1\n"
        assert instances.parse_instances(completion, output_first) == list(pairs), instruction


def test_instance_prompt_ends_with_the_task_and_groups_share_a_prefix():
    a = instances.build_prompt("Name a fruit.", output_first=False, chat=False)
    b = instances.build_prompt("Translate the word to French.", output_first=False, chat=False)
    assert a.endswith("\n\nTask: Name a fruit.\nExample 1\n")
    assert b.startswith(a[: a.rindex("Task: Name a fruit.")])
    assert "Label: " in instances.build_prompt("Is it spam?", output_first=True, chat=False)
    assert "Label: " not in a


def test_input_first_parser():
    text = ("Input: 3, 1, 2\nOutput: 1, 2, 3\nExample 2\nInput: Sentence: b a\n  spans lines\n"
            "Output: a b\nInput: a run-on example\nOutput: is dropped\nExample 3\nOutput: no input needed\n"
            "Example 4\njust text, no markers\n\nTask: Another task\nExample 1\nOutput: not ours")
    assert instances.parse_instances(text, False) == [
        ("3, 1, 2", "1, 2, 3"), ("Sentence: b a\n  spans lines", "a b"), ("", "no input needed"),
        ("", "just text, no markers")]


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "Input: only an input"])
def test_input_first_parser_without_an_output_finds_nothing(text):
    assert instances.parse_instances(text, False) == []


def test_output_first_parser_reads_ours_and_the_original_class_label_format():
    ours = "Label: spam\nInput: Win a prize now!\nExample 2\nLabel: not spam\nInput: Lunch at noon?\n"
    assert instances.parse_instances(ours, True) == [("Win a prize now!", "spam"), ("Lunch at noon?", "not spam")]
    original = "Class label: Positive\nSentence: I love it.\nClass label: Negative\nSentence: Awful.\n"
    assert instances.parse_instances(original, True) == [
        ("Sentence: I love it.", "Positive"), ("Sentence: Awful.", "Negative")]
    labels_only = "Label: Paris\nExample 2\nLabel: Lyon"
    assert instances.parse_instances(labels_only, True) == [("", "Paris"), ("", "Lyon")]
    assert instances.parse_instances("Input: something without a label", True) == []


def test_chat_replies_are_unwrapped():
    reply = ("Sure! Here are some examples:\n\n```\n**Example 1:** **Input:** 2 + 2\n**Output:** 4\n\n"
             "### Example 2\n- **Input:** 3 + 4\n- **Output:** 7\n```\nLet me know if you need more!")
    assert instances.parse_instances(reply, False, chat=True)[:2] == [("2 + 2", "4"), ("3 + 4", "7")]
    labelled = "Here you go.\n\n**Example 1**\n**Label:** yes\n**Input:** Is 4 even?\n"
    assert instances.parse_instances(labelled, True, chat=True) == [("Is 4 even?", "yes")]


# --- instance filters -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_filters():
    return compose([]).filters


def _filter(pairs, f, truncated=False, seed=0):
    return filter_instances(pairs, truncated=truncated, f=f, rng=random.Random(seed))


@pytest.mark.parametrize("pair, rule", [
    (("some input", ""), "empty_output"),
    (("same", "same"), "input_equals_output"),
    (("The list:", "a, b"), "ends_with_colon"),
    (("x", "Here it is:"), "ends_with_colon"),
    (("x", "go go go go go go"), "repetitive"),
])
def test_each_instance_rule(default_filters, pair, rule):
    good = ("an input", "an output")
    kept, losses = _filter([good, pair], default_filters)
    assert kept == [good] and losses == Counter({rule: 1})


def test_truncated_completion_loses_its_last_instance(default_filters):
    pairs = [("a", "1"), ("b", "2"), ("c", "3 and th")]
    assert _filter(pairs, default_filters, truncated=True) == ([("a", "1"), ("b", "2")],
                                                            Counter({"truncated_last": 1}))
    assert _filter(pairs, default_filters)[0] == pairs


def test_conflicting_outputs_drop_the_whole_task_but_empty_inputs_are_exempt(default_filters):
    kept, losses = _filter([("2+2", "4"), ("3+3", "6"), ("2+2", "5")], default_filters)
    assert kept == [] and losses == Counter({"conflicting_outputs": 3})
    names = [("", "Bella"), ("", "Max"), ("", "Luna")]  # "Suggest a dog name": many outputs, no input
    assert _filter(names, default_filters)[0] == names


def test_duplicates_are_kept_once_in_order(default_filters):
    kept, losses = _filter([("a", "1"), ("b", "2"), ("a", "1")], default_filters)
    assert kept == [("a", "1"), ("b", "2")] and losses == Counter({"duplicate": 1})


def test_cap_keeps_a_seeded_random_subset_in_order(default_filters):
    pairs = [(f"in {k}", f"out {k}") for k in range(9)]
    kept, losses = _filter(pairs, default_filters, seed=1)
    assert len(kept) == 5 and losses == Counter({"over_cap": 4})
    assert kept == sorted(kept, key=pairs.index)  # completion order is kept
    assert _filter(pairs, default_filters, seed=1)[0] == kept
    assert any(_filter(pairs, default_filters, seed=s)[0] != kept for s in range(2, 6))


def test_filters_none_keeps_everything_but_the_cap():
    f = compose(["filters=none"]).filters
    pairs = [("a", ""), ("b", "b"), ("c:", "x"), ("d", "1"), ("d", "1")]
    assert _filter(pairs, f, truncated=True) == (pairs, Counter())
    assert len(_filter(pairs * 2, f)[0]) == 5


# --- finetuning formats ---------------------------------------------------------------------------

def test_finetune_formats_vary_and_stay_consistent():
    rng = random.Random(0)
    with_input = [encode("Sort the numbers.", "Numbers: 3 1 2", "1 2 3", rng, random_templates=True,
                         end_token="<|endoftext|>") for _ in range(400)]
    without = [encode("Name a color.", "", "Blue", rng, random_templates=True, end_token="") for _ in range(400)]
    assert len({p["prompt"] for p in with_input}) >= len(WITH_INPUT)  # every format (plus input variants)
    assert len({p["prompt"] for p in without}) == len(WITHOUT_INPUT)
    for pair in with_input + without:
        # "Output:" at the end of the prompt <=> the completion starts with a space
        assert pair["prompt"].endswith("Output:") == pair["completion"].startswith(" ")
    assert all(p["completion"].endswith("1 2 3<|endoftext|>") for p in with_input)
    assert {p["completion"] for p in without} <= {"Blue", " Blue"}
    assert any(p["prompt"].startswith("Task: ") for p in with_input)
    assert any("\n1 2 3" not in p["prompt"] and "3 1 2" in p["prompt"] and "Numbers:" not in p["prompt"]
               for p in with_input)  # the single field name dropped half the time


def test_fixed_finetune_format():
    pair = encode("Sort the numbers.", "3 1 2", "1 2 3", random.Random(0), random_templates=False, end_token="")
    assert pair == {"prompt": "Sort the numbers.\nInput: 3 1 2\nOutput:", "completion": " 1 2 3"}


def test_vary_input_only_drops_a_single_field_name():
    drops = {vary_input("Sentence: It rained.\n\nAgain.", random.Random(s)) for s in range(20)}
    assert drops == {"Sentence: It rained.\n\nAgain.", "It rained.\nAgain."}
    two_fields = {vary_input("Premise: a\nHypothesis: b", random.Random(s)) for s in range(20)}
    assert two_fields == {"Premise: a\nHypothesis: b"}


# --- alpaca ---------------------------------------------------------------------------------------

def test_alpaca_prompt_and_parser():
    demos = [("Give a synonym.", "happy", "glad"), ("Tell a joke.", "", "Why did..."), ("Add.", "1 2", "3")]
    prompt, first = alpaca.build_prompt(demos, chat=False, num_tasks=20)
    assert first == 4 and prompt.endswith("Task 3\nInstruction: Add.\nInput: 1 2\nOutput: 3\n\nTask 4\nInstruction:")
    assert "Input: (none)" in prompt and "list of 20 tasks" in prompt
    completion = (" Name a river in Spain.\nInput: (none)\nOutput: The Ebro.\n\nTask 5\n"
                  "Instruction: Fix the grammar.\nInput: he go home\nOutput: He goes home.\n\nTask 6\n"
                  "Instruction: Summarize the paragraph.\nInput: A long text\n\nTask 21\n"
                  "Instruction: Past the end.\nInput: <noinput>\nOutput: x")
    assert alpaca.parse_tasks(completion, first, 20) == [
        {"instruction": "Name a river in Spain.", "input": "", "output": "The Ebro."},
        {"instruction": "Fix the grammar.", "input": "he go home", "output": "He goes home."},
        {"instruction": "Summarize the paragraph.", "input": "A long text", "output": None}]


def test_alpaca_chat_reply():
    reply = ("**Task 4**\n**Instruction:** List two primes.\n**Input:** N/A\n**Output:** 2, 3\n\n"
             "Task 5:\nInstruction: Reverse the word.\nInput: stop\nOutput: pots")
    assert alpaca.parse_tasks(reply, 4, 20) == [
        {"instruction": "List two primes.", "input": "", "output": "2, 3"},
        {"instruction": "Reverse the word.", "input": "stop", "output": "pots"}]


def test_alpaca_demos_come_from_the_seeds():
    from selfinstruct.datasets.seeds import load_seeds

    seeds = load_seeds()
    demos = alpaca.sample_demos(random.Random(3), seeds, 3)
    by_instruction = {t.instruction: t for t in seeds}
    assert len(demos) == 3 and len({d[0] for d in demos}) == 3
    for instruction, inp, out in demos:
        assert (inp, out) in {(i.input.strip(), i.output.strip()) for i in by_instruction[instruction].instances}


def test_prompt_alpaca_selects_alpaca_sampling_and_filters_unless_overridden():
    cfg = compose(["prompt=alpaca"])
    assert (cfg.sampling.name, cfg.filters.name) == ("alpaca", "alpaca")
    assert cfg.sampling.instructions.temperature == 1.0 and "Task 21" in cfg.sampling.instructions.stop
    cfg = compose(["prompt=alpaca", "sampling=paper", "filters=none"])
    assert (cfg.sampling.name, cfg.filters.name) == ("paper", "none")
    assert (compose([]).sampling.name, compose([]).filters.name) == ("paper", "default")
    assert OmegaConf.to_container(compose(["prompt=selfinstruct_chat"]).prompt)["chat"] is True


def test_alpaca_bare_task_line_starts_the_next_task():
    text = (" What kind of fish is a clownfish?\nInput: (none)\nOutput: A reef fish.\n\nTask\n"
            "Instructions the following operation:\nOutput 1: 5,000")
    assert alpaca.parse_tasks(text, 4, 20) == [
        {"instruction": "What kind of fish is a clownfish?", "input": "", "output": "A reef fish."}]
    assert alpaca.parse_tasks(text, 20, 20)[0]["output"] == "A reef fish."  # task 21 is past the end


def test_an_answer_that_only_repeats_the_question_s_words_is_dropped():
    from selfinstruct.filtering.instance_rules import echoes_instruction

    question = "What is the probability that I will be in my car on time for work?"
    assert echoes_instruction("probability", question) and echoes_instruction("Probability.", question)
    assert echoes_instruction("the car", question)
    assert not echoes_instruction("0.75", question)  # a number is an answer
    assert not echoes_instruction("about one half", question)  # words of its own
    assert not echoes_instruction("a good probability estimate", question)  # longer than two words
    for offers_choices in ["Is the review positive or negative?", "Answer yes/no: is the sky blue?",
                           "Pick the fruit from: apple, chair", "Which (A) cat (B) dog is a cat?"]:
        answer = offers_choices.split()[3].strip("?:,")
        assert not echoes_instruction(answer, offers_choices), offers_choices
    pairs = [("0.5", "probability"), ("0.75", "Three in four.")]
    kept, losses = filter_instances(pairs, truncated=False, f=compose([]).filters, rng=random.Random(0),
                                    instruction=question)
    assert kept == [("0.75", "Three in four.")] and losses["echoes_instruction"] == 1
    kept, _ = filter_instances(pairs, truncated=False, f=compose(["filters=paper"]).filters,
                               rng=random.Random(0), instruction=question)
    assert kept == pairs  # not one of the paper's rules
