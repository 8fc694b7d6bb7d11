"""The model-free parts of the `evaluate` stage: evaluation sets, existing predictions, scoring,
the answer prompt and stop rules, and the judge's prompts and parsers.

    eval_sets    load_eval_set(path=None) -> [EvalTask]  (our default set, the original 252, any
                 dataset format that analyze reads)
    predictions  load_predictions(path) -> [Prediction(task, answer)]  (human_eval/predictions)
    scoring      rouge_l, exact_match, normalize_label, score(answer, task), aggregate(scores)
    answering    answer_prompt(instruction, input), answer_stop(end_token), clean_answer(text, end_token)
    judge        rating_prompt, parse_rating, rating_shares, pairwise_prompt, parse_pairwise,
                 pairwise_outcome, win_rate
"""

from selfinstruct.evaluation.answering import answer_prompt, answer_stop, clean_answer
from selfinstruct.evaluation.eval_sets import DEFAULT_EVAL_SET, EvalTask, load_eval_set
from selfinstruct.evaluation.judge import (LEVELS, pairwise_outcome, pairwise_prompt, parse_pairwise, parse_rating,
                    rating_prompt, rating_shares, win_rate)
from selfinstruct.evaluation.predictions import Prediction, load_predictions
from selfinstruct.evaluation.scoring import aggregate, exact_match, normalize_label, rouge_l, score

__all__ = [
    "DEFAULT_EVAL_SET", "EvalTask", "load_eval_set",
    "Prediction", "load_predictions",
    "aggregate", "exact_match", "normalize_label", "rouge_l", "score",
    "answer_prompt", "answer_stop", "clean_answer",
    "LEVELS", "rating_prompt", "parse_rating", "rating_shares",
    "pairwise_prompt", "parse_pairwise", "pairwise_outcome", "win_rate",
]
