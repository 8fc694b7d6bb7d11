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


def check_instruction(text: str, f) -> Optional[tuple[str, str]]:
    """(rule, detail) of the first rule the instruction breaks, or None if it passes them all."""
    words = len(text.split())
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
    """(accepted, record) for a ROUGE-L decision: an instructions.jsonl record when accepted, a
    rejected.jsonl record (rule "rouge", naming the closest instruction) when not."""
    if decision.accepted:
        return True, {"instruction": candidate, "max_rouge": decision.max_score,
                      "most_similar": decision.most_similar}
    closest = next(iter(decision.most_similar), "")
    return False, {"candidate": candidate, "rule": "rouge",
                   "detail": f"ROUGE-L {decision.max_score:.4f} > {threshold} with: {closest}",
                   "max_rouge": decision.max_score}
