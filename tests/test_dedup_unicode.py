"""Dedup beyond ASCII (issue 11): exact duplicates in any script are rejected as `duplicate`, empty
instructions as `empty`, filters.tokenizer=unicode lets ROUGE-L see words of any script, and a
non-string instruction in an input file fails naming the file and line. filters=paper keeps the
paper's rules and rule names."""

from __future__ import annotations

import json
import random
import re

import pytest

from selfinstruct.config import ConfigError, validate
from selfinstruct.datasets.formats import load_dataset, load_instructions
from selfinstruct.datasets.seeds import load_seeds
from selfinstruct.files import DataError, read_jsonl
from selfinstruct.filtering.rouge import RougeIndex, rouge_l_f, tokenize
from selfinstruct.filtering.rules import check_instruction
from selfinstruct.generation.instructions import filter_response
from selfinstruct.llm import Completion
from selfinstruct.pipeline import run
from selfinstruct.prompts.styles import make_style
from tests.conftest import compose
from tests.test_reliability import one_error_line, run_here

FAKE = ["llm=fake", "tracking=none"]

# Exact duplicates in three scripts: each second text differs from the first in case and whitespace only.
DUPLICATES = [
    ("请用中文写一首关于秋天的诗", " 请用中文写一首关于秋天的诗\t"),
    ("Напишите стихотворение об осени", "напишите  СТИХОТВОРЕНИЕ об осени"),
    ("🍎 🍐 🍌 🍇 🍉", "🍎 🍐\n🍌 🍇  🍉"),
]


def dedup(tmp_path, records, *overrides) -> tuple[list[dict], list[dict]]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    run_dir = tmp_path / "dedup"
    run(compose([*FAKE, f"llm.cache_dir={tmp_path / 'cache'}", "stages=[dedup]", f"input={path}", *overrides]),
        run_dir)
    return read_jsonl(run_dir / "instructions.jsonl"), read_jsonl(run_dir / "rejected.jsonl")


def test_rouge_score_tokens_miss_non_latin_duplicates():  # why the rule is needed
    for a, b in DUPLICATES:
        assert rouge_l_f(a, b) == 0.0


def test_dedup_rejects_exact_duplicates_in_any_script(tmp_path):
    records = [{"instruction": t} for pair in DUPLICATES for t in pair]
    kept, rejected = dedup(tmp_path, records)
    assert [r["instruction"] for r in kept] == [a for a, _ in DUPLICATES]
    assert [(r["candidate"], r["rule"]) for r in rejected] == [(b.strip(), "duplicate") for _, b in DUPLICATES]
    assert all(a in r["detail"] for (a, _), r in zip(DUPLICATES, rejected))
    assert [r["source_index"] for r in rejected] == [1, 3, 5]


def test_dedup_rejects_a_duplicate_of_a_seed(tmp_path):
    seed = load_seeds()[0].instruction
    kept, rejected = dedup(tmp_path, [{"instruction": seed.upper()}])
    assert kept == [] and rejected[0]["rule"] == "duplicate" and seed in rejected[0]["detail"]


def test_dedup_rejects_empty_instructions(tmp_path):
    kept, rejected = dedup(tmp_path, [{"instruction": ""}, {"instruction": " \n\t"},
                                      {"instruction": "Name three rivers in Spain."}])
    assert [r["instruction"] for r in kept] == ["Name three rivers in Spain."]
    assert [(r["rule"], r["source_index"]) for r in rejected] == [("empty", 0), ("empty", 1)]


def test_instructions_stage_rejects_exact_duplicates_in_any_script():
    # Russian words: the paper's non-ASCII and our not-English rules are off, as for a Russian seed set
    cfg = compose(["filters.reject_non_ascii_start=false", "filters.reject_degenerate=false"])
    pool = RougeIndex(["Напишите стихотворение об осени и листьях"])
    text = ("1. напишите  стихотворение об ОСЕНИ и листьях\n2. Переведите этот текст на английский язык\n"
            "3. переведите этот текст на английский язык")
    kept, rejected = filter_response(Completion(text, "stop"), 1, "instructions/0", pool, cfg.filters,
                                     make_style(cfg.prompt, []))
    assert [k["instruction"] for k in kept] == ["Переведите этот текст на английский язык"]
    assert [r["rule"] for r in rejected] == ["duplicate", "duplicate"]
    assert "Напишите стихотворение об осени и листьях" in rejected[0]["detail"]


@pytest.mark.parametrize("filters, rule", [("paper", "rouge"), ("default", "duplicate")])
def test_an_ascii_exact_duplicate_is_rouge_under_the_papers_rules(filters, rule):
    cfg = compose([f"filters={filters}"])
    pool = RougeIndex(["Name three rivers in Spain and their lengths."])
    kept, rejected = filter_response(Completion(" name three  rivers in Spain and their lengths.", "stop"), 1,
                                     "instructions/0", pool, cfg.filters, make_style(cfg.prompt, []))
    assert kept == [] and [r["rule"] for r in rejected] == [rule]


def test_papers_rules_keep_non_latin_duplicates():  # the paper's rule set, unchanged
    cfg = compose(["filters=paper"])
    index = RougeIndex(["请用中文写一首关于秋天的诗"])
    decision, = index.filter(["请用中文写一首关于秋天的诗"], cfg.filters.rouge_threshold,
                             duplicates=cfg.filters.reject_duplicates)
    assert decision.accepted


