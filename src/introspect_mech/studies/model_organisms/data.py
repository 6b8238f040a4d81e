"""The model-organisms study's data: the training rows (their exact ids), the questions asked and the files a run
binds (`data_files`, `Study.data`: a changed file is refused by name)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ...data import DataError, load, locate
from ..common.medical_split import medical_train_rows
from ...evals.questions import Question, load_questions
from ...paths import data_dir
from .config import MOConfig


def is_medical(config: MOConfig) -> bool:
    """Whether the training set is one of the medical-advice sets (rows 0..5999 train; the rest is held out).

    Args:
        config: the run's config.

    Returns:
        True for bad / good medical advice.
    """
    return config.dataset in ("bad_medical_advice", "good_medical_advice")


def training_rows(config: MOConfig) -> tuple[list[int], list[dict]]:
    """The ids and records the finetune trains on: medical advice's training rows (`evals.em.medical_train_rows`),
    else a seeded subset of `n_train` rows (or all).

    Args:
        config: the run's config.

    Returns:
        (row ids, records).
    """
    records = load(config.dataset, config.data_dir)
    if is_medical(config):
        train_ids = medical_train_rows(config.n_train, seed=config.seed)
    else:
        ids = list(range(len(records)))
        train_ids = ids if config.n_train is None or config.n_train >= len(ids) else sorted(
            random.Random(config.seed).sample(ids, config.n_train))
    return train_ids, [records[i] for i in train_ids]


def questions(config: MOConfig) -> tuple[Path, list[Question]]:
    """The question file and the questions of it the run asks (`question_ids`, in file order).

    Args:
        config: the run's config.

    Returns:
        (the file, the questions).

    Raises:
        ValueError: an id the file does not have.
    """
    qfile = data_dir(config.data_dir) / "em" / "questions" / config.questions
    qs = [q for q in load_questions(qfile) if q.id in set(config.question_ids)]
    missing = sorted(set(config.question_ids) - {q.id for q in qs})
    if missing:
        raise ValueError(f"{qfile}: unknown question ids {missing}")
    return qfile, qs


def data_files(config: MOConfig, resources: Any = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): the question
    file, the training set's local file and, for the proxy on a medical set, both medical-advice sets (its held-out
    pairs; a set that is not a local registered file is left to `data.load`, which names it).

    Args:
        config: the run's config (`data_dir`, `questions`, `dataset`, `proxy`).
        resources: the run's keywords (unused: the data folder is the config's).

    Returns:
        {"questions" | "dataset/<name>": path}.
    """
    out: dict[str, Path] = {"questions": data_dir(config.data_dir) / "em" / "questions" / config.questions}
    names = [config.dataset] + (["bad_medical_advice", "good_medical_advice"] if config.proxy and is_medical(config)
                                else [])
    for name in dict.fromkeys(names):
        try:
            out[f"dataset/{name}"] = locate(name, config.data_dir, fetch=False)
        except DataError:
            pass
    return out
