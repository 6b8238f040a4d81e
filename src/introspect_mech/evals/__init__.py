"""Evaluation: sampling, 0-100 judges, judge-free metrics and the three studies' evals.

See docs/evals.md. Submodules: `sampling`, `scoring` (exact multi-token continuation scoring),
`questions`, `judges`, `report`, `metrics`, `stats`, `em`, `self_awareness`, `self_prediction`,
`properties`.
"""

from .em import judge_samples, run_em_eval
from .judges import APIJudge, HFJudge, JudgeError, JudgeResult
from .metrics import (
    ScaleResult, answer_logprobs, choice_probabilities, choice_probability, load_em_pairs, paired_preference,
    scale_expectation, scale_expectations, self_rated_alignment, self_rated_code_security,
)
from .properties import PROPERTIES, extract_property, is_compliant, parse_prediction
from .questions import Question, QuestionFileError, fill_judge_prompt, load_questions
from .report import em_report, format_em_report
from .sampling import sample
from .scoring import NumberDist, number_distributions, tree_logprobs
from .self_awareness import compare_tmay, lotteries, run_tmay_eval
from .self_prediction import (
    behaviour_shift, compare_self_cross, constrained_predictions, cross_prediction_data, hypothetical_answers, load_task,
    object_level_answers, prediction_training_data, score_predictions, self_prediction_data, task_files,
)
from .stats import Estimate, bootstrap_ci, bootstrap_diff

__all__ = [
    "sample", "load_questions", "Question", "QuestionFileError", "fill_judge_prompt",
    "HFJudge", "APIJudge", "JudgeResult", "JudgeError", "em_report", "format_em_report",
    "scale_expectation", "scale_expectations", "ScaleResult", "choice_probability", "choice_probabilities",
    "paired_preference", "load_em_pairs", "answer_logprobs", "self_rated_alignment", "self_rated_code_security",
    "number_distributions", "NumberDist", "tree_logprobs",
    "run_em_eval", "judge_samples", "run_tmay_eval", "compare_tmay", "lotteries",
    "PROPERTIES", "extract_property", "parse_prediction", "is_compliant",
    "load_task", "task_files", "object_level_answers", "hypothetical_answers", "score_predictions",
    "prediction_training_data", "self_prediction_data", "cross_prediction_data", "compare_self_cross",
    "behaviour_shift", "constrained_predictions", "Estimate", "bootstrap_ci", "bootstrap_diff",
]