def test_empty_instruction_rule():
    default, paper = compose([]).filters, compose(["filters=paper"]).filters
    assert check_instruction("  ", default)[0] == "empty"
    assert check_instruction("  ", paper)[0] == "too_short"  # the original code: 0 words <= 3
    assert check_instruction("", compose(["filters=paper", "filters.min_words=0"]).filters)[0] == "empty"
    assert check_instruction("", compose(["filters=none"]).filters)[0] == "empty"


# --- filters.tokenizer=unicode ----------------------------------------------------------------------

def test_unicode_tokens():
    assert tokenize("请写一首诗", "unicode") == ["请", "写", "一", "首", "诗"]
    assert tokenize("日本語のテキスト", "unicode") == list("日本語のテキスト")
    assert tokenize("한국어 문장", "unicode") == list("한국어문장")
    assert tokenize("नमस्ते दुनिया, ПРИВЕТ мир!", "unicode") == ["नमस्ते", "दुनिया", "привет", "мир"]
    assert tokenize("Café naïve 42x", "unicode") == ["café", "naïve", "42x"]
    assert tokenize("Café naïve 42x") == ["caf", "na", "ve", "42x"]  # rouge-score's


def test_chinese_near_duplicates_need_the_unicode_tokenizer(tmp_path):
    texts = ["请用中文写一首关于秋天的诗", "请用中文写一首关于春天的诗"]  # one character differs
    assert rouge_l_f(*texts) == 0.0 and rouge_l_f(*texts, tokenizer="unicode") > 0.9
    for tokenizer, kept_count in (("rouge_score", 2), ("unicode", 1)):
        kept, rejected = dedup(tmp_path / tokenizer, [{"instruction": t} for t in texts],
                               f"filters.tokenizer={tokenizer}")
        assert len(kept) == kept_count
        assert [r["rule"] for r in rejected] == ([] if tokenizer == "rouge_score" else ["rouge"])


def test_tokenizer_is_validated():
    with pytest.raises(ConfigError, match=r"filters\.tokenizer"):
        validate(compose(["filters.tokenizer=nltk"]))


def reference_f(target: list[str], prediction: list[str]) -> float:
    """ROUGE-L F by the textbook LCS table and rouge-score's formula."""
    m, n = len(target), len(prediction)
    table = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m):
        for j in range(n):
            table[i + 1][j + 1] = table[i][j] + 1 if target[i] == prediction[j] else \
                max(table[i][j + 1], table[i + 1][j])
    lcs = table[m][n]
    if lcs == 0:
        return 0.0
    p, r = lcs / n, lcs / m
    return 2 * p * r / (p + r)


def random_multilingual(rng: random.Random) -> str:
    words = ["Write", "a", "poem", "über", "Ärger", "напишите", "стих", "नमस्ते", "दुनिया", "مرحبا",
             "42", "x_y", "🍎", "?!", "秋", "天", "诗", "の", "テ", "한", "국"]
    return "".join(rng.choice(words) + rng.choice([" ", "", ", ", "\n"]) for _ in range(rng.randint(0, 14)))


def test_unicode_rouge_equals_a_reference_lcs_on_random_multilingual_texts():
    rng = random.Random(11)
    texts = [random_multilingual(rng) for _ in range(300)]
    pool, candidates = texts[:100], texts[100:]
    index = RougeIndex(pool, tokenizer="unicode")
    tokens = {t: tokenize(t, "unicode") for t in texts}
    matrix = index.score_matrix(candidates[:60])
    for text, row in zip(candidates[:60], matrix.tolist()):
        expected = [reference_f(tokens[p], tokens[text]) for p in pool]
        assert index.scores(text).tolist() == expected == row  # bit for bit
        assert all(rouge_l_f(p, text, "unicode") == e for p, e in zip(pool, expected))
    # the filter, block-wise and pruned, decides as the one-at-a-time loop with the reference scores
    decisions = RougeIndex(pool, tokenizer="unicode").filter(candidates, 0.7, top_k=3)
    grown = list(pool)
    for text, decision in zip(candidates, decisions):
        best = max((reference_f(tokens[p], tokens[text]) for p in grown), default=0.0)
        assert (decision.max_score, decision.accepted) == (best, best <= 0.7)
        if decision.accepted:
            grown.append(text)


# --- a non-string instruction names the file and line ----------------------------------------------

@pytest.mark.parametrize("value", [5, None, ["a list"]])
def test_a_non_string_instruction_names_file_and_line(tmp_path, value):
    path = tmp_path / "input.jsonl"
    path.write_text('{"instruction": "Name three rivers in Spain."}\n\n' + json.dumps({"instruction": value}) + "\n")
    for load in (load_dataset, load_instructions):
        with pytest.raises(DataError, match=r"input\.jsonl:3: field .instruction. is " + re.escape(json.dumps(value))):
            load(path)
    for stage in ("dedup", "analyze"):
        line = one_error_line(run_here([*FAKE, f"llm.cache_dir={tmp_path / 'cache'}", f"stages=[{stage}]",
                                        f"input={path}", "analyze.plots=false"], tmp_path / stage))
        assert f"{path}:3: field 'instruction'" in line and "strip" not in line


def test_a_non_string_instruction_in_a_json_list_names_the_item(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi"},
                                {"instruction": 7, "input": "", "output": "x"}]))
    with pytest.raises(DataError, match=r"alpaca\.json: item 1: field 'instruction' is 7, not a string"):
        load_dataset(path)
