"""Paper protocols, one module per study (emergent misalignment, model organisms, Tell Me About
Yourself, Looking Inward, persona vectors, CAFT, persona features, organisms, introspection) and the
main job. They compose the library (models, data, finetune, evals, activations, probes, steering,
sae, diffing, viz); nothing in the library imports this package. `experiments/*.py` and the CLI are
thin callers of these modules.
"""
