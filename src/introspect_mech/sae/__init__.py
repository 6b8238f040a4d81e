"""SAE features on sae-lens: load released SAEs, train one offline, diff models. (The self-prediction latents of
"Looking Inward" are in `introspect_mech.studies.self_prediction.sae_latents`.)

See docs/sae.md.

    from introspect_mech import sae
    s = sae.load_release("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_15_trainer_1")   # online
    s = sae.train_sae(model, layer=15, data=conversations, out_dir="runs/sae").sae         # offline
    d = sae.model_diff(base, finetuned, s, eval_conversations, direction=em_dir, out="runs/diff")
"""

from .diff import LatentChange, ModelDiff, decoder_cosines, latent_codes, model_diff, steer_latents, top_examples
from .loading import LayerSAE, SAELoadError, hook_layer, load_local, load_release, neuronpedia_url, release_info, save
from .tokens import TOKEN_POSITIONS, TokenActs, TokenPositions, token_activations
from .training import SAETrainConfig, SAETrainResult, collect, evaluate, splice_loss, train_sae

__all__ = [
    "LayerSAE", "SAELoadError", "hook_layer", "load_release", "load_local", "neuronpedia_url", "release_info", "save",
    "SAETrainConfig", "SAETrainResult", "train_sae", "evaluate", "collect", "splice_loss",
    "LatentChange", "ModelDiff", "model_diff", "decoder_cosines", "latent_codes", "top_examples", "steer_latents",
    "TokenActs", "TokenPositions", "TOKEN_POSITIONS", "token_activations",
]

_DEPRECATED = {"train": "train_sae", "load": "load_release"}  # old names (they clashed with finetune.train / data.load)


def __getattr__(name: str):
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(f"introspect_mech.sae.{name} is deprecated, use sae.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'introspect_mech.sae' has no attribute {name!r}")
