"""The model-free parts of the evaluate stage: evaluation sets, predictions, scores, judge parsers."""

from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Decimal

import pytest

from selfinstruct.evaluation import (
    EvalTask, aggregate, answer_prompt, answer_stop, clean_answer, exact_match,
    load_eval_set, load_predictions, normalize_label, pairwise_outcome, pairwise_prompt,
    parse_pairwise, parse_rating, rating_prompt, rating_shares, rouge_l, score, win_rate)
from selfinstruct.files import DataError
from selfinstruct.filtering.rouge import rouge_l_f
from selfinstruct.datasets.seeds import load_seeds
from selfinstruct.generation.prepare import encode
from tests.conftest import shared_path

USER_ORIENTED = ("self-instruct", "human_eval", "user_oriented_instructions.jsonl")
PREDICTIONS = ("self-instruct", "human_eval", "predictions")
NEAR_COPY = 0.7


# --- the default evaluation set -------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_set() -> list[EvalTask]:
    return load_eval_set()


def test_default_set_loads_with_about_100_tasks(eval_set):
    assert 95 <= len(eval_set) <= 110
    assert len({t.id for t in eval_set}) == len(eval_set)
    assert all(t.instruction and t.reference for t in eval_set)
    assert all(t.is_classification in (True, False) for t in eval_set)
    assert len({t.motivation_app for t in eval_set}) >= 40  # many apps and domains
    # concise references: none over 70 words, nearly all under 60
    words = [len(t.reference.split()) for t in eval_set]
    assert max(words) <= 70
    assert sum(w < 60 for w in words) >= 0.9 * len(words)


def test_default_set_classification_tasks_have_one_stated_label(eval_set):
    clf = [t for t in eval_set if t.is_classification]
    assert 20 <= len(clf) <= 30
    for t in clf:
        # one short label on one line, and the instruction names the label set, so exact match
        # is a fair score
        assert "\n" not in t.reference and len(t.reference.split()) <= 3, t.id
        assert t.reference.lower() in t.instruction.lower(), t.id
        assert exact_match(t.reference, t.reference) and exact_match(f"**{t.reference.upper()}**.", t.reference)


def _texts(instruction: str, input: str) -> tuple[str, str]:
    return instruction, f"{instruction}\n{input}"


def _max_similarity(tasks: list[tuple[str, str]], pool: list[tuple[str, str]]) -> tuple[float, str, str]:
    """Highest ROUGE-L F of a task against a pool entry, on the instruction and on instruction +
    input, with the two texts."""
    best = (0.0, "", "")
    for ins, inp in tasks:
        a_ins, a_all = _texts(ins, inp)
        for p_ins, p_inp in pool:
            b_ins, b_all = _texts(p_ins, p_inp)
            for a, b in ((a_ins, b_ins), (a_all, b_all)):
                f = rouge_l_f(a, b)
                if f > best[0]:
                    best = (f, a, b)
    return best


def test_default_set_is_no_near_copy_of_our_seeds(eval_set):
    seeds = [(s.instruction, i.input) for s in load_seeds() for i in s.instances]
    f, ours, seed = _max_similarity([(t.instruction, t.input) for t in eval_set], seeds)
    assert f <= NEAR_COPY, (f, ours, seed)


def test_default_set_is_no_near_copy_of_the_original_252(eval_set):
    original = load_eval_set(shared_path(*USER_ORIENTED))
    f, ours, theirs = _max_similarity([(t.instruction, t.input) for t in eval_set],
                                      [(t.instruction, t.input) for t in original])
    assert f <= NEAR_COPY, (f, ours, theirs)


def test_default_set_tasks_are_no_near_copies_of_each_other(eval_set):
    worst = (0.0, "", "")
    for i, t in enumerate(eval_set):
        f = _max_similarity([(t.instruction, t.input)], [(u.instruction, u.input) for u in eval_set[:i]])
        worst = max(worst, f)
    assert worst[0] <= NEAR_COPY, worst


# --- scoring against values computed by hand ------------------------------------------------------

