"""The fast ROUGE-L filter must agree with rouge-score bit for bit, and with the paper's loop.

Every float comparison here is exact (`==` or byte equality), never approximate: the novelty
filter's decisions depend on the last bit (see test_mathematical_ties_at_0_7).
"""

from __future__ import annotations

import json
import random
from fractions import Fraction

import numpy as np
import pytest

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
from rouge_score import tokenize as rs_tokenize  # noqa: E402

import selfinstruct.filtering.rouge as rouge  # noqa: E402
from selfinstruct.filtering.rouge import Decision, RougeIndex, rouge_l_f, tokenize  # noqa: E402
from tests.helpers import SHARED_DATA, original_seed_instructions, real_instructions  # noqa: E402

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

ODD_TEXTS = [
    "", " ", "!!!", "...?!", "\n\t", "a", "A", "Hello, World!", "hello world", "HELLO   WORLD",
    "naïve café résumé", "Über straße", "größe Ärger", "東京 タワー", "我爱北京", "emoji 🙂 test 🚀!",
    "İstanbul", "\u212a kelvin", "ǅungla", "ﬁle ﬂow", "x²+y³=z", "½ ⅓ ¼", "٣ arabic digits ٤",
    "2023-01-01 12:30", "e.g. 3.14159 and 42", "C++ vs C# vs F#", "don't can't won't",
    "snake_case and kebab-case", "a\u00a0b\u2003c", "a\u200bb", "tab\tsep\tvalues", "ALLCAPS allcaps",
    "Write a poem.", "write a POEM", "Write a poem about the sea.", "the the the the",
    "Explain machine learning", "Explain the machine learning model",
]


def rs_f(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def soup(rng: random.Random, vocab: list[str], lengths=(0, 1, 2, 3, 4, 5, 7, 10, 13, 20, 40)) -> str:
    words = [rng.choice(vocab) for _ in range(rng.choice(lengths))]
    seps = [rng.choice([" ", " ", ", ", "-", "  ", "! "]) for _ in words]
    return "".join(w + s for w, s in zip(words, seps)).strip()


SMALL_VOCAB = ["a", "b", "c", "the", "of", "The", "A", "x1", "2", "é", "data", "Data", "write", "🙂", "東京"]


# -- tokenizer and pairwise scores --------------------------------------------------------------


def test_tokenize_matches_rouge_score():
    rng = random.Random(1)
    texts = ODD_TEXTS + [soup(rng, SMALL_VOCAB) for _ in range(300)]
    texts += ["".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(30)) for _ in range(300)]
    for t in texts:
        assert tokenize(t) == rs_tokenize.tokenize(t, None), t
    # lowercasing happens before the [a-z0-9] filter, exactly as in rouge-score
    assert tokenize("İstanbul") == ["i", "stanbul"]
    assert tokenize("\u212a") == ["k"]
    assert tokenize("naïve café") == ["na", "ve", "caf"]


def test_rouge_l_f_bit_identical_on_word_soups():
    rng = random.Random(0)
    texts = ODD_TEXTS + [soup(rng, SMALL_VOCAB) for _ in range(400)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(4000)]
    pairs += [(a, b) for a in ODD_TEXTS for b in ODD_TEXTS]
    nonzero = 0
    for a, b in pairs:
        ours = rouge_l_f(a, b)
        assert type(ours) is float
        ref = rs_f(a, b)
        assert ours == ref, (a, b, ours, ref)
        # the direction does not matter, bit for bit (see the module docstring)
        assert rouge_l_f(b, a) == ref
        nonzero += ref > 0
    assert nonzero > 2000  # the sample really exercises the LCS, not just the zero cases


def test_f_is_bit_symmetric_for_all_lengths():
    # rouge-score computes f = 2*p*r/(p+r) with p = lcs/len(pred), r = lcs/len(target); swapping the
    # roles swaps p and r, and (2*p)*r == (2*r)*p exactly. Check every (lcs, m, n) up to 120 tokens.
    for m in range(1, 121):
        for n in range(1, 121):
            lcs = np.arange(min(m, n) + 1)
            assert np.array_equal(rouge._f_measure(lcs, m, n), rouge._f_measure(lcs, n, m))
    assert rouge._f_scalar(7, 10, 10) == rouge._f_measure(np.array([7]), 10, 10)[0] == 0.7


