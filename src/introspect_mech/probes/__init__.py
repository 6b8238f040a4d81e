"""Linear probes and directions: mean difference, PCA, logistic probes, layer sweeps, transfer,
cosine matrices, the EM direction, projections, and self-prediction probes. Directions are
`Direction` objects (per-layer unit vectors + norms + provenance) saved as safetensors + JSON.
The persona direction (Persona Vectors' extraction protocol: `persona_data`, `persona_direction`,
`load_trait`) is paper logic and lives in `introspect_mech.studies.common.persona`."""

from ..direction import Direction, DirectionLike, as_vectors
from .concepts import concept_vector, concept_vectors, load_words, word_lists
from .em import em_direction, em_direction_from_pairs, medical_advice_pairs, project
from .linear import (ProbeResult, SweepResult, cosine_matrix, layer_sweep, mean_diff, pca_direction, train_probe,
                     transfer)
from .self_prediction import SelfPredictionResult, self_prediction_probe

__all__ = [
    "Direction", "DirectionLike", "as_vectors", "mean_diff", "pca_direction", "train_probe", "ProbeResult", "layer_sweep",
    "SweepResult", "transfer", "cosine_matrix", "em_direction", "em_direction_from_pairs", "medical_advice_pairs", "project",
    "self_prediction_probe", "SelfPredictionResult",
    "concept_vector", "concept_vectors", "load_words", "word_lists",
]