@pytest.mark.parametrize("answer, reference, expected", [
    # LCS "the cat on the mat" = 5 of 6 and 6 tokens: P = R = 5/6
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
    # LCS 1; P = 1/1, R = 1/4, F = 2 * 1 * 0.25 / 1.25 = 0.4
    ("Paris", "The capital is Paris.", 0.4),
    # order matters: LCS of "b a" and "a b" is 1, P = R = 1/2
    ("b a", "a b", 0.5),
    # case and punctuation are not tokens
    ("Hello, WORLD!", "hello world", 1.0),
    # LCS 2 ("mixed" "review"); P = 2/3, R = 2/2, F = 2 * (2/3) / (5/3) = 0.8
    ("mixed review overall", "mixed review", 0.8),
    ("", "anything", 0.0),
    ("nothing in common", "different words here", 0.0),
])
def test_rouge_l_by_hand(answer, reference, expected):
    assert rouge_l(answer, reference) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("answer, reference, expected", [
    ("negative", "negative", True),
    ("Negative", "negative", True),
    ("  negative.\n", "negative", True),
    ("**NEGATIVE**", "negative", True),
    ("\u201cspam\u201d.", "spam", True),
    ("- yes", "yes", True),
    ("negative\nThe review complains about the battery.", "negative", True),
    ("\n\nnot   spam", "not spam", True),
    ("Entry-level", "entry-level", True),
    ("The review is negative.", "negative", False),
    ("negative, because the battery died", "negative", False),
    ("not spam", "spam", False),
    ("entry level", "entry-level", False),
    ("", "negative", False),
    ("...", "", False),  # an empty label never matches
])
def test_exact_match_by_hand(answer, reference, expected):
    assert exact_match(answer, reference) is expected


def test_normalize_label_strips_punctuation_and_whitespace_repeatedly():
    assert normalize_label(" ** \u201cPositive!\u201d ** \nmore") == "positive"
    assert normalize_label("South   America") == "south america"


