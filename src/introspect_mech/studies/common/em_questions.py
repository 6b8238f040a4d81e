"""The main EM questions of Betley et al. (2025), shared by two studies (persona features and CAFT)."""

from __future__ import annotations

import os
from typing import Sequence

from ...evals.questions import Question, load_questions
from ...paths import data_dir as _dd


def em_questions(ids: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None) -> list[Question]:
    """The 8 main EM questions (first_plot_questions.yaml, free-form ids without _json/_template).

    Args:
        ids: question ids to keep instead (any of the file's, in file order); None = the 8 free-form ones.
        data_dir: the data directory (None = the default).

    Returns:
        The questions.
    """
    qs = load_questions(_dd(data_dir) / "em" / "questions" / "first_plot_questions.yaml")
    if ids is not None:
        return [q for q in qs if q.id in set(ids)]
    return [q for q in qs if not q.id.endswith(("_json", "_template"))]
