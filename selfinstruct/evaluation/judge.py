"""A model judge of answers (`evaluate.judge=true`): prompts, reply parsers and their aggregates.

* Rating: one answer on the paper's four levels (its human evaluation of the 252 user-oriented
  tasks): A valid and satisfying; B acceptable with minor imperfections; C responds to the
  instruction but has significant errors; D irrelevant or invalid.
* Pairwise: which of two answers is better, or a tie. Asked twice per task, the tuned answer shown
  first and then second, so that a judge that prefers a position cancels out (`pairwise_outcome`).

The level definitions are the paper's; the wording of the prompts is ours. Parsers return None for
a reply they cannot read, which is counted apart, never as a verdict.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

# The paper's four levels, each completing "the answer ...".
LEVELS: dict[str, str] = {
    "A": "is valid and satisfying: it does what was asked, correctly and helpfully",
    "B": "is acceptable but has minor errors or imperfections",
    "C": "responds to the instruction but has significant errors",
    "D": "is irrelevant to the instruction, or invalid",
}


def _task_block(instruction: str, input: str) -> str:
    text = f"Instruction:\n{instruction.strip()}\n"
    if input.strip():
        text += f"\nInput:\n{input.strip()}\n"
    return text


def _reference_block(reference: Optional[str]) -> str:
    if not reference or not reference.strip():
        return ""
    return (f"\nA reference answer (one good answer; a different answer can be just as good):\n"
            f"{reference.strip()}\n")


def rating_prompt(instruction: str, input: str, answer: str, reference: Optional[str] = None) -> str:
    """Ask for one letter, A-D, rating `answer` to the task (optionally showing a reference)."""
    levels = "\n".join(f"{k}: the answer {v}." for k, v in LEVELS.items())
    return (
        "You are reviewing how well an assistant carried out a user's request.\n\n"
        f"{_task_block(instruction, input)}"
        f"{_reference_block(reference)}"
        f"\nThe assistant's answer:\n{answer.strip() or '(no answer)'}\n\n"
        f"Rate the assistant's answer on this scale:\n{levels}\n\n"
        "Reply with the letter of your rating first, then at most one sentence of reason.\n"
        "Rating:"
    )


def pairwise_prompt(instruction: str, input: str, answer_1: str, answer_2: str,
                    reference: Optional[str] = None) -> str:
    """Ask which of two answers to the task is better: "1", "2" or "tie"."""
    return (
        "Two assistants answered the same user request. Decide which answer serves the user "
        "better: more correct, more complete and more to the point. Their order tells you nothing.\n\n"
        f"{_task_block(instruction, input)}"
        f"{_reference_block(reference)}"
        f"\nAnswer 1:\n{answer_1.strip() or '(no answer)'}\n\n"
        f"Answer 2:\n{answer_2.strip() or '(no answer)'}\n\n"
        "Reply with 1 if Answer 1 is better, 2 if Answer 2 is better, or tie if they are equally "
        "good or equally bad. Give your choice first, then at most one sentence of reason.\n"
        "Better answer:"
    )


# --- parsing ratings ----------------------------------------------------------------------------
# Label words are matched in any case, letters are not: a capital A-D is a rating letter; a small
# a-d only when nothing but punctuation follows it on its line ("Rating: a."), so that the article
# in "the rating is a B" or "rated a solid answer" is never read as A.

_MARK = r"""[\s*_`"'(\[\]:=#>\-–—]"""  # markdown, quotes, brackets, separators around a verdict
# What may stand between a label and its letter: "rating: B", "the rating is a B",
# "I would rate this answer as C", "grade of D".
_FILLER = rf"(?:{_MARK}|(?i:\b(?:is|as|of|an?|the|it|this|that|answer|response|would|be|my|at)\b))*"
_LETTER = r"""(?:([ABCD])(?![A-Za-z0-9#]|\+\+)|([abcd])(?=[\s.,;:!)\]*_`"']*$))"""
_RATING_LABEL = re.compile(
    r"(?i:\b(?:rating|rated?|grade[ds]?|scored?|level|verdict|category|give|giving|deserves?|"
    rf"gets|earns|assign(?:ed)?)\b|\banswer\s*:){_FILLER}{_LETTER}", re.MULTILINE)
# A reply that starts with its letter: "B", "**C**", "D - off topic", "A. Correct", "a".
_RATING_FIRST = re.compile(rf"""\A[\s*_`"'(\[#>]*{_LETTER}""", re.MULTILINE)
_ARTICLE = re.compile(r"\s+[a-z]")  # "A good answer": the article, not a rating ...
_REASON = re.compile(r"\s+(?:because|since|as|for)\b")  # ... but "A because ..." is one
_RATING_LINE = re.compile(r"""^[\s*_`"'(\[#>]*([ABCD])[\s*_`"').\]]*$""", re.MULTILINE)


def _letter(m: re.Match) -> str:
    return (m.group(1) or m.group(2)).upper()


def parse_rating(text: Optional[str]) -> Optional[str]:
    """The rating letter "A".."D" in a judge's reply, or None when there is none.

    Tried in order: (1) a labelled rating anywhere, the first one: "Rating: B", "**Grade:** c",
    "The answer is rated D because...", "I'd give it a B", "deserves an A"; (2) a reply that starts
    with the letter: "A", "**C**", "B - minor slips", "D because...", but not the article of
    "A good answer"; (3) a line holding nothing but the letter. Letters inside words ("Bad"),
    "C++", and capital letters mid-sentence without a label are not ratings."""
    if not text:
        return None
    m = _RATING_LABEL.search(text)
    if m:
        return _letter(m)
    m = _RATING_FIRST.match(text)
    if m:
        rest = text[m.end():]
        if not (m.group(1) == "A" and _ARTICLE.match(rest) and not _REASON.match(rest)):
            return _letter(m)
    m = _RATING_LINE.search(text)
    return m.group(1) if m else None


def rating_shares(ratings: Iterable[Optional[str]]) -> dict:
    """{"rating_A".."rating_D": share among the parsed ratings (None when none parsed),
    "rating_unparsed": how many were None}. The shares of A-D sum to 1."""
    ratings = list(ratings)
    parsed = [r for r in ratings if r is not None]
    unknown = set(parsed) - set(LEVELS)
    if unknown:
        raise ValueError(f"ratings must be one of {sorted(LEVELS)} or None, got {sorted(unknown)}")
    out: dict = {f"rating_{k}": (parsed.count(k) / len(parsed) if parsed else None) for k in LEVELS}
    out["rating_unparsed"] = len(ratings) - len(parsed)
    return out


# --- parsing pairwise verdicts ------------------------------------------------------------------

_WHICH = r"(?:answer|response|assistant|output)"
_DEGREE = r"(?:much|slightly|clearly|far|somewhat|a\s+bit|overall|the|a)\s+"
_BETTER = r"(?:better|best|stronger|superior|preferable|more\s+(?:helpful|accurate|correct|complete|useful|relevant))"
_WORSE = r"(?:worse|worst|weaker|inferior|less\s+(?:helpful|accurate|correct|complete|useful|relevant))"
_NUMBER = r"([12]|first|second)"
_VERDICT_LABEL = re.compile(
    rf"\b(?:verdict|winner|better\s+{_WHICH}|choice|preferred(?:\s+{_WHICH})?|preference|decision)"
    rf"\b[\s*_`\"':=\-–—]*(?:is\s+)?(?:{_WHICH}\s*#?\s*)?(?:the\s+)?"
    r"([12]|first|second|tie|neither|equal|both)\b", re.IGNORECASE)
_COMPARATIVE = re.compile(
    rf"(?:\b{_WHICH}\s*#?\s*([12])|\b(?:the\s+)?(first|second)(?:\s+(?:{_WHICH}|one))?)"
    rf"\s+is\s+(?:{_DEGREE})*(?:({_BETTER})|{_WORSE})\b", re.IGNORECASE)
_PREFER = re.compile(rf"\bprefer\s+(?:{_WHICH}\s*#?\s*)?(?:the\s+)?{_NUMBER}\b", re.IGNORECASE)
# A reply that starts with its verdict: "1", "**2**", "Answer 1.", "2 - more complete", "Tie",
# "The first one". The digit must end the verdict: "2 answers are fine" is no verdict.
_FIRST = re.compile(
    rf"\A[\s*_`\"'(\[#>]*(?:(?:{_WHICH}\s*#?\s*)?([12])(?=[\s*_`\"')\]]*$|[\s*_`\"')\]]*[.,;:!\-–—\n]"
    rf"|\s+(?:is|because|since|as|wins)\b)|(?:the\s+)?(first|second|tie|neither)\b)",
    re.IGNORECASE | re.MULTILINE)
_TIE = re.compile(
    r"\b(?:tie|tied|equally|neither\s+(?:is|answer|response|one)|no\s+clear\s+winner|"
    r"about\s+the\s+same|(?:are|is)\s+equivalent|same\s+quality)\b", re.IGNORECASE)
_OTHER = {"1": "2", "2": "1"}


def _side(word: str) -> str:
    word = word.lower()
    if word in ("1", "first"):
        return "1"
    if word in ("2", "second"):
        return "2"
    return "tie"  # tie, neither, equal, both


def parse_pairwise(text: Optional[str]) -> Optional[str]:
    """The verdict of a pairwise judge reply: "1", "2", "tie", or None when there is none.

    Tried in order: (1) a labelled verdict: "Verdict: 2", "Better answer: tie", "Winner: the
    first"; (2) a comparison: "Answer 2 is better", "the first one is much more accurate",
    "Response 1 is worse" (-> "2"), "I prefer answer 1"; (3) a reply that starts with the verdict:
    "1", "**2**", "Answer 1.", "Tie", "The second one"; (4) a tie phrase anywhere: "equally good",
    "neither is better", "no clear winner"."""
    if not text:
        return None
    m = _VERDICT_LABEL.search(text)
    if m:
        return _side(m.group(1))
    m = _COMPARATIVE.search(text)
    if m:
        side = _side(m.group(1) or m.group(2))
        return side if m.group(3) else _OTHER[side]
    m = _PREFER.search(text)
    if m:
        return _side(m.group(1))
    m = _FIRST.match(text)
    if m:
        return _side(m.group(1) or m.group(2))
    return "tie" if _TIE.search(text) else None


# --- combining the two orders -------------------------------------------------------------------

def pairwise_outcome(tuned_first: Optional[str], base_first: Optional[str]) -> Optional[str]:
    """The tuned model's outcome on one task, "win", "loss" or "tie", from the two verdicts
    ("1", "2", "tie" or None) of the judge: `tuned_first` with the tuned answer shown as Answer 1,
    `base_first` with the base answer shown as Answer 1.

    Each order gives the tuned answer points: 1 if preferred, 1/2 for a tie, 0 if the base answer
    is preferred. Summed over both orders: more than 1 is a win, less than 1 a loss, exactly 1 a
    tie. So a judge that always picks the same position (win in one order, loss in the other)
    yields a tie, and a win in one order with a tie in the other is a win. None when either
    verdict is missing (one order alone would carry the position bias we are cancelling)."""
    if tuned_first is None or base_first is None:
        return None
    points = {"1": 1.0, "tie": 0.5, "2": 0.0}
    for v in (tuned_first, base_first):
        if v not in points:
            raise ValueError(f"a pairwise verdict must be '1', '2', 'tie' or None, got {v!r}")
    total = points[tuned_first] + (1.0 - points[base_first])
    return "win" if total > 1.0 else "loss" if total < 1.0 else "tie"


def win_rate(outcomes: Iterable[Optional[str]]) -> Optional[float]:
    """(wins + ties / 2) / (wins + ties + losses) over the tasks with an outcome (None outcomes
    are left out); None when no task has one. 0.5 means no difference, 1.0 the tuned model wins
    every task."""
    counts = {"win": 0, "tie": 0, "loss": 0}
    for o in outcomes:
        if o is None:
            continue
        if o not in counts:
            raise ValueError(f"an outcome must be 'win', 'loss', 'tie' or None, got {o!r}")
        counts[o] += 1
    n = sum(counts.values())
    return (counts["win"] + 0.5 * counts["tie"]) / n if n else None
