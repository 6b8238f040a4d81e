"""The data files the steering-proxy study reads, bound by the runner (`Study.data`): a changed file is refused by
name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...data import locate
from ...errors import DataError
from ...paths import data_dir as _data_dir
from .config import SteeringProxyConfig

MEDICAL = ("bad_medical_advice", "good_medical_advice")  # held-out eval items and direction pool; the finetunes (bad)


def data_files(config: SteeringProxyConfig, resources: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on: the medical-advice sets (the held-out proxy items,
    the EM directions' pool, the finetunes' records) when found locally, and the evil trait file when the persona
    direction is made (`persona`). The EM items and neutral prompts ship with the package (bound by its version).

    Args:
        config: the run's config.
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"dataset/<name>" | "persona/evil/extract": path}.
    """
    dd = (resources or {}).get("data_dir")
    out: dict[str, Path] = {}
    for name in MEDICAL:
        try:
            out[f"dataset/{name}"] = locate(name, dd, fetch=False)
        except DataError:  # not local: `data.load` downloads it and checks the registry's sha256
            pass
    if config.persona:  # where `common.persona.load_trait("evil", dd)` reads
        out["persona/evil/extract"] = _data_dir(dd) / "persona" / "trait_data_extract" / "evil.json"
    return out
