"""Exact, fast ROUGE-L novelty filter (bit-identical to rouge-score, much faster).

SELF-INSTRUCT keeps a candidate instruction only if its ROUGE-L F1 against every instruction in
the pool (seeds + everything accepted so far) is <= 0.7. The reference code scores each candidate
against the whole pool in pure Python with `rouge_score` (~2e4 pairs/s), which makes the filter
quadratic *and* slow. This module computes the very same float64 numbers, far faster:

* Tokens are the ones of rouge-score's default tokenizer (no stemming), or with tokenizer="unicode"
  words of any script (see `tokenize`). Each distinct token gets an integer id, and each text
  becomes a string with one code point per token. ROUGE-L's LCS over tokens is then the character
  LCS of those strings, which `rapidfuzz.process.cdist` computes with a bit-parallel (SIMD)
  algorithm for many pairs at once.
* F is computed from (lcs, len_prediction, len_target) in numpy float64 with the exact operation
  order of rouge-score (`p = lcs/len_pred`, `r = lcs/len_target`, `f = 2*p*r/(p+r)`, 0 when lcs is
  0), so every score is bit-identical to `RougeScorer(["rougeL"]).score(target, prediction)`.
  The formula is also bit-symmetric: swapping target and prediction swaps p and r, and
  `(2*p)*r == (2*r)*p` exactly (scaling by 2 is exact, so both are round(2*p*r)), `p+r == r+p`.
* Exact pruning: LCS <= min(m, n), so F(m, n) <= 2*min(m, n)/(m+n). The pool is kept in
  token-length buckets and a bucket is scored for a candidate only if that bound can reach the
  candidate's current k-th best score (k = max(top_k, 1), so max_score is always exact). Inside a
  scored chunk, an integer test `lcs >= ceil(tau*(m+n_min)/2)` finds the few entries that can
  enter the top-k before any float work; the float F is then computed only for those.
* `filter` works in blocks of candidates: a block is scored against the pool as it stands
  (many-vs-many), then the pairs inside the block are settled in order (candidate i against the
  candidates j < i of the block that were accepted), exactly as the one-at-a-time loop would.

Ties in `most_similar` go to the earlier pool entry; equal pool texts share one dict key, so the
dict can hold fewer than top_k entries when the pool has duplicates.

`filter(..., duplicates=True)` also rejects exact duplicates (equal after lowercasing and collapsing
whitespace) of a pool text or of an earlier candidate, whatever the script: rouge-score's tokens
are [a-z0-9] only, so two equal Chinese texts score ROUGE-L 0 and would both pass.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import regex
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cdist

__all__ = ["TOKENIZERS", "tokenize", "duplicate_key", "rouge_l_f", "Decision", "RougeIndex"]

# rouge_score/tokenize.py: text.lower(), re.sub(r"[^a-z0-9]+", " "), split on whitespace, keep
# tokens matching ^[a-z0-9]+$. After the substitution the string is runs of [a-z0-9] separated by
# single spaces, so this is exactly findall over the lowercased text. Lowercasing happens first,
# and it matters: "İ" (U+0130) lowercases to "i" + U+0307 and the Kelvin sign (U+212A) to "k".
_TOKEN_RE = re.compile(r"[a-z0-9]+")
# tokenizer="unicode": lowercased word runs of any script (\w of the regex module includes combining
# marks, so Devanagari or Thai words stay whole, unlike the stdlib's \w), and one token per
# character for scripts written without spaces between words (Han, Hiragana, Katakana, Hangul).
_PER_CHAR = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
_UNICODE_RE = regex.compile(rf"[{_PER_CHAR}]|[\w--[{_PER_CHAR}]]+", regex.V1)
TOKENIZERS = {"rouge_score": _TOKEN_RE.findall, "unicode": _UNICODE_RE.findall}


def tokenize(text: str, tokenizer: str = "rouge_score") -> list[str]:
    """rouge-score's default tokenizer without stemming (lowercase, [a-z0-9] runs), or "unicode"."""
    return TOKENIZERS[tokenizer](text.lower())


def duplicate_key(text: str) -> str:
    """What two texts share when they are exact duplicates: the text lowercased, whitespace collapsed."""
    return " ".join(text.lower().split())


