"""Filters on the instances parsed from one task's completion (DESIGN.md step 6), in the paper's
order. Each rule has a stable name: it is the `quality/instance_filter/<rule>` key of stats.json.

1. truncated_last: a completion cut by the token limit loses its last instance (usually cut off).
2. per instance: empty_output; input_equals_output; ends_with_colon (an input or output ending
   with ":" is usually an unfinished generation); repetitive (a phrase looped back to back, how
   small models degenerate under greedy decoding) and echoes_instruction (an output of one or two
   words, all taken from an instruction that offers no choices: "What is the probability that
   ...?" -> "probability", a third of a Gemma 3 270M run's short outputs); our additions, off with
   filters.reject_degenerate.
3. conflicting_outputs: two instances with the same non-empty input but different outputs make the
   whole task unreliable, so all its instances go. Empty inputs are exempt: an input-less task
   (e.g. "Suggest a name for a bakery") rightly has many outputs for the one empty input.
4. duplicate: repeated (input, output) pairs are kept once.
5. over_cap: at most `max_instances_per_task`, chosen at random with the given rng.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from selfinstruct.filtering.rules import WORDS, repeated_ngram

RULES = ("truncated_last", "empty_output", "input_equals_output", "ends_with_colon", "repetitive",
         "echoes_instruction", "conflicting_outputs", "duplicate", "over_cap")
# An instruction that lists its answers ("positive or negative", "yes/no", "(A) ...", "from: a, b")
_OFFERS_CHOICES = re.compile(r"\bor\b|/|\(|:\s", re.IGNORECASE)


def echoes_instruction(out: str, instruction: str) -> bool:
    """A one- or two-word answer made only of the instruction's own words, where the instruction
    lists no answers to choose from: the model repeated the question's topic instead of answering."""
    words = WORDS.findall(out.lower())
    if not 1 <= len(words) <= 2 or not all(w.isalpha() for w in words) or _OFFERS_CHOICES.search(instruction):
        return False
    return set(words) <= set(WORDS.findall(instruction.lower()))


def invalid_reason(inp: str, out: str, f, instruction: str = "") -> str | None:
    if f.drop_empty_output and not out.strip():
        return "empty_output"
    if f.drop_input_equals_output and inp.strip() == out.strip():
        return "input_equals_output"
    if f.drop_colon_ending and (inp.strip().endswith(":") or out.strip().endswith(":")):
        return "ends_with_colon"
    if f.reject_degenerate and (repeated_ngram(inp) or repeated_ngram(out)):
        return "repetitive"
    if f.reject_degenerate and echoes_instruction(out, instruction):
        return "echoes_instruction"
    return None


def filter_instances(pairs: list[tuple[str, str]], *, truncated: bool, f, rng: random.Random,
                     instruction: str = "") -> tuple[list[tuple[str, str]], Counter]:
    """The (input, output) pairs that pass, in completion order, and how many each rule removed."""
    losses: Counter = Counter()
    pairs = [(i.strip(), o.strip()) for i, o in pairs]
    if truncated and f.drop_truncated_last_instance and pairs:
        pairs = pairs[:-1]
        losses["truncated_last"] += 1
    kept = []
    for inp, out in pairs:
        reason = invalid_reason(inp, out, f, instruction)
        if reason:
            losses[reason] += 1
        else:
            kept.append((inp, out))
    if f.drop_conflicting_outputs:
        outputs: dict[str, set[str]] = {}
        for inp, out in kept:
            if inp:
                outputs.setdefault(inp, set()).add(out)
        if any(len(outs) > 1 for outs in outputs.values()):
            losses["conflicting_outputs"] += len(kept)
            kept = []
    if f.dedupe_instances:
        unique = list(dict.fromkeys(kept))
        losses["duplicate"] += len(kept) - len(unique)
        kept = unique
    cap = f.max_instances_per_task
    if len(kept) > cap:
        chosen = sorted(rng.sample(range(len(kept)), cap))
        losses["over_cap"] += len(kept) - cap
        kept = [kept[i] for i in chosen]
    return kept, losses
