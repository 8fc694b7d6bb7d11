"""The chat style (prompt=selfinstruct_chat) on real chat-model output and on hand-made variants:
the parsers keep tasks and drop the answers written under them, read the header and list forms chat
models use, and say why when they read nothing.

The real output is ../shared/data/chat-responses/ (40 responses of Qwen2.5-Coder-0.5B-Instruct, see
SOURCES.md there); tests that read it skip where ../shared is absent.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from selfinstruct.filtering.instance_rules import filter_instances
from selfinstruct.prompts import classify, instances, instructions
from selfinstruct.prompts.styles import make_style
from tests.conftest import compose, shared_path

RESPONSES = ("chat-responses", "qwen2.5-coder-0.5b-instruct_selfinstruct_chat.jsonl")

# What an answer written under (or after) a task looks like, as this test sees it, independent of
# the parser's own patterns: a second line, a label after the end of a sentence ("... healthily.
# A: Eat more"), a dash after it ("... a vegetable? - A tomato"), a code fence.
ANSWER_SIGNS = re.compile(r"\n|```|[.?!:]\s+[-\u2013\u2014]\s|[.?!]\s+(?:[A-Z]|Answer|Output|Input|Solution)\s*:\s")


def carries_answer(instruction: str) -> bool:
    return bool(ANSWER_SIGNS.search(instruction))


@pytest.fixture(scope="module")
def style():
    return make_style(compose(["prompt=selfinstruct_chat"]).prompt, [])


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[dict]]:
    path = shared_path(*RESPONSES)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {stage: [r for r in records if r["stage_guess"] == stage]
            for stage in ("instructions", "classify", "instances")}


# --- the recorded responses -----------------------------------------------------------------------

def test_recorded_instruction_lists_keep_tasks_and_drop_answers(style, recorded):
    assert len(recorded["instructions"]) == 20
    tasks = [t for r in recorded["instructions"] for t in style.parse_tasks(r["text"], 9)]
    assert len(tasks) >= 120  # every numbered item is read
    assert not [t["instruction"] for t in tasks if carries_answer(t["instruction"])]
    by_text = {t["instruction"]: t.get("dropped", "") for t in tasks}
    # the answers the issue shows, on the item's own line and on an indented line under it
    assert by_text["Suggest some ways to cut my grocery bill without eating less healthily."]
    assert by_text["What is the capital of Australia?"] == "A: Sydney"
    assert by_text["Identify the language of the text."] == "- Spanish"
    assert by_text["Create two pytest test cases for this function:"].startswith("```python")
    assert "Which of the two weighs more? Answer \"first\" or \"second\"." in by_text  # "Answer" mid-task stays
    assert sum("dropped" in t for t in tasks) >= 30


def test_recorded_instance_replies_parse_without_a_colon_output(style, recorded):
    assert len(recorded["instances"]) == 10
    with_instances = 0
    for r in recorded["instances"]:
        for output_first in (False, True):
            pairs = style.parse_instances(r["text"], output_first)
            assert not [p for p in pairs if p[0].startswith(":") or p[1].startswith(":")], r["text"][:200]
            assert not [p for p in pairs if re.match(r"\s*Example\s*\d", p[1])]  # no header left in an output
        pairs = style.parse_instances(r["text"], False)  # every recorded task was classified "No"
        kept, _ = filter_instances(pairs, truncated=r["finish_reason"] == "length",
                                   f=compose(["prompt=selfinstruct_chat"]).filters, rng=random.Random(0))
        with_instances += bool(kept)
    assert with_instances == 10  # before: 3 of 10 (outputs began with ":" or inputs were ":")


def test_recorded_premise_hypothesis_reply_splits_into_input_and_output(style, recorded):
    text = next(r["text"] for r in recorded["instances"] if "Hypothesis:" in r["text"])
    [(inp, out)] = style.parse_instances(text, False)
    assert inp.startswith("Premise: ") and "\nHypothesis: " in inp and out == "Entailment."


def test_recorded_classify_answers_parse(style, recorded):
    assert len(recorded["classify"]) == 10
    assert [style.parse_classification(r["text"]) for r in recorded["classify"]] == [False] * 10


# --- instruction lists: hand-made variants --------------------------------------------------------

@pytest.mark.parametrize("reply", [
    "9. Plan a trip to the coast.\n10. Name three rivers in Spain.",
    "9) Plan a trip to the coast.\n10) Name three rivers in Spain.",
    "9: Plan a trip to the coast.\n10: Name three rivers in Spain.",
    "**9.** Plan a trip to the coast.\n**10.** Name three rivers in Spain.",
    "**9. Plan a trip to the coast.**\n**10. Name three rivers in Spain.**",
    "9. **Plan a trip to the coast.**\n10. **Name three rivers in Spain.**",
    "### 9. Plan a trip to the coast.\n### 10. Name three rivers in Spain.",
    "Task 9: Plan a trip to the coast.\nTask 10: Name three rivers in Spain.",
    "- Plan a trip to the coast.\n- Name three rivers in Spain.",
    "* Plan a trip to the coast.\n* Name three rivers in Spain.",
    "\u2022 Plan a trip to the coast.\n\u2022 Name three rivers in Spain.",
    " 9. Plan a trip to the coast.\n10. Name three rivers in Spain.",  # right-aligned numbers
    "Sure! Here are some new tasks:\n\n9. Plan a trip to the coast.\n\n10. Name three rivers in Spain.\n\n"
    "I hope these help!",
    "```\n9. Plan a trip to the coast.\n10. Name three rivers in Spain.\n```",
    "9. Task: Plan a trip to the coast.\n10. \"Name three rivers in Spain.\"",
])
def test_list_forms(style, reply):
    assert [t["instruction"] for t in style.parse_tasks(reply, 9)] == [
        "Plan a trip to the coast.", "Name three rivers in Spain."]


@pytest.mark.parametrize("under", [
    "   A: Paris", "A: Paris", "   Answer: Paris", "   **Answer:** Paris", "   Output: Paris",
    "   - Paris", "   * Paris", "- Paris", "   B) Paris", "   Solution: Paris", "   Example output: Paris",
    "   Input: France", "\n   Paris is the capital.", "   1. Paris\n   2. Lyon",
    "   ```python\n   print('Paris')\n   ```", "```\nprint('Paris')",  # a code block, closed or not
])
def test_answer_lines_under_an_item_are_dropped(style, under):
    reply = f"9. What is the capital of France?\n{under}\n10. Name three rivers in Spain."
    tasks = style.parse_tasks(reply, 9)
    assert [t["instruction"] for t in tasks] == ["What is the capital of France?", "Name three rivers in Spain."]
    assert "Paris" in tasks[0]["dropped"] or "France" in tasks[0]["dropped"]
    assert "dropped" not in tasks[1]


@pytest.mark.parametrize("line, task, dropped", [
    ("What is the capital of France? A: Paris", "What is the capital of France?", "A: Paris"),
    ("Suggest ways to save money. Answer: Cook at home.", "Suggest ways to save money.", "Answer: Cook at home."),
    ("Is a tomato a fruit? - Yes, botanically.", "Is a tomato a fruit?", "- Yes, botanically."),
    ("Name the relation. \u2014 Entailment", "Name the relation.", "\u2014 Entailment"),
    # not answers: a dash or label inside the task, a colon that introduces the task's own options
    ("Rate the password as weak, medium or strong - and say why.", None, ""),
    ("Solve 3(x - 4) = 2x + 5 for x.", None, ""),
    ("Assign the animal to its class: mammal, bird, reptile, amphibian, or fish.", None, ""),
    ("Which of the two weighs more? Answer \"first\" or \"second\".", None, ""),
])
def test_answers_run_on_after_the_task_are_cut(style, line, task, dropped):
    [parsed] = style.parse_tasks(f"9. {line}", 9)
    assert parsed["instruction"] == (task or line) and parsed.get("dropped", "") == dropped


def test_a_wrapped_instruction_stays_one_instruction(style):
    reply = ("9. Write a short story about a dragon who is afraid of fire\n"
             "   and learns to cook with it instead.\n"
             "10. Give three tips for a job interview.")
    assert [t["instruction"] for t in style.parse_tasks(reply, 9)] == [
        "Write a short story about a dragon who is afraid of fire and learns to cook with it instead.",
        "Give three tips for a job interview."]


def test_bullets_under_a_bullet_list_item_are_sub_items(style):
    reply = "- Plan a trip to the coast.\n  - Day 1: the beach\n- Name three rivers in Spain."
    tasks = style.parse_tasks(reply, 9)
    assert [t["instruction"] for t in tasks] == ["Plan a trip to the coast.", "Name three rivers in Spain."]
    assert tasks[0]["dropped"] == "- Day 1: the beach"


@pytest.mark.parametrize("reply, reason", [
    ("I'm sorry, I can't help with that.", "no_list"),
    ("Here are the tasks:", "no_list"),
    ("9. **\n10. ** **", "no_instruction_in_items"),
])
def test_an_unreadable_reply_names_its_reason(style, reply, reason):
    assert style.parse_tasks(reply, 9) == []
    assert style.why_no_tasks(reply)[0] == reason


def test_completion_style_parser_is_unchanged():
    completion = make_style(compose([]).prompt, [])
    text = " Plan a trip.\n   A: Paris\n10. Name three rivers."
    assert completion.parse_tasks(text, 9) == [{"instruction": "Plan a trip. A: Paris"},
                                               {"instruction": "Name three rivers."}]
    assert completion.why_no_tasks("10.") == ("no_numbered_item", "no numbered instruction in the response")


# --- instance replies: hand-made variants ---------------------------------------------------------

@pytest.mark.parametrize("header", ["Example 1", "Example 1:", "Example 1.", "Example 1 -", "Example 1 \u2013",
                                    "### Example 1", "**Example 1:**", "**Example 1**", "- Example 1:",
                                    "Example #1", "example 1:"])
@pytest.mark.parametrize("field", ["{}:", "**{}:**", "**{}**:", "{} -", "- {}:", "{} :"])
def test_instance_header_and_field_forms(style, header, field):
    second = header.replace("1", "2")
    reply = (f"{header}\n{field.format('Input')} 2 + 2\n{field.format('Output')} 4\n"
             f"{second}\n{field.format('Input')} 3 + 4\n{field.format('Output')} 7\n")
    assert style.parse_instances(reply, False) == [("2 + 2", "4"), ("3 + 4", "7")]
    labelled = f"{header}\n{field.format('Label')} yes\n{field.format('Input')} Is 4 even?\n"
    assert style.parse_instances(labelled, True) == [("Is 4 even?", "yes")]


@pytest.mark.parametrize("reply, expected", [
    ("Example 1: Input: 2 + 2\nOutput: 4", [("2 + 2", "4")]),  # the header and a field on one line
    ("Example 1:\nOutput: Example 1\nParis is the capital.", [("", "Paris is the capital.")]),
    ("Example 1:\nOutput: Example 1: Paris", [("", "Paris")]),
    ("Example 1:\nParis", [("", "Paris")]),  # no Output field: an input-less task's output
    ("Example 1: Paris\nExample 2: Lyon", [("", "Paris"), ("", "Lyon")]),
    ("Task: Name a city.\nExample 1\nOutput: Paris", [("", "Paris")]),  # the task said again
    ("Sure! Here you go:\n\nInput: 2 + 2\nOutput: 4", [("2 + 2", "4")]),
    ("Example 1\nSentence: It rained.\nTense: past\n\nPast tense.",
     [("Sentence: It rained.\nTense: past", "Past tense.")]),
])
def test_instance_reply_variants(style, reply, expected):
    assert style.parse_instances(reply, False) == expected


@pytest.mark.parametrize("reply, output_first, reason", [
    ("", False, "empty"),
    ("I am not sure what this task means.", False, "no_example"),
    ("Example 1\nExample 2", False, "empty_examples"),
    ("Input: Is 4 even?", True, "no_label"),
])
def test_an_unreadable_instance_reply_names_its_reason(style, reply, output_first, reason):
    assert style.parse_instances(reply, output_first) == []
    assert style.why_no_instances(reply, output_first)[0] == reason


# --- classify -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ("No", False), ("Yes", True), ("**Yes**", True), ("Classification: No", False), ("Answer: yes.", True),
    ("**Classification:** Yes", True), ("The answer is yes", None),
])
def test_classify_chat_answers(style, reply, expected):
    assert style.parse_classification(reply) is expected


# --- chat prompts ---------------------------------------------------------------------------------

def test_chat_prompts_ask_for_new_bare_tasks_and_spell_out_formats():
    examples = [f"Example task number {i}." for i in range(8)]
    prompt, first = instructions.build_prompt(examples, chat=True, max_list_number=16)
    assert first == 9 and "numbered from 9 to 15" in prompt and "8. Example task number 7." in prompt
    assert "only here to show the format" in prompt and "Do not repeat, rephrase or answer" in prompt
    assert "no answers" in prompt
    inst = instances.build_prompt("Name a fruit.", output_first=False, chat=True)
    assert inst.rstrip().endswith("Task: Name a fruit.") and '"Output: ..."' in inst and "\nLabel: " not in inst
    assert '"Label: ..."' in instances.build_prompt("Is it spam?", output_first=True, chat=True)
    clf = classify.build_prompt("Is it spam?", chat=True)
    assert classify.QUESTION in clf and clf.rstrip().endswith("Reply with one word: Yes or No.")


# --- the pipeline on replayed recorded responses --------------------------------------------------

def test_replayed_chat_run_accepts_no_answer_and_gives_every_task_instances(tmp_path):
    """The instructions, classify, instances and prepare stages on the recorded responses, through
    a local server that replays them (tests/chat_replay.py). The responses were recorded for the
    prompts of an older commit, so this measures the parsers and filters, not the prompt wording."""
    from tests.chat_replay import REPO, load_records, replay

    result = replay(REPO, tmp_path / "run", load_records(shared_path(*RESPONSES)))
    assert result["accepted_instructions"] and not [i for i in result["accepted_instructions"] if carries_answer(i)]
    assert result["outputs_starting_with_colon"] == 0
    assert result["tasks_without_instances"] == 0 and result["instances"] >= result["accepted"]
    assert result["candidates"] >= 120 and result["parse_failures"]["/instructions"] == 0
    dropped = [json.loads(line) for line in (tmp_path / "run" / "rejected.jsonl").open()]
    assert sum("dropped" in r for r in dropped) >= 20  # the answers cut off stay visible beside their task
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["quality/answers_dropped"] >= 20


# --- chat sampling --------------------------------------------------------------------------------

def test_chat_replies_are_not_cut_at_a_blank_line_or_a_restated_task(tmp_path):
    """The paper's stops "\\n\\n" (instructions) and "Task:" (instances) end a base model's
    continuation; a chat reply has blank lines after its preamble and between items and may say
    its task again, so chat requests go without those stops (the fake server applies stops as a
    real one does)."""
    from selfinstruct.llm.fake import fake_instruction
    from selfinstruct.pipeline import run
    from tests.fake_openai_server import FakeOpenAIServer

    def answer(prompt: str, body: dict) -> str:
        if classify.QUESTION in prompt:
            return "No"
        if "Example 1" in prompt:
            return "**Task:** the task again\n\n**Example 1:**\nOutput: A fine answer.\n\n" \
                   "**Example 2:**\nOutput: Another fine answer."
        first = int(re.search(r"numbered from (\d+)", prompt).group(1))
        rng = random.Random(prompt)
        return f"Sure! Here are some new tasks:\n\n{first}. {fake_instruction(rng)}\n\n" \
               f"{first + 1}. {fake_instruction(rng)}"

    with FakeOpenAIServer(answer=answer) as server:
        cfg = compose(["llm=openai_compatible", f"llm.base_url={server.base_url}", "llm.model=m",
                       "llm.endpoint=chat", "prompt=selfinstruct_chat", "tracking=none", "num_instructions=6",
                       "llm.concurrency=1",
                       "stages=[instructions,classify,instances,prepare]", f"llm.cache_dir={tmp_path / 'cache'}"])
        stats = run(cfg, tmp_path / "run")
    rows = lambda name: [json.loads(line) for line in (tmp_path / "run" / name).open()]  # noqa: E731
    accepted, rejected = rows("instructions.jsonl"), rows("rejected.jsonl")
    per_request = Counter(r["request_id"] for r in accepted + rejected)
    assert len(accepted) == 6 and set(list(per_request.values())[:-1]) == {2}  # both items, past the blank line
    assert stats["data/num_instances"] == 12 and stats["quality/parse_failures/instances"] == 0

    completion = make_style(compose([]).prompt, [])
    from selfinstruct.llm import Sampling
    paper = Sampling.from_config(compose([]).sampling.instructions)
    assert completion.sampling("instructions", paper) is paper and "\n\n" in paper.stop
    chat = make_style(compose(["prompt=selfinstruct_chat"]).prompt, [])
    assert chat.sampling("instructions", paper).stop == [s for s in paper.stop if s != "\n\n"]


def test_an_example_with_an_answer_run_on_after_a_colon_is_an_echo():
    """No list marker shows where the task ends in "Describe the water cycle in four steps: Water
    cycles involve ..." (a recorded reply), but the part before the colon is an example of the
    prompt: the echo rule names it (any prompt style)."""
    from selfinstruct.filtering.rules import check_degenerate, prompt_segments

    prompt, _ = instructions.build_prompt(["Describe the water cycle in four steps.", "Name a fruit."] * 4,
                                          chat=True, max_list_number=16)
    segments = prompt_segments(prompt)
    for text in ["Describe the water cycle in four steps: Water cycles involve temperature changes.",
                 "Describe the water cycle in four steps - evaporation first.",
                 "Describe the water cycle in four steps \u2014 evaporation first."]:
        assert check_degenerate(text, segments) == (
            "echo", "a line of the prompt with text appended after a colon or dash"), text
    for fine in ["Describe the water cycle in four steps for a ten-year-old.",
                 "Name a red fruit: one that grows on trees.",
                 "Explain the steps: evaporation, condensation and rain."]:
        assert check_degenerate(fine, segments) is None, fine