@pytest.mark.parametrize("max_ix", [50, 2**40, 2**60])  # 2**60 takes the lexsort fallback
def test_top_k_sort_order(max_ix):
    rng = np.random.default_rng(7)
    r = rng.integers(0, 30, 5000)
    v = rng.integers(0, 40, 5000) / 39.0  # many ties
    v[::7] = np.nextafter(v[::7], 2.0)  # and values one ulp apart
    ix = rng.integers(0, max_ix, 5000)
    order = np.lexsort((ix, -v, r))  # row, then score descending, then the earlier pool entry
    for got, want in zip(rouge._sort_entries(r, v, ix), (r[order], v[order], ix[order])):
        assert np.array_equal(got, want) and got.dtype == want.dtype


def _tokens(n: int, start: int = 0) -> list[str]:
    return [f"w{i}" for i in range(start, start + n)]


def test_mathematical_ties_at_0_7():
    """F = 2*lcs/(m+n) = 0.7 exactly in rational arithmetic is NOT always 0.7 in float64.

    (lcs, m, n) = (7, 10, 10) gives exactly 0.7 (kept at threshold 0.7), but (7, 7, 13) — a 7-token
    instruction contained in a 13-token one — gives 0.7000000000000001 and rouge-score rejects it;
    (21, 23, 37) gives 0.6999999999999998. The filter must reproduce all three.
    """
    cases = {}
    for m in range(1, 60):
        for n in range(1, 60):
            for lcs in range(1, min(m, n) + 1):
                if Fraction(2 * lcs, m + n) == Fraction(7, 10):
                    cases.setdefault(np.sign(rouge._f_scalar(lcs, m, n) - 0.7), (lcs, m, n))
    assert set(cases) == {-1, 0, 1}  # all three outcomes really occur
    assert cases[0] == (7, 10, 10)

    for (lcs, m, n), sign in [((7, 10, 10), 0), ((7, 7, 13), 1), ((21, 23, 37), -1)]:
        common = _tokens(lcs)
        pred = " ".join(common + _tokens(m - lcs, 1000))
        target = " ".join(common + _tokens(n - lcs, 2000))
        ref = rs_f(target, pred)
        assert np.sign(ref - 0.7) == sign, (lcs, m, n, ref)
        assert rouge_l_f(target, pred) == ref
        index = RougeIndex([target])
        assert index.scores(pred)[0] == ref
        (d,) = index.filter([pred], threshold=0.7)
        assert d.max_score == ref
        assert d.accepted == (sign <= 0)  # F == threshold is kept; one ulp above is rejected


def test_scores_bit_identical_and_in_pool_order():
    rng = random.Random(2)
    pool = ODD_TEXTS + [soup(rng, SMALL_VOCAB) for _ in range(300)] + ODD_TEXTS[:5]
    index = RougeIndex(pool)
    assert len(index) == len(pool)
    for c in [soup(rng, SMALL_VOCAB) for _ in range(40)] + ["", "!!", pool[50]]:
        ours = index.scores(c)
        ref = np.array([rs_f(p, c) for p in pool], dtype=np.float64)  # target=pool, prediction=c
        assert ours.dtype == np.float64 and ours.shape == (len(pool),)
        assert ours.tobytes() == ref.tobytes(), c
    assert RougeIndex().scores("anything").shape == (0,)


def test_vocabulary_beyond_the_surrogate_block():
    assert rouge._code_point(0xD7FF) == "\ud7ff"
    assert rouge._code_point(0xD800) == "\ue000"  # surrogates are skipped
    index = RougeIndex()
    index.add(" ".join(f"t{i}" for i in range(0xD800 + 100)))  # ids run past the surrogate block
    high = " ".join(f"t{i}" for i in range(0xD800 - 5, 0xD800 + 60))
    index.add(high)
    rng = random.Random(3)
    words = [f"t{i}" for i in range(0xD800 - 20, 0xD800 + 80)] + ["new", "words"]
    for _ in range(30):
        c = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 30)))
        assert index.scores(c)[1] == rs_f(high, c)


# -- the novelty filter -------------------------------------------------------------------------


