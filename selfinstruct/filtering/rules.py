"""Rule filters on generated instructions (DESIGN.md step 3), applied in the paper's order before the
ROUGE-L novelty check. Each rule has a stable name: it is the `rule` of rejected.jsonl and the
`quality/rejected/<rule>` key of stats.json."""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Optional


@lru_cache(maxsize=32)
def _blacklist_pattern(words: tuple[str, ...]) -> Optional[re.Pattern]:
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


EMPTY = ("empty", "no text")


def check_instruction(text: str, f) -> Optional[tuple[str, str]]:
    """(rule, detail) of the first rule the instruction breaks, or None if it passes them all."""
    words = len(text.split())
    # An empty instruction is never kept. Under the paper's rules alone (reject_degenerate off) it
    # is too_short, as in the original code (0 words <= 3), unless min_words is 0.
    if not words and (f.reject_degenerate or f.min_words == 0):
        return EMPTY
    if words < f.min_words:
        return "too_short", f"{words} words < {f.min_words}"
    if words > f.max_words:
        return "too_long", f"{words} words > {f.max_words}"
    pattern = _blacklist_pattern(tuple(f.blacklist))
    if pattern is not None:
        match = pattern.search(text)
        if match:
            return "blacklist", match.group(0)
    for prefix in f.banned_prefixes:
        if text.lower().startswith(prefix.lower()):
            return "banned_prefix", prefix
    if f.reject_punctuation_start and text[0] in string.punctuation:
        return "punctuation_start", text[0]
    if f.reject_non_ascii_start and not text[0].isascii():
        return "non_ascii_start", text[0]
    return None


def novelty_record(candidate: str, decision, threshold: float) -> tuple[bool, dict]:
    """(accepted, record) for a RougeIndex decision: an instructions.jsonl record when accepted, a
    rejected.jsonl record (rule "duplicate" or "rouge", naming the instruction it is too close to)
    when not."""
    if decision.duplicate_of is not None:
        return False, {"candidate": candidate, "rule": "duplicate",
                       "detail": f"the same text (ignoring case and whitespace) as: {decision.duplicate_of}"}
    if decision.accepted:
        return True, {"instruction": candidate, "max_rouge": decision.max_score,
                      "most_similar": decision.most_similar}
    closest = next(iter(decision.most_similar), "")
    return False, {"candidate": candidate, "rule": "rouge",
                   "detail": f"ROUGE-L {decision.max_score:.4f} > {threshold} with: {closest}",
                   "max_rouge": decision.max_score}


# Degenerate model output (our addition to the paper's rules; filters.reject_degenerate turns them
# off). Small models echo their prompt, drift into other scripts or loop on a phrase; these rules
# name such output instead of letting it reach the data or pass as "novel" under ROUGE-L.
_NUMBERED = re.compile(r"^\s*\d{1,3}\s*[.)]\s*")
WORDS = re.compile(r"[^\W\d_]+")  # letter runs: numbers and punctuation never form a "loop"
_APPENDED = re.compile(r"[:\u2013\u2014][ \t]|[ \t]-[ \t]")  # where a model runs an answer on


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!?:;,")


def prompt_segments(prompt: str) -> set[str]:
    """The prompt's lines and sentences, normalised, with list numbers removed: what an echo
    would reproduce (an in-context example, a sentence of the header)."""
    segments = set()
    for line in prompt.splitlines():
        line = _NUMBERED.sub("", line)
        segments.add(_norm(line))
        segments.update(_norm(s) for s in re.split(r"(?<=[.!?])\s+", line))
    segments.discard("")
    return segments


def ascii_letter_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 1.0


def repeated_ngram(text: str, max_n: int = 8, min_repeats: int = 4) -> Optional[str]:
    """The first n-gram (n <= max_n words) repeated back to back at least min_repeats times."""
    words = WORDS.findall(text.lower())
    for n in range(1, max_n + 1):
        streak = 0  # positions i with words[i] == words[i + n], in a row
        for i in range(len(words) - n):
            streak = streak + 1 if words[i] == words[i + n] else 0
            if streak >= n * (min_repeats - 1):
                start = i + 1 - streak
                return " ".join(words[start:start + n])
    return None


def check_degenerate(text: str, segments: set[str] = frozenset(), *, min_ascii_share: float = 0.8,
                     min_letters: int = 8) -> Optional[tuple[str, str]]:
    """(rule, detail) if a generated text is empty, echoes the prompt, is not English, or loops."""
    if not text.strip():
        return "empty_response", "the model returned only whitespace"
    if _norm(text) in segments:
        return "echo", "identical to a line of the prompt"
    for separator in _APPENDED.finditer(text):  # an example of the prompt with its answer after it
        head = text[:separator.start()]
        if len(head.split()) >= 3 and _norm(head) in segments:
            return "echo", "a line of the prompt with text appended after a colon or dash"
    letters = sum(c.isalpha() for c in text)
    share = ascii_letter_share(text)
    if letters >= min_letters and share < min_ascii_share:
        return "not_english", f"{share:.0%} of its letters are ASCII (< {min_ascii_share:.0%})"
    loop = repeated_ngram(text)
    if loop is not None:
        return "repetitive", f"{loop!r} repeated back to back"
    return None
