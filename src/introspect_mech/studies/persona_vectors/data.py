"""The data files persona vectors reads, bound by the runner (`Study.data`): a changed file is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...data import locate
from ...errors import DataError
from ...paths import data_dir as _data_dir
from .config import PVConfig

MEDICAL = ("bad_medical_advice", "good_medical_advice")  # screening mix (both) and the finetunes (bad)


def trait_path(trait: str, data_dir: Any, split: str) -> Path:
    """Where `common.persona.load_trait(trait, data_dir, split)` reads (a test checks they agree).

    Args:
        trait: a trait name or a `.json` path.
        data_dir: the data folder (None: `$INTROSPECT_MECH_DATA`).
        split: "extract" or "eval".

    Returns:
        The trait file's path.
    """
    if str(trait).endswith(".json"):
        return Path(trait)
    return _data_dir(data_dir) / "persona" / f"trait_data_{split}" / f"{trait}.json"


def data_files(config: PVConfig, resources: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on, for every stage (the `stages` field selects work and
    is not bound, so the files do not depend on it): the trait's extraction and evaluation files, upstream's
    coherence prompt (in the EM question file; read with a judge), and the medical-advice sets (screening mix,
    finetunes).

    Args:
        config: the run's config.
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"trait/<split>" | "questions/first_plot_questions.yaml" | "dataset/<name>": path}.
    """
    dd = (resources or {}).get("data_dir")
    out = {f"trait/{split}": trait_path(config.trait, dd, split) for split in ("extract", "eval")}
    out["questions/first_plot_questions.yaml"] = _data_dir(dd) / "em" / "questions" / "first_plot_questions.yaml"
    for name in MEDICAL:
        try:
            out[f"dataset/{name}"] = locate(name, dd, fetch=False)
        except DataError:  # not local: `data.load` downloads it and checks the registry's sha256
            pass
    return out