def _f_measure(lcs: np.ndarray, len_pred, len_target) -> np.ndarray:
    """ROUGE-L F from LCS lengths, with rouge-score's float64 operation order.

    rouge_scorer._score_lcs: 0 if either token list is empty, else p = lcs/len(prediction),
    r = lcs/len(target), scoring.fmeasure(p, r) = 2*p*r/(p+r) if p+r > 0 else 0.
    Lengths are ints (exact in float64), so int/int division matches Python's true division.
    """
    lcs = np.asarray(lcs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = lcs / len_pred
        r = lcs / len_target
        f = 2 * p * r / (p + r)
    f[lcs == 0] = 0.0  # also covers empty texts (lcs is 0 there, and 0/0 is nan above)
    return f


def _f_scalar(lcs: int, len_pred: int, len_target: int) -> float:
    if lcs == 0:
        return 0.0
    p = lcs / len_pred
    r = lcs / len_target
    return 2 * p * r / (p + r)


def rouge_l_f(a: str, b: str, tokenizer: str = "rouge_score") -> float:
    """ROUGE-L F1 of two texts; equals RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure
    bit for bit (and score(b, a): F is bit-symmetric, see the module docstring)."""
    ta, tb = tokenize(a, tokenizer), tokenize(b, tokenizer)
    if not ta or not tb:
        return 0.0
    ids: dict[str, str] = {}
    sa = "".join([ids.setdefault(t, _code_point(len(ids))) for t in ta])
    sb = "".join([ids.setdefault(t, _code_point(len(ids))) for t in tb])
    return _f_scalar(LCSseq.similarity(sa, sb), len(tb), len(ta))


_SURROGATES = 0xE000 - 0xD800
_MAX_TOKENS = 0x110000 - _SURROGATES


def _code_point(token_id: int) -> str:
    """Token id -> one code point, skipping the surrogate block. Ids are given in order of first
    appearance, so common words get small code points and most texts stay 2-byte strings, which
    rapidfuzz handles faster than 4-byte ones."""
    if token_id >= 0xD800:
        token_id += _SURROGATES
        if token_id > 0x10FFFF:
            raise RuntimeError(f"RougeIndex vocabulary exceeds {_MAX_TOKENS} distinct tokens")
    return chr(token_id)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    max_score: float  # max ROUGE-L F vs the pool (0.0 for an empty pool)
    most_similar: dict[str, float]  # up to top_k pool texts -> score, highest first
    duplicate_of: Optional[str] = None  # the pool text or earlier candidate it duplicates (not scored)


# Pool length buckets (token counts): exact lengths up to 12, then ~15% wider each; the pruning
# bound uses the bucket's smallest / largest length.
def _make_edges() -> np.ndarray:
    edges = list(range(13))
    while edges[-1] < 4096:
        edges.append(max(edges[-1] + 1, int(edges[-1] * 1.15)))
    edges.append(np.iinfo(np.int64).max)
    return np.asarray(edges, dtype=np.int64)


_EDGES = _make_edges()  # bucket b holds lengths in [_EDGES[b], _EDGES[b+1])
_EDGE_LIST = _EDGES.tolist()
_BLOCK = 1024  # candidates per block in filter()
_CELLS = 1 << 22  # max LCS matrix entries per cdist call (16 MiB of int32)
_SLACK = 1e-9  # relative slack covering float rounding in bounds (F differs from 2L/(m+n) by ~1e-16)


def _bound(m: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Upper bound of 2*min(m,n)/(m+n) (>= ROUGE-L F) for lengths m against n in [lo, hi]."""
    m = m.astype(np.float64)
    below = 2.0 * hi / np.maximum(m + hi, 1.0)  # bucket entirely shorter than m: best n = hi
    above = 2.0 * m / np.maximum(m + lo, 1.0)  # bucket entirely longer than m: best n = lo
    out = np.where(hi < m, below, np.where(lo > m, above, 1.0))
    if hi == 0:
        out[:] = 0.0
    out[m == 0] = 0.0
    return out


class _Bucket:
    """Pool entries whose token count is in [lo, hi]: encoded strings, pool indices, lengths."""

    __slots__ = ("lo", "hi", "strs", "idx", "_arrays")

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.strs: list[str] = []
        self.idx: list[int] = []
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def append(self, s: str, i: int) -> None:
        self.strs.append(s)
        self.idx.append(i)
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices, token lengths) as int64 arrays, cached until the next append."""
        if self._arrays is None:
            self._arrays = (np.asarray(self.idx, dtype=np.int64),
                            np.fromiter(map(len, self.strs), dtype=np.int64, count=len(self.strs)))
        return self._arrays


def _sort_entries(r: np.ndarray, v: np.ndarray, ix: np.ndarray):
    """Sort (row, score, pool index) triples by row, score descending, pool index.

    Same order as np.lexsort((ix, -v, r)), but about 3x faster: the distinct scores are ranked
    (exactly: np.unique compares the floats themselves) and the three keys packed into one int64.
    """
    uniq, vrank = np.unique(v, return_inverse=True)
    bits_ix, bits_v = max(int(ix.max(initial=0)).bit_length(), 1), max(len(uniq).bit_length(), 1)
    if int(r.max(initial=0)).bit_length() + bits_v + bits_ix > 63:  # not packable: plain lexsort
        order = np.lexsort((ix, -v, r))
        return r[order], v[order], ix[order]
    desc = len(uniq) - 1 - vrank.astype(np.int64)  # 0 for the highest score
    key = (r.astype(np.int64) << (bits_v + bits_ix)) | (desc << bits_ix) | ix
    key.sort()
    desc = (key >> bits_ix) & ((1 << bits_v) - 1)
    return key >> (bits_v + bits_ix), uniq[len(uniq) - 1 - desc], key & ((1 << bits_ix) - 1)


class _TopK:
    """Per-row top-k of (score desc, pool index asc); -1 marks an empty slot."""

    def __init__(self, rows: int, k: int):
        self.k = k
        self.val = np.full((rows, k), -1.0)
        self.idx = np.full((rows, k), -1, dtype=np.int64)

    @property
    def tau(self) -> np.ndarray:
        """Score an entry must reach to enter (the k-th best so far; -1 while not full)."""
        return self.val[:, -1]

    def merge(self, rows: np.ndarray, vals: np.ndarray, idxs: np.ndarray) -> None:
        if rows.size == 0:
            return
        k = self.k
        touched = np.unique(rows)
        r = np.concatenate([np.repeat(touched, k), rows])
        v = np.concatenate([self.val[touched].ravel(), vals])
        ix = np.concatenate([self.idx[touched].ravel(), idxs])
        ok = v >= 0.0
        r, v, ix = _sort_entries(r[ok], v[ok], ix[ok])
        rank = np.arange(r.size) - np.searchsorted(r, r, side="left")
        keep = rank < k
        self.val[touched] = -1.0
        self.idx[touched] = -1
        self.val[r[keep], rank[keep]] = v[keep]
        self.idx[r[keep], rank[keep]] = ix[keep]

    def offer_dense(self, rows: np.ndarray, f: np.ndarray, cols_idx: np.ndarray) -> None:
        """Offer a dense score matrix f (len(rows) x len(cols_idx)); -1 entries are ignored."""
        c = f.shape[1]
        thr = self.tau[rows]
        if c > self.k:
            kth = np.partition(f, c - self.k, axis=1)[:, c - self.k]
            thr = np.maximum(thr, kth)
        rr, cc = np.nonzero(f >= thr[:, None])
        self.merge(rows[rr], f[rr, cc], cols_idx[cc])


class RougeIndex:
    """A growing pool of texts with exact ROUGE-L F queries and the SELF-INSTRUCT novelty filter.

    workers: threads for rapidfuzz's cdist (-1 = all cores). tokenizer: a TOKENIZERS name.
    """

    def __init__(self, texts: Iterable[str] = (), *, workers: int = 1, tokenizer: str = "rouge_score"):
        self.workers = workers
        self._tokens = TOKENIZERS[tokenizer]
        self._chars: dict[str, str] = {}  # token -> code point
        self._texts: list[str] = []
        self._keys: dict[str, str] = {}  # duplicate_key -> the first pool text with it
        self._enc: list[str] = []  # encoded texts, pool order
        self._lens: list[int] = []
        self._buckets = [_Bucket(int(_EDGES[b]), int(_EDGES[b + 1]) - 1) for b in range(len(_EDGES) - 1)]
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._texts)

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, text: str) -> str:
        chars = self._chars
        out = []
        for tok in self._tokens(text.lower()):
            c = chars.get(tok)
            if c is None:
                c = chars[tok] = _code_point(len(chars))
            out.append(c)
        return "".join(out)

    def _append(self, text: str, enc: str) -> None:
        i = len(self._texts)
        self._texts.append(text)
        self._keys.setdefault(duplicate_key(text), text)
        self._enc.append(enc)
        self._lens.append(len(enc))
        self._buckets[bisect.bisect_right(_EDGE_LIST, len(enc)) - 1].append(enc, i)

    def add(self, text: str) -> None:
        self._append(text, self._encode(text))

    def _cdist(self, queries: list[str], choices: list[str]) -> np.ndarray:
        """Token LCS lengths of every query vs every choice (int32 matrix), bit-parallel."""
        return cdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int32, workers=self.workers)

    # -- queries ----------------------------------------------------------------------------
    def scores(self, text: str) -> np.ndarray:
        """ROUGE-L F of `text` (prediction) against every pool entry (target), in pool order."""
        s = self._encode(text)
        n = np.asarray(self._lens, dtype=np.int64)
        if not s or not self._enc:
            return np.zeros(len(self._enc))
        lcs = np.zeros(len(self._enc), dtype=np.int32)
        for start in range(0, len(self._enc), _CELLS):
            chunk = self._enc[start:start + _CELLS]
            lcs[start:start + len(chunk)] = self._cdist([s], chunk)[0]
        return _f_measure(lcs, len(s), n)

    def score_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """ROUGE-L F of each text (prediction, rows) against every pool entry (target, columns), in
        one many-vs-many LCS call: for many texts against a small pool (e.g. the seeds)."""
        enc = [self._encode(t) for t in texts]
        if not enc or not self._enc:
            return np.zeros((len(enc), len(self._enc)))
        m = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        lcs = self._cdist(enc, self._enc) if m.max() > 0 else np.zeros((len(enc), len(self._enc)), np.int32)
        return _f_measure(lcs, m[:, None], np.asarray(self._lens, dtype=np.int64)[None, :])

    def mean_score(self, text: str, size: int) -> float:
        """Mean ROUGE-L F of `text` against the first `size` pool entries: the original code's
        avg_similarity_score (np.mean over the pool in pool order, so bit-identical to it). Scores
        the whole prefix, which the pruned filter avoids: about 1 ms per 2,000 entries."""
        return float(np.mean(self.scores(text)[:size])) if size else 0.0

    def _score_block(self, enc: list[str], k: int) -> _TopK:
        """Top-k (score, pool index) of each encoded candidate against the current pool."""
        top = _TopK(len(enc), k)
        m = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        rows = np.argsort(m, kind="stable")  # similar lengths side by side: better SIMD packing
        self._width = 4 * k + 60  # columns of the next chunk; grows 4x per chunk (see _score_bucket)
        m = m[rows]
        # Big buckets first: they hold the typical lengths, so every row's k-th best rises early
        # and the bound / the integer prefilter cut more of what follows.
        for b in sorted((b for b in self._buckets if b.strs), key=lambda b: -len(b.strs)):
            need = top.tau[rows] <= _bound(m, b.lo, b.hi) * (1 + _SLACK)  # can this bucket still help?
            if need.all():
                self._score_bucket(top, rows, m, [enc[r] for r in rows], b)
            elif need.any():
                self._score_bucket(top, rows[need], m[need], [enc[r] for r in rows[need]], b)
        return top

    def _score_bucket(self, top: _TopK, rows: np.ndarray, m: np.ndarray, qs: list[str], b: _Bucket) -> None:
        idx_all, n_all = b.arrays()
        start = 0
        while start < len(b.strs):
            tau = top.tau[rows]
            filling = tau.min() < 0  # some rows have fewer than k scores yet
            # Chunks start small and grow 4x: a small dense chunk sets every row's k-th best, and
            # each later chunk lets through only the few entries that beat it, so the k-th best
            # climbs before the big chunks arrive.
            step = min(self._width, max(1, _CELLS // len(rows)))
            self._width *= 4
            choices = b.strs[start:start + step]
            idx = idx_all[start:start + len(choices)]
            n = n_all[start:start + len(choices)]
            start += len(choices)
            if b.hi == 0 or m[-1] == 0:  # an empty side (m is sorted): LCS 0, skip rapidfuzz
                lcs = np.zeros((len(rows), len(choices)), dtype=np.int32)
            else:
                lcs = self._cdist(qs, choices)
            if filling:
                top.offer_dense(rows, _f_measure(lcs, m[:, None], n[None, :]), idx)
                continue
            # Integer prefilter: F >= tau needs 2L/(m+n) >= tau (up to rounding) and n >= b.lo.
            need = np.ceil(tau * (m + b.lo) / 2.0 * (1 - _SLACK)).astype(np.int32)
            rr, cc = np.nonzero(lcs >= need[:, None])
            if rr.size == 0:
                continue
            f = _f_measure(lcs[rr, cc], m[rr], n[cc])
            ok = f >= tau[rr]
            top.merge(rows[rr[ok]], f[ok], idx[cc[ok]])

    def filter(self, candidates: Sequence[str], threshold: float, top_k: int = 10, *,
               duplicates: bool = False, groups: Optional[Sequence[int]] = None) -> list[Decision]:
        """Paper semantics: candidates in order; each is scored against the pool plus every candidate
        accepted before it in this call; rejected when max F > threshold (strict: F == threshold is
        kept); accepted ones are added to the pool. threshold >= 1.0 rejects nothing (but scores are
        still computed). duplicates: first reject (unscored, max_score nan) every exact duplicate of
        a pool text or of an earlier candidate of its group (module docstring). groups: the sizes
        of consecutive groups of candidates (the responses of the instructions stage), filtered as
        if one call per group were made, one after another; default: one group."""
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        candidates = list(candidates)
        if not duplicates:
            return self._filter(candidates, threshold, top_k)
        bounds = np.cumsum([0, *(groups if groups is not None else [len(candidates)])]).tolist()
        spans = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        keys = [duplicate_key(text) for text in candidates]
        group_keys = [{keys[i] for i in span} for span in spans]
        if sum(map(len, group_keys)) > len(set().union(*group_keys)):
            # a text repeated across groups: whether it is a duplicate depends on whether the
            # earlier group accepted it, so the groups go one by one
            return [d for span in spans for d in self._filter_groups(candidates, keys, [span], threshold, top_k)]
        return self._filter_groups(candidates, keys, spans, threshold, top_k)

    def _filter_groups(self, candidates: list[str], keys: list[str], spans: list[range],
                       threshold: float, top_k: int) -> list[Decision]:
        """Decisions of candidates[span] for the spans in order: duplicates (of the pool or of an
        earlier candidate of their span) rejected unscored, the rest in one _filter pass."""
        out: dict[int, Decision] = {}
        scored = []
        for span in spans:
            first: dict[str, str] = {}  # key -> the earlier candidate with it (scored, maybe rejected)
            for i in span:
                twin = self._keys.get(keys[i], first.get(keys[i]))
                if twin is None:
                    first[keys[i]] = candidates[i]
                    scored.append(i)
                else:
                    out[i] = Decision(False, float("nan"), {}, duplicate_of=twin)
        out.update(zip(scored, self._filter([candidates[i] for i in scored], threshold, top_k)))
        return [out[i] for span in spans for i in span]

    def _filter(self, candidates: list[str], threshold: float, top_k: int) -> list[Decision]:
        out: list[Decision] = []
        for start in range(0, len(candidates), _BLOCK):
            out.extend(self._filter_block(list(candidates[start:start + _BLOCK]), threshold, top_k))
        return out

    def _filter_block(self, texts: list[str], threshold: float, top_k: int) -> list[Decision]:
        k = max(top_k, 1)  # the top-1 is the max score, always needed
        enc = [self._encode(t) for t in texts]
        top = self._score_block(enc, k)  # against the pool as it is before this block
        B, p0 = len(enc), len(self._texts)
        m = np.fromiter(map(len, enc), dtype=np.int64, count=B)
        pool_max = np.maximum(top.val[:, 0], 0.0)

        # Pairs inside the block, candidate i (prediction) vs an earlier candidate j < i (target).
        # Only pairs that may matter get a float F: those that can exceed the threshold (decision)
        # or reach row i's k-th best pool score (top-k). Both need 2L >= t*(m_i+m_j), up to rounding.
        lcs = self._cdist(enc, enc) if B > 1 and m.max() > 0 else np.zeros((B, B), dtype=np.int32)
        t = np.minimum(threshold, top.tau) * (1 - _SLACK)
        maybe = 2 * lcs >= t[:, None] * (m[:, None] + m[None, :])
        maybe &= np.tri(B, B, -1, dtype=bool)
        ii, jj = np.nonzero(maybe)  # row-major: sorted by i, then j
        lcs = lcs[ii, jj]
        f = _f_measure(lcs, m[ii], m[jj])

        # Decide in order. Rows with no in-block pair above the threshold depend only on the pool;
        # the others look at whether the earlier candidates they are too close to were accepted.
        accepted = pool_max <= threshold
        over = f > threshold
        hi_i, hi_j = ii[over], jj[over]
        bounds = np.searchsorted(hi_i, np.unique(hi_i), side="left").tolist() + [hi_i.size]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            i = hi_i[lo]
            if accepted[i] and accepted[hi_j[lo:hi]].any():
                accepted[i] = False

        # In-block scores of earlier *accepted* candidates join each row's top-k.
        pos = p0 + np.cumsum(accepted) - 1  # the pool index each accepted candidate will get
        join = accepted[jj] & (f >= top.tau[ii])
        top.merge(ii[join], f[join], pos[jj[join]])

        for i in np.flatnonzero(accepted).tolist():
            self._append(texts[i], enc[i])
        texts_now = self._texts  # pool indices of in-block entries are valid now
        decisions = []
        best = np.maximum(top.val[:, 0], 0.0).tolist()  # 0.0 for an empty pool
        for acc, mx, vals, idxs in zip(accepted.tolist(), best, top.val[:, :top_k].tolist(),
                                       top.idx[:, :top_k].tolist()):
            sims: dict[str, float] = {}
            for v, ix in zip(vals, idxs):
                if ix < 0:
                    break
                sims.setdefault(texts_now[ix], v)
            decisions.append(Decision(acc, mx, sims))
        return decisions

    def prefix_means(self, positions: Sequence[int]) -> list[float]:
        """For pool entries at `positions`: the mean ROUGE-L F of each against the entries before
        it, i.e. mean_score(text, p) of an entry added at index p (bit-identical: the same F in pool
        order, one np.mean over a contiguous array). All entries go through one bit-parallel cdist
        call per chunk, many times faster than one mean_score call per entry."""
        out = [0.0] * len(positions)
        todo = [(i, p) for i, p in enumerate(positions) if p > 0]
        if not todo:
            return out
        n = np.asarray(self._lens, dtype=np.int64)
        cols = max(p for _, p in todo)
        rows = max(1, _CELLS // cols)
        for start in range(0, len(todo), rows):
            chunk = todo[start:start + rows]
            queries = [self._enc[p] for _, p in chunk]
            width = max(p for _, p in chunk)
            lcs = self._cdist(queries, self._enc[:width])
            # F depends only on (lcs, m, n): a table per query length m, made with the same float64
            # operations (so the same floats), then looked up, costs far less than dividing per pair
            tables: dict[int, np.ndarray] = {}
            longest = int(n[:width].max(initial=0))
            for row, (i, p) in enumerate(chunk):
                m = self._lens[p]
                table = tables.get(m)
                if table is None:
                    grid = np.broadcast_to(np.arange(m + 1, dtype=np.int64), (longest + 1, m + 1))
                    table = tables[m] = _f_measure(grid, m, np.arange(longest + 1)[:, None])
                out[i] = float(np.mean(table[n[:p], lcs[row, :p]]))  # pool order, as scores()[:p]
        return out