def test_score_and_aggregate_by_hand():
    clf = EvalTask("a", "Spam or not spam?", "Win money now", "spam", True)
    unknown = EvalTask("b", "Label it.", "x", "spam", None)  # exact match not scored
    gen = EvalTask("c", "Say where.", "", "in the kitchen", False)
    scores = [score("Spam.", clf), score("spam", unknown), score("in the garden", gen),
              score("not spam", clf)]
    assert scores[0] == {"rougeL": 1.0, "exact_match": True}
    assert scores[1] == {"rougeL": 1.0, "exact_match": None}
    assert scores[2]["exact_match"] is None
    assert scores[2]["rougeL"] == pytest.approx(2 / 3)  # LCS 2 of 3 and 3 tokens
    assert scores[3]["exact_match"] is False
    assert scores[3]["rougeL"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # P = 1/2, R = 1
    agg = aggregate(scores)
    assert agg["rougeL"] == pytest.approx((1 + 1 + 2 / 3 + 2 / 3) / 4)
    assert agg["exact_match"] == 0.5  # 1 of the 2 classification answers
    assert (agg["num_tasks"], agg["num_exact_match_tasks"]) == (4, 2)
    assert aggregate([]) == {"rougeL": None, "exact_match": None, "num_tasks": 0,
                             "num_exact_match_tasks": 0}
    assert aggregate([score("x", gen)])["exact_match"] is None


# --- the paper's released predictions -------------------------------------------------------------

# file -> (DESIGN.md's figure, our mean to 4 decimals)
PAPER_MEANS = {
    "davinci_predictions.jsonl": (0.027, 0.0270),
    "davinci-self-instruct_predictions.jsonl": (0.276, 0.2756),
    "davinci-superni-ft_predictions.jsonl": (0.254, 0.2535),
    "text-davinci-001_predictions.jsonl": (0.283, 0.2833),
}


@pytest.mark.parametrize("name", PAPER_MEANS)
def test_paper_predictions_means(name):
    design, ours = PAPER_MEANS[name]
    predictions = load_predictions(shared_path(*PREDICTIONS, name))
    assert len(predictions) == 252
    mean = aggregate(score(p.answer, p.task) for p in predictions)["rougeL"]
    assert round(mean, 4) == ours
    # DESIGN.md's three decimals are these four rounded half up. For davinci + SuperNI that is a
    # double rounding: the exact mean is 0.25347..., which is 0.253 to three decimals directly.
    assert float(Decimal(str(ours)).quantize(Decimal("0.001"), ROUND_HALF_UP)) == design
    if name != "davinci-superni-ft_predictions.jsonl":
        assert round(mean, 3) == design
    # Cleaning answers as the stage does (end token, surrounding whitespace) changes no score.
    cleaned = aggregate(score(clean_answer(p.answer, "<|endoftext|>"), p.task) for p in predictions)
    assert cleaned["rougeL"] == mean


def test_prediction_targets_are_the_252_reference_outputs():
    tasks = load_eval_set(shared_path(*USER_ORIENTED))
    predictions = load_predictions(shared_path(*PREDICTIONS, "davinci-self-instruct_predictions.jsonl"))
    assert [p.task.reference for p in predictions] == [t.reference for t in tasks]
    assert [p.task.input for p in predictions] == [t.input for t in tasks]
    assert predictions[3].task.id == "prediction_3" and predictions[3].task.is_classification is None


def test_loads_the_original_252_tasks():
    path = shared_path(*USER_ORIENTED)
    tasks = load_eval_set(path)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(tasks) == 252 and len({t.id for t in tasks}) == 252
    assert tasks[0].id == "user_oriented_task_0" and tasks[0].motivation_app == "Grammarly"
    assert [t.reference for t in tasks] == [r["instances"][0]["output"].strip() for r in raw]
    # the file does not say which tasks are classification: none is scored by exact match
    assert all(t.is_classification is None for t in tasks)
    assert score(tasks[1].reference, tasks[1])["exact_match"] is None


# --- other dataset formats ------------------------------------------------------------------------

def test_loads_any_dataset_format_with_outputs(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Is 7 prime?", "input": "", "output": "yes", "is_classification": True},
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5", "is_classification": False},
    ]) + "\n")
    tasks = load_eval_set(data)
    assert [(t.id, t.input, t.reference, t.is_classification) for t in tasks] == [
        ("task_0", "", "yes", True), ("task_1", "2, 3", "5", False)]
    assert tasks[0].source_format == "instances"
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a color.", "input": "", "output": "Blue"}]))
    assert load_eval_set(alpaca)[0].reference == "Blue"


def test_a_task_with_several_instances_gives_one_task_each(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps({"id": "t", "instruction": "Double it.", "is_classification": False,
                                "instances": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]}))
    assert [(t.id, t.input, t.reference) for t in load_eval_set(path)] == [("t/0", "2", "4"), ("t/1", "5", "10")]


# --- malformed files fail naming file and line ----------------------------------------------------

GOOD = json.dumps({"id": "x1", "instruction": "Say hi.", "instances": [{"input": "", "output": "Hi"}]})