def naive_filter(pool: list[str], candidates: list[str], threshold: float, top_k: int) -> list[Decision]:
    """The paper's loop with rouge-score: score against everything kept so far, keep if max <= t.

    Uses rouge-score's own tokenizer and `_score_lcs` (what RougeScorer.score calls), with the
    tokens cached so the reference runs in seconds.
    """
    tok = {}

    def toks(t):
        if t not in tok:
            tok[t] = rs_tokenize.tokenize(t, None)
        return tok[t]

    pool = list(pool)
    out = []
    for c in candidates:
        scores = [float(rouge_scorer._score_lcs(toks(p), toks(c)).fmeasure) for p in pool]
        best = max(scores, default=0.0)
        sims = {}
        for i in sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:top_k]:
            sims.setdefault(pool[i], scores[i])
        keep = not best > threshold
        out.append(Decision(keep, best, sims))
        if keep:
            pool.append(c)
    return out


def assert_same_decisions(ours: list[Decision], ref: list[Decision]):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.accepted == b.accepted, (i, a, b)
        assert a.max_score == b.max_score, (i, a, b)
        assert list(a.most_similar.items()) == list(b.most_similar.items()), (i, a, b)  # order too


@pytest.mark.parametrize("small_blocks", [False, True])
def test_filter_matches_paper_loop_on_word_soups(monkeypatch, small_blocks):
    if small_blocks:  # many blocks and many chunks per bucket: exercises every merge path
        monkeypatch.setattr(rouge, "_BLOCK", 7)
        monkeypatch.setattr(rouge, "_CELLS", 60)
    rng = random.Random(4)
    vocab = ["a", "b", "c", "d", "e", "the", "of", "to", "x", "y", "z", "q"]
    rejected = accepted = 0
    for trial in range(20):
        pool = [soup(rng, vocab) for _ in range(rng.randrange(0, 60))]
        cands = [soup(rng, vocab) for _ in range(rng.randrange(1, 80))]
        cands += [rng.choice(cands) for _ in range(5)] + ["", "..."]  # in-batch duplicates, empties
        rng.shuffle(cands)
        threshold = rng.choice([0.0, 0.3, 0.5, 0.7, 0.7, 0.9, 1.0])
        top_k = rng.choice([0, 1, 3, 10])
        index = RougeIndex(pool, workers=rng.choice([1, 2]))
        ours = index.filter(cands, threshold, top_k)
        ref = naive_filter(pool, cands, threshold, top_k)
        assert_same_decisions(ours, ref)
        assert len(index) == len(pool) + sum(d.accepted for d in ref)
        rejected += sum(not d.accepted for d in ref)
        accepted += sum(d.accepted for d in ref)
    assert rejected > 100 and accepted > 100, (rejected, accepted)


def test_filter_in_batch_duplicates_and_pool_growth():
    index = RougeIndex(["Give me three tips for staying healthy."])
    a = "Write a short story about a dragon who learns to fly."
    b = "Write a short story about a dragon who learns to swim."
    ds = index.filter([a, a, b, "Summarize this article in two sentences.", a], threshold=0.7)
    assert [d.accepted for d in ds] == [True, False, False, True, False]
    assert ds[1].max_score == 1.0 and next(iter(ds[1].most_similar)) == a
    assert ds[2].max_score == rs_f(a, b) > 0.7
    assert len(index) == 3
    # a later call sees what the earlier one accepted
    (d,) = index.filter([a], threshold=0.7)
    assert not d.accepted and d.max_score == 1.0


