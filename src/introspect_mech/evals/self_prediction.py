"""Looking Inward's self-prediction tasks, answers and scoring moved to `introspect_mech.studies.self_prediction.tasks` (issue 30: paper protocol code lives in the study's package).

This old module stays for one release: every name it had resolves from there with a `DeprecationWarning`
(through the top-level package, so that no library module imports a study).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from .. import _moved_to_studies  # the top-level facade: the one library module that may name studies

    return _moved_to_studies(__name__, name)
