"""Checks on the hand-written seed tasks and prompt demonstrations shipped in selfinstruct/data.

These are data-quality tests: each assertion encodes a property the generation pipeline relies
on (field layout, label balance, the keyword blacklist of the instruction filter) or a property
we promised about the data itself (no near-duplicates within our seeds, and no close paraphrase
of the original SELF-INSTRUCT seed tasks).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from tests.helpers import ORIGINAL_SEEDS  # the original project's seed tasks, in ../shared

DATA_DIR = Path(__file__).resolve().parents[1] / "selfinstruct" / "data"
SEED_PATH = DATA_DIR / "seed_tasks.jsonl"
CLASSIFY_DEMOS_PATH = DATA_DIR / "classify_demos.jsonl"
INPUT_FIRST_PATH = DATA_DIR / "instance_demos_input_first.jsonl"
OUTPUT_FIRST_PATH = DATA_DIR / "instance_demos_output_first.jsonl"

SEED_KEYS = ["id", "name", "instruction", "instances", "is_classification"]
ROUGE_THRESHOLD = 0.7
# Same keyword list as the pipeline's instruction filter; matched as whole words, case-insensitively.
BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
             "map", "maps", "draw", "plot", "go to"]
BLACKLIST_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.IGNORECASE)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{path.name}:{lineno} is blank"
            rows.append(json.loads(line))
    return rows


@lru_cache(maxsize=None)
def seeds() -> tuple[dict, ...]:
    return tuple(_read_jsonl(SEED_PATH))


def seed_instructions() -> list[str]:
    return [t["instruction"] for t in seeds()]


@lru_cache(maxsize=None)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(a: str, b: str) -> float:
    return _scorer().score(a, b)["rougeL"].fmeasure


@lru_cache(maxsize=None)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_scorer()._tokenizer.tokenize(text))


def _fast_rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 identical to ``rouge_l`` but tokenizing each text only once (tens of thousands of pairs)."""
    return rouge_scorer._score_lcs(list(_tokens(a)), list(_tokens(b))).fmeasure


def _pair_scorer():
    # rouge-score's tokenizer and LCS helper are private; fall back to the public API if they move.
    if hasattr(rouge_scorer, "_score_lcs") and hasattr(_scorer(), "_tokenizer"):
        return _fast_rouge_l
    return rouge_l


def max_rouge_pairs(candidates: list[str], references: list[str]) -> tuple[float, str, str]:
    score = _pair_scorer()
    best = (0.0, "", "")
    for c in candidates:
        for r in references:
            s = score(r, c)
            if s > best[0]:
                best = (s, c, r)
    return best


# ---------------------------------------------------------------- seed tasks: structure


def test_seed_file_has_175_tasks_with_sequential_ids():
    tasks = seeds()
    assert len(tasks) == 175
    assert [t["id"] for t in tasks] == [f"seed_task_{i}" for i in range(175)]


def test_seed_fields_order_and_types():
    for t in seeds():
        assert list(t.keys()) == SEED_KEYS, t.get("id")
        assert isinstance(t["name"], str) and re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", t["name"]), t["id"]
        assert isinstance(t["instruction"], str) and t["instruction"].strip() == t["instruction"] != ""
        assert isinstance(t["is_classification"], bool), t["id"]
        assert isinstance(t["instances"], list) and len(t["instances"]) >= 1, t["id"]
        for inst in t["instances"]:
            assert set(inst) == {"input", "output"}, t["id"]
            assert isinstance(inst["input"], str) and isinstance(inst["output"], str), t["id"]
            assert inst["output"].strip(), f"{t['id']} has an empty output"


def test_seed_names_unique():
    names = [t["name"] for t in seeds()]
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})


def test_seed_instructions_unique_and_reasonable_length():
    instructions = seed_instructions()
    assert len(set(instructions)) == len(instructions)
    for t in seeds():
        n_words = len(t["instruction"].split())
        assert 4 <= n_words <= 60, (t["id"], n_words)
        for inst in t["instances"]:
            assert len(inst["output"].split()) <= 120, (t["id"], "output too long")


def test_enough_classification_tasks_with_short_label_outputs():
    cls = [t for t in seeds() if t["is_classification"]]
    assert len(cls) >= 25
    for t in cls:
        for inst in t["instances"]:
            assert len(inst["output"].split()) <= 6, f"{t['id']}: a classification output should be a label"


def test_share_of_tasks_with_input():
    with_input = sum(1 for t in seeds() if any(i["input"].strip() for i in t["instances"]))
    share = with_input / len(seeds())
    assert 0.25 <= share <= 0.45, share


def test_no_blacklisted_words_or_program_prefix_in_instructions():
    for t in seeds():
        ins = t["instruction"]
        m = BLACKLIST_RE.search(ins)
        assert m is None, f"{t['id']} contains blacklisted {m.group(0)!r}: {ins}"
        assert not ins.lower().startswith("write a program"), t["id"]


