"""Evaluation building blocks: sampling, exact scoring, 0-100 judges, questions, metrics, statistics.

See docs/evals.md. `__all__` holds the stage's generic pieces; each study's evals live in their own
submodule and are imported from it:

    from introspect_mech.evals import sample, HFJudge, scale_expectations, bootstrap_ci
    from introspect_mech.evals.em import em_rates, judge_samples     # emergent misalignment: rates, judging

Submodules: `sampling`, `scoring` (exact multi-token continuation scoring), `questions`, `judges` (re-exports
`judge_result`, `judge_prompts`, `judge_hf`, `judge_api`), `judge_spec`, `judge_validation`, `judge_metrics`,
`report`, `metrics`, `stats`, `vllm_engine`, `em` (EM rates and judging). The papers' protocols live in the
studies: "Tell me about yourself" in `introspect_mech.studies.self_awareness` (its measures) and
`introspect_mech.studies.common.ab_pairs` (its A/B lotteries); "Looking Inward" in
`introspect_mech.studies.self_prediction.tasks` (tasks, answers, scoring) and `.properties` (its behavioural
properties) -- `evals.self_prediction` / `evals.properties` resolve there for one release with a DeprecationWarning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .judge_spec import JudgeOptions
from .judges import APIJudge, HFJudge, JudgeError, JudgeResult
from .metrics import (
    ScaleResult, answer_logprobs, choice_probabilities, choice_probability, paired_preference, scale_expectation,
    scale_expectations,
)
from .questions import Question, QuestionFileError, load_questions
from .report import em_report, format_em_report
from .sampling import sample
from .scoring import NumberDist, number_distributions, tree_logprobs
from ..stats import Estimate, bootstrap_ci, bootstrap_diff

__all__ = [
    "sample",
    "number_distributions", "NumberDist", "tree_logprobs",
    "HFJudge", "APIJudge", "JudgeResult", "JudgeError", "JudgeOptions",
    "load_questions", "Question", "QuestionFileError",
    "scale_expectation", "scale_expectations", "ScaleResult", "choice_probability", "choice_probabilities",
    "answer_logprobs", "paired_preference",
    "Estimate", "bootstrap_ci", "bootstrap_diff",
    "em_report", "format_em_report",
]

_SUBMODULES = ("sampling", "scoring", "questions", "judges", "judge_result", "judge_prompts", "judge_hf", "judge_api",
               "judge_spec", "judge_validation", "judge_record", "report", "metrics", "stats", "vllm_engine",
               "em", "self_prediction", "properties")  # the last two: warning shims (moved to studies/)
# names this package exported before each study's evals moved to their submodule: still resolved, with a warning
_MOVED = {
    **dict.fromkeys(("run_em_eval", "judge_samples"), "em"),
    **dict.fromkeys(("load_task", "task_files", "object_level_answers", "hypothetical_answers", "score_predictions",
                     "prediction_training_data", "self_prediction_data", "cross_prediction_data",
                     "compare_self_cross", "behaviour_shift", "constrained_predictions"), "self_prediction"),
    **dict.fromkeys(("PROPERTIES", "extract_property", "parse_prediction", "is_compliant"), "properties"),
    **dict.fromkeys(("load_em_pairs", "self_rated_alignment", "self_rated_code_security"), "metrics"),
    "fill_judge_prompt": "questions",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in _MOVED:
        import warnings

        module = _MOVED[name]
        warnings.warn(f"introspect_mech.evals.{name} moved: import it from introspect_mech.evals.{module}",
                      DeprecationWarning, stacklevel=2)
        return getattr(import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'introspect_mech.evals' has no attribute {name!r}")
