"""Linear probes and directions: mean difference, PCA, logistic probes, layer sweeps, transfer,
cosine matrices, the EM direction and projections. Directions are `Direction` objects (per-layer unit
vectors + norms + provenance) saved as safetensors + JSON. Paper logic lives in the studies: the persona
direction (Persona Vectors' extraction protocol: `persona_data`, `persona_direction`, `load_trait`) in
`introspect_mech.studies.common.persona`, Looking Inward's self-prediction probes (`self_prediction_probe`) in
`introspect_mech.studies.self_prediction.probe`, the EM protocol's held-out medical pairs
(`medical_advice_pairs`) in `introspect_mech.studies.common.medical_split`, the introspection study's concept
vectors (`concept_vectors`, `load_words`, ...) in `introspect_mech.studies.introspection.concepts`; their old names here resolve for
one release with a DeprecationWarning."""

from importlib import import_module
from typing import Any

from ..direction import Direction, DirectionLike, as_vectors
from .em import em_direction, em_direction_from_pairs, project
from .linear import (ProbeResult, SweepResult, cosine_matrix, layer_sweep, mean_diff, pca_direction, train_probe,
                     transfer)

__all__ = [
    "Direction", "DirectionLike", "as_vectors", "mean_diff", "pca_direction", "train_probe", "ProbeResult", "layer_sweep",
    "SweepResult", "transfer", "cosine_matrix", "em_direction", "em_direction_from_pairs", "project",
]

# names that moved into the studies (issue 30): resolved through the old submodule, which warns
_MOVED = {"medical_advice_pairs": "em", "self_prediction_probe": "self_prediction",
          "SelfPredictionResult": "self_prediction",
          **dict.fromkeys(("concept_vector", "concept_vectors", "load_words", "word_lists"), "concepts")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(import_module(f".{_MOVED[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