def test_blacklist_pattern_is_whole_word():
    # Guards the regex used above: whole words only, case-insensitive.
    assert BLACKLIST_RE.search("Plot the data") and BLACKLIST_RE.search("we go to school")
    assert not BLACKLIST_RE.search("the plotline of a profile with a mapping")


# ---------------------------------------------------------------- seed tasks: similarity


def test_pair_scorer_matches_public_rouge_api():
    instructions = seed_instructions()[:20]
    score = _pair_scorer()
    for a in instructions:
        for b in instructions[::3]:
            assert score(a, b) == pytest.approx(rouge_l(a, b))
    assert rouge_l("rewrite the email politely", "rewrite the email politely") == pytest.approx(1.0)


def test_no_near_duplicate_seed_instructions():
    instructions = seed_instructions()
    score = _pair_scorer()
    offenders = []
    for i in range(len(instructions)):
        for j in range(i + 1, len(instructions)):
            s = score(instructions[i], instructions[j])
            if s > ROUGE_THRESHOLD:
                offenders.append((round(s, 3), instructions[i], instructions[j]))
    assert not offenders, offenders


@pytest.fixture(scope="module")
def original_instructions() -> list[str]:
    if not ORIGINAL_SEEDS.exists():
        pytest.skip(f"../shared is absent: the original SELF-INSTRUCT seed tasks are not at {ORIGINAL_SEEDS}, "
                    "so originality against them cannot be checked here")
    return [t["instruction"] for t in _read_jsonl(ORIGINAL_SEEDS)]


def test_seed_instructions_are_not_paraphrases_of_the_original(original_instructions):
    assert len(original_instructions) == 175
    score, ours, theirs = max_rouge_pairs(seed_instructions(), original_instructions)
    assert score <= ROUGE_THRESHOLD, (round(score, 3), ours, theirs)


def test_demo_instructions_are_not_paraphrases_of_the_original(original_instructions):
    score, ours, theirs = max_rouge_pairs(all_demo_instructions(), original_instructions)
    assert score <= ROUGE_THRESHOLD, (round(score, 3), ours, theirs)


# ---------------------------------------------------------------- demonstrations


@lru_cache(maxsize=None)
def classify_demos() -> tuple[dict, ...]:
    return tuple(_read_jsonl(CLASSIFY_DEMOS_PATH))


@lru_cache(maxsize=None)
def input_first_demos() -> tuple[dict, ...]:
    return tuple(_read_jsonl(INPUT_FIRST_PATH))


@lru_cache(maxsize=None)
def output_first_demos() -> tuple[dict, ...]:
    return tuple(_read_jsonl(OUTPUT_FIRST_PATH))


def all_demo_instructions() -> list[str]:
    return [d["instruction"] for d in classify_demos() + input_first_demos() + output_first_demos()]


def _check_instances(demo: dict, lo: int, hi: int) -> None:
    assert set(demo) == {"instruction", "instances"}, demo
    assert isinstance(demo["instruction"], str) and demo["instruction"].strip()
    assert lo <= len(demo["instances"]) <= hi, demo["instruction"]
    for inst in demo["instances"]:
        assert set(inst) == {"input", "output"}
        assert isinstance(inst["input"], str) and isinstance(inst["output"], str)
        assert inst["output"].strip(), demo["instruction"]


def test_classify_demos_count_and_both_labels():
    demos = classify_demos()
    assert 25 <= len(demos) <= 35
    for d in demos:
        assert set(d) == {"instruction", "is_classification"}
        assert isinstance(d["instruction"], str) and d["instruction"].strip()
        assert isinstance(d["is_classification"], bool)
    n_true = sum(d["is_classification"] for d in demos)
    assert 10 <= n_true <= len(demos) - 10, n_true


def test_input_first_demos():
    demos = input_first_demos()
    assert len(demos) == 10
    for d in demos:
        _check_instances(d, 1, 3)
    no_input = [d for d in demos if all(not i["input"].strip() for i in d["instances"])]
    assert len(no_input) >= 3
    with_input = [d for d in demos if all(i["input"].strip() for i in d["instances"])]
    assert len(no_input) + len(with_input) == len(demos), "mixed input/no-input instances within one demo"


def test_output_first_demos_have_several_labels():
    demos = output_first_demos()
    assert len(demos) == 15
    for d in demos:
        _check_instances(d, 2, 4)
        labels = [i["output"].strip().lower() for i in d["instances"]]
        assert len(set(labels)) >= 2, d["instruction"]
        # The output-first prompt promises one worked example per label.
        assert len(set(labels)) == len(labels), d["instruction"]
        for inst in d["instances"]:
            assert inst["input"].strip(), d["instruction"]
            assert len(inst["output"].split()) <= 4, "output-first outputs should be class labels"


def test_demo_instructions_unique():
    instructions = all_demo_instructions()
    assert len(set(instructions)) == len(instructions)


def test_demos_do_not_duplicate_our_seed_tasks():
    score, demo, seed = max_rouge_pairs(all_demo_instructions(), seed_instructions())
    assert score <= ROUGE_THRESHOLD, (round(score, 3), demo, seed)