@pytest.mark.parametrize("second_line, message", [
    ("{not json", r":2: not valid JSON"),
    ("[1, 2]", r":2: expected a JSON object"),
    (json.dumps({"id": "x2", "instruction": "Say bye.", "instances": []}), r":2: field 'instances'"),
    (json.dumps({"id": "x2", "instruction": "Say bye.", "instances": [{"input": ""}]}), r":2 instances\[0\]: field 'output'"),
    (json.dumps({"id": "x2", "instruction": "Say bye.", "instances": [{"input": "", "output": " "}]}), r":2 instances\[0\]: empty output"),
    (json.dumps({"id": "x1", "instruction": "Say bye.", "instances": [{"input": "", "output": "Bye"}]}), r":2: duplicate id 'x1'"),
    (json.dumps({"id": "x2", "instruction": "  ", "instances": [{"input": "", "output": "Bye"}]}), r":2: empty instruction"),
    (json.dumps({"id": "x2", "instruction": "Say bye.", "instances": [{"input": "", "output": "Bye"}], "is_classification": "yes"}), r":2: field 'is_classification'"),
])
def test_malformed_eval_set_names_file_and_line(tmp_path, second_line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(GOOD + "\n" + second_line + "\n")
    with pytest.raises(DataError, match=r"tasks\.jsonl" + message):
        load_eval_set(path)


def test_eval_set_without_outputs_fails_naming_the_file(tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text(json.dumps({"instruction": "Write a poem about rain."}) + "\n")
    with pytest.raises(DataError, match=r"instructions\.jsonl: task 1 .*reference output"):
        load_eval_set(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        load_eval_set(empty)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        load_eval_set(tmp_path / "missing.jsonl")


PRED = {"prompt": "Say hi.\nOutput:", "instruction": "Say hi.", "input": "", "response": " Hi", "target": "Hi"}


@pytest.mark.parametrize("bad, message", [
    ("{oops", r":3: not valid JSON"),
    (json.dumps({k: v for k, v in PRED.items() if k != "target"}), r":3: lacks \['target'\]"),
    (json.dumps({**PRED, "response": None}), r":3: field 'response' must be a string"),
    (json.dumps({**PRED, "target": "  "}), r":3: empty target"),
])
def test_malformed_predictions_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(PRED) + "\n\n" + bad + "\n")  # line 2 is blank: lines are file lines
    with pytest.raises(DataError, match=r"preds\.jsonl" + message):
        load_predictions(path)


def test_predictions_read_into_tasks_and_answers(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(PRED) + "\n" + json.dumps({**PRED, "id": "q", "is_classification": True}) + "\n")
    first, second = load_predictions(path)
    assert (first.task.id, first.task.reference, first.answer) == ("prediction_0", "Hi", " Hi")
    assert (second.task.id, second.task.is_classification) == ("q", True)
    assert score(second.answer, second.task) == {"rougeL": 1.0, "exact_match": True}


# --- answering --------------------------------------------------------------------------------------

@pytest.mark.parametrize("instruction, input", [("Is 91 prime?", ""), ("Translate to French.", "Good morning")])
def test_answer_prompt_is_the_fixed_finetuning_format(instruction, input):
    pair = encode(instruction, input, "Bonjour", random.Random(1), random_templates=False,
                  end_token="<|endoftext|>")
    assert answer_prompt(instruction, input) == pair["prompt"]
    assert answer_prompt(instruction, input).endswith("\nOutput:")
    # what the tuned model was taught to write after the prompt cleans to the output
    assert clean_answer(pair["completion"], "<|endoftext|>") == "Bonjour"


def test_stop_rules_and_answer_cleaning():
    assert answer_stop("<|endoftext|>") == ["<|endoftext|>"]
    assert answer_stop("") == []
    assert clean_answer(" 70%<|endoftext|>\n\nInput: more", "<|endoftext|>") == "70%"
    assert clean_answer(" Dear Sam,\n\nThanks.\n\n", "<|endoftext|>") == "Dear Sam,\n\nThanks."
    assert clean_answer(" a<|endoftext|>", "") == "a<|endoftext|>"  # no end token configured


# --- the judge ----------------------------------------------------------------------------------------

def test_judge_prompts_show_the_task_the_levels_and_the_answers():
    p = rating_prompt("Add the numbers.", "2, 3", "5", reference="5")
    for text in ("Add the numbers.", "2, 3", "valid and satisfying", "minor errors",
                 "significant errors", "irrelevant", "reference answer"):
        assert text in p
    assert p.rstrip().endswith("Rating:")
    assert "reference" not in rating_prompt("Say hi.", "", "Hi")
    q = pairwise_prompt("Say hi.", "", "Hello there", "Hey")
    assert q.index("Hello there") < q.index("Hey") and "Input:" not in q


@pytest.mark.parametrize("reply, expected", [
    ("A", "A"), ("B", "B"), ("c", "C"), (" D\n", "D"),
    ("Rating: B", "B"), ("rating: d", "D"), ("Rating - C (significant errors)", "C"),
    ("**C**", "C"), ("**Rating:** A", "A"), ("Rating: **B**", "B"), ("(B)", "B"),
    ("The answer is rated D because it ignores the question.", "D"),
    ("I would rate this answer as C.", "C"), ("I'd give it a B.", "B"), ("This deserves an A.", "A"),
    ("The rating is a B", "B"), ("Grade: c", "C"), ("Level D", "D"), ("Rating: a.", "A"),
    ("A. The answer is correct and complete.", "A"), ("A - valid and satisfying", "A"),
    ("A because it answers every part.", "A"), ("B+", "B"),
    ("The level of detail is fine. Rating: B", "B"),
    ("My rating:\n\n**D**", "D"),
    ("The answer covers the main points but misses the deadline.\nB", "B"),
    # no rating
    ("A good answer overall.", None), ("This is a reasonable attempt.", None),
    ("The answer is rated a solid effort.", None), ("Score: Bad", None),
    ("Rating: Average", None), ("C++ is used correctly.", None), ("", None), (None, None),
    ("I cannot give a rating without more context.", None),
])
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


@pytest.mark.parametrize("reply, expected", [
    ("1", "1"), ("2", "2"), ("**2**", "2"), ("2.", "2"), (" 1\n\nIt is more complete.", "1"),
    ("Answer 1", "1"), ("Answer 2.", "2"), ("Response 2 - it is correct.", "2"),
    ("Tie", "tie"), ("tie.", "tie"), ("The second one", "2"), ("First.", "1"),
    ("Verdict: 2", "2"), ("Better answer: tie", "tie"), ("Winner: the first", "1"),
    ("Verdict: Answer 1", "1"), ("Better answer: neither", "tie"),
    ("Answer 2 is better.", "2"), ("I think Answer 1 is slightly better.", "1"),
    ("The first one is much more accurate.", "1"), ("Response 1 is worse than response 2.", "2"),
    ("I prefer answer 2.", "2"), ("Both are fine, but Answer 2 is better.", "2"),
    ("Both answers are equally good.", "tie"), ("Neither is better than the other.", "tie"),
    ("Answer 1 and Answer 2 are equally good.", "tie"), ("There is no clear winner.", "tie"),
    # no verdict
    ("2 answers are fine", None), ("hmm", None), ("", None), (None, None),
    ("Answer 1 gives more detail.", None),
])
def test_parse_pairwise(reply, expected):
    assert parse_pairwise(reply) == expected


@pytest.mark.parametrize("tuned_first, base_first, expected", [
    ("1", "2", "win"),    # tuned preferred in both orders
    ("2", "1", "loss"),   # base preferred in both orders
    ("1", "1", "tie"),    # the judge always picks Answer 1: position bias, cancelled
    ("2", "2", "tie"),    # always Answer 2
    ("tie", "tie", "tie"),
    ("1", "tie", "win"), ("tie", "2", "win"),
    ("2", "tie", "loss"), ("tie", "1", "loss"),
    (None, "2", None), ("1", None, None),
])
def test_pairwise_outcome_combines_both_orders(tuned_first, base_first, expected):
    assert pairwise_outcome(tuned_first, base_first) == expected


def test_win_rate_counts_ties_half():
    assert win_rate(["win", "win", "tie", "loss", None]) == (2 + 0.5) / 4
    assert win_rate(["tie", "tie"]) == 0.5
    assert win_rate(["loss"]) == 0.0
    assert win_rate([None]) is None and win_rate([]) is None
    outcomes = [pairwise_outcome(a, b) for a, b in [("1", "2"), ("1", "1"), ("2", "1"), ("1", "tie")]]
    assert outcomes == ["win", "tie", "loss", "win"]
    assert win_rate(outcomes) == 2.5 / 4
    with pytest.raises(ValueError):
        win_rate(["won"])
    with pytest.raises(ValueError):
        pairwise_outcome("A", "1")


def test_rating_shares():
    shares = rating_shares(["A", "A", "B", None, "D"])
    assert shares == {"rating_A": 0.5, "rating_B": 0.25, "rating_C": 0.0, "rating_D": 0.25,
                      "rating_unparsed": 1}
    assert rating_shares([None]) == {"rating_A": None, "rating_B": None, "rating_C": None,
                                     "rating_D": None, "rating_unparsed": 1}
    with pytest.raises(ValueError):
        rating_shares(["E"])

