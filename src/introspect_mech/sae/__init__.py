"""SAE features on sae-lens: load released SAEs, train one offline, diff models, self-prediction latents.

See docs/sae.md.

    from introspect_mech import sae
    s = sae.load("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_15_trainer_1")   # online
    s = sae.train(model, layer=15, data=conversations, out_dir="runs/sae").sae     # offline
    d = sae.model_diff(base, finetuned, s, eval_conversations, direction=em_dir, out="runs/diff")
"""

from .diff import LatentChange, ModelDiff, decoder_cosines, latent_codes, model_diff, steer_latents, top_examples
from .loading import LayerSAE, SAELoadError, hook_layer, load, load_local, neuronpedia_url, release_info, save
from .selfpred import predictive_latents, prompt_diff, prompt_latents
from .tokens import TokenActs, token_activations
from .training import SAETrainConfig, SAETrainResult, collect, evaluate, splice_loss, train

__all__ = [
    "LayerSAE", "SAELoadError", "hook_layer", "load", "load_local", "neuronpedia_url", "release_info", "save",
    "SAETrainConfig", "SAETrainResult", "train", "evaluate", "collect", "splice_loss",
    "LatentChange", "ModelDiff", "model_diff", "decoder_cosines", "latent_codes", "top_examples", "steer_latents",
    "prompt_latents", "prompt_diff", "predictive_latents", "TokenActs", "token_activations",
]