def test_threshold_semantics_and_most_similar_order():
    pool = ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"]
    c = "w0 w1 w2 w3 w4 w5 w6 x y z"  # lcs 7 of 10 and 10: F == 0.7 exactly
    assert rouge_l_f(pool[0], c) == 0.7
    (d,) = RougeIndex(pool).filter([c], threshold=0.7)
    assert d.accepted and d.max_score == 0.7  # equal to the threshold: kept
    (d,) = RougeIndex(pool).filter([c], threshold=0.6999999999999999)
    assert not d.accepted

    # threshold 1.0 rejects nothing, not even exact duplicates (1.0 > 1.0 is false) ...
    index = RougeIndex(pool)
    ds = index.filter([pool[0], pool[0], "W0, w1 w2 w3 w4 w5 w6 w7 w8 w9!"], threshold=1.0)
    assert all(d.accepted for d in ds) and [d.max_score for d in ds] == [1.0, 1.0, 1.0]
    assert len(index) == 4
    # ... while a threshold just below 1.0 rejects them
    ds = RougeIndex(pool).filter([pool[0]], threshold=0.9999)
    assert not ds[0].accepted

    # most_similar: highest first, ties broken by the earlier pool entry, at most top_k entries
    pool = ["a b c d", "a b x y", "q r s t", "a b c z", "a x y z", "a b x w"]
    index = RougeIndex(pool)
    (d,) = index.filter(["a b c d"], threshold=1.0, top_k=4)
    assert list(d.most_similar) == ["a b c d", "a b c z", "a b x y", "a b x w"]
    assert list(d.most_similar.values()) == [1.0, 0.75, 0.5, 0.5]
    (d,) = index.filter(["q"], threshold=0.7, top_k=3)  # ties at 0.0 fill in pool order
    assert list(d.most_similar.items()) == [("q r s t", rs_f("q r s t", "q")), ("a b c d", 0.0), ("a b x y", 0.0)]
    (d,) = index.filter(["a b"], threshold=0.7, top_k=0)
    assert d.most_similar == {} and d.max_score == rs_f("a b c d", "a b")
    assert all(len(x.most_similar) <= 2 for x in index.filter(["a", "b c", "zz"], 0.7, top_k=2))

    # an empty pool: everything passes with max 0.0
    ds = RougeIndex().filter(["hello", ""], threshold=0.0)
    assert [(d.accepted, d.max_score) for d in ds] == [(True, 0.0), (True, 0.0)]


def _real_instructions() -> tuple[list[str], list[str]]:
    if not (SHARED_DATA / "runs").is_dir():
        pytest.skip(f"../shared is absent: real instruction data not found at {SHARED_DATA / 'runs'}")
    texts = real_instructions()
    if len(texts) < 2000:
        pytest.skip(f"too few real instructions under {SHARED_DATA / 'runs'}")
    return original_seed_instructions(), texts


def _near_duplicate(rng: random.Random, text: str) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        op, i = rng.choice("sid"), rng.randrange(len(words))
        if op == "s":
            words[i] = rng.choice(["new", "short", "given", "list", "best"])
        elif op == "i":
            words.insert(i, rng.choice(["please", "also", "then", "a", "the"]))
        elif len(words) > 2:
            del words[i]
    return " ".join(words)


def test_filter_matches_paper_loop_on_real_instructions():
    seeds, texts = _real_instructions()
    rng = random.Random(5)
    cands = rng.sample(texts, 150)
    cands += [_near_duplicate(rng, t) for t in rng.sample(cands, 30) + rng.sample(seeds or texts, 20)]
    rng.shuffle(cands)
    pool = seeds[:100] if seeds else texts[-100:]
    ours = RougeIndex(pool).filter(cands, 0.7, 10)
    ref = naive_filter(pool, cands, 0.7, 10)
    assert_same_decisions(ours, ref)
    assert 10 < sum(not d.accepted for d in ref) < len(ref) - 100, sum(not d.accepted for d in ref)


def test_filter_matches_one_by_one_scores_on_many_real_instructions():
    """Blocks, pruning and the top-k merge vs. the plain loop over `scores` (itself checked against
    rouge-score above), on thousands of real instructions."""
    seeds, texts = _real_instructions()
    rng = random.Random(6)
    cands = rng.sample(texts, 1500)
    cands += [_near_duplicate(rng, t) for t in rng.sample(cands, 300)]
    rng.shuffle(cands)
    ours = RougeIndex(seeds).filter(cands, 0.7, 10)

    plain, pool, rejected = RougeIndex(seeds), list(seeds), 0
    for c, d in zip(cands, ours):
        s = plain.scores(c)
        best = float(s.max()) if s.size else 0.0
        assert d.max_score == best
        top = np.lexsort((np.arange(s.size), -s))[:10]
        assert list(d.most_similar.items()) == list({pool[i]: float(s[i]) for i in top}.items())
        assert d.accepted == (not best > 0.7)
        if d.accepted:
            plain.add(c)
            pool.append(c)
        rejected += not d.accepted
    assert rejected > 100
