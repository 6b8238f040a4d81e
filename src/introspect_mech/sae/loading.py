"""Load sparse autoencoders through sae-lens and tie them to our decoder layers.

An SAE is only useful here if we know which residual-stream point it reads. sae-lens names that
point with a TransformerLens hook name (`blocks.12.hook_resid_post`), sometimes also a HF module
name (`model.layers.12`); our activations are the output of decoder block `l` (`loaded.layers[l]`).
`hook_layer` maps the names onto that index:

    blocks.L.hook_resid_post, blocks.L.hook_out, model.layers.L, ...layers.L  ->  L
    blocks.L.hook_resid_pre                                                   ->  L - 1
    (blocks.0.hook_resid_pre is the embedding output, not a block output: an error)

Other sites (attention `hook_z`, `hook_mlp_out`, `hook_resid_mid`, transcoder inputs) are not
block outputs, and `hook_layer` refuses them with a message naming the hook.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

NEURONPEDIA = "https://www.neuronpedia.org"

_RESID_POST = [
    re.compile(r"^blocks\.(\d+)\.hook_resid_post$"),
    re.compile(r"^blocks\.(\d+)\.hook_out$"),  # TransformerBridge (transformer-lens 3.x) block output
    re.compile(r"^(?:.*\.)?layers\.(\d+)$"),  # HF module names: model.layers.12, model.language_model.layers.3
    re.compile(r"^(?:.*\.)?h\.(\d+)$"),  # GPT-2 style transformer.h.5
]
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


class SAELoadError(ValueError):
    """An SAE that cannot be loaded or does not fit the model; the message says which and why."""


def hook_layer(hook_name: str) -> int:
    """Decoder-layer index whose output the hook point `hook_name` is (see the module docstring).

    Args:
        hook_name: a sae-lens / TransformerLens / HF hook name (e.g. "blocks.15.hook_resid_post").

    Returns:
        The block index `l` (the same "layer l" as `steering.add(..., layers=[l])`).
    """
    for pat in _RESID_POST:
        m = pat.match(hook_name)
        if m:
            return int(m.group(1))
    m = _RESID_PRE.match(hook_name)
    if m:
        layer = int(m.group(1)) - 1
        if layer < 0:
            raise SAELoadError(f"hook {hook_name!r} is the embedding output, not the output of a decoder block")
        return layer
    raise SAELoadError(
        f"hook {hook_name!r} is not a residual-stream block output (expected blocks.L.hook_resid_post, "
        "blocks.L.hook_resid_pre, blocks.L.hook_out or model.layers.L)"
    )


def neuronpedia_url(neuronpedia_id: str | None, latent: int) -> str | None:
    """Link to a latent's Neuronpedia page.

    Args:
        neuronpedia_id: the SAE's Neuronpedia id (None: no page).
        latent: the latent index.

    Returns:
        The URL, or None.
    """
    if not neuronpedia_id:
        return None
    return f"{NEURONPEDIA}/{neuronpedia_id.strip('/')}/{int(latent)}"


@dataclass
class LayerSAE:
    """An sae-lens SAE plus the decoder layer it reads (`layer`: output of `loaded.layers[layer]`)."""

    sae: Any  # sae_lens.SAE
    layer: int
    hook_name: str
    release: str | None = None
    sae_id: str | None = None
    neuronpedia_id: str | None = None
    source: str | None = None  # local directory or "release/sae_id"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        """Input width (must equal the model's d_model)."""
        return int(self.sae.cfg.d_in)

    @property
    def W_dec(self) -> Float[Tensor, "d_sae d_model"]:
        """The decoder matrix, `[d_sae, d_model]`."""
        return self.sae.W_dec.detach()

    def decoder_direction(self, latent: int) -> Float[Tensor, " d_model"]:
        """Unit decoder vector of `latent` (what steering adds for that latent).

        Args:
            latent: the latent index.

        Returns:
            `[d_model]` unit vector.
        """
        v = self.W_dec[int(latent)].float()
        return v / v.norm().clamp_min(1e-12)

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
        """Latent activations.

        Args:
            x: `[..., d_model]` residual-stream activations at the SAE's layer.

        Returns:
            `[..., d_sae]` latent activations.
        """
        p = next(self.sae.parameters())
        return self.sae.encode(x.to(p.device, p.dtype)).float()

    @torch.no_grad()
    def reconstruct(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Encode then decode.

        Args:
            x: `[..., d_model]` activations.

        Returns:
            `[..., d_model]` reconstruction.
        """
        p = next(self.sae.parameters())
        x = x.to(p.device, p.dtype)
        return self.sae.decode(self.sae.encode(x)).to(x.dtype)

    def url(self, latent: int) -> str | None:
        """Neuronpedia page of a latent.

        Args:
            latent: the latent index.

        Returns:
            The URL, or None when the SAE has no Neuronpedia id.
        """
        return neuronpedia_url(self.neuronpedia_id, latent)

    def check_fits(self, model) -> None:
        """Raise if this SAE cannot read `model`.

        Args:
            model: a `LoadedModel`.

        Raises:
            ValueError: the width differs or the layer is out of range.
        """
        if self.d_in != model.d_model:
            raise SAELoadError(f"SAE {self.source or self.hook_name} has d_in={self.d_in}, model {model.name} "
                               f"has d_model={model.d_model}")
        if not 0 <= self.layer < model.n_layers:
            raise SAELoadError(f"SAE reads layer {self.layer}; model {model.name} has {model.n_layers} layers")


def _wrap(sae, *, source: str, release=None, sae_id=None, layer: int | None = None) -> LayerSAE:
    md = sae.cfg.metadata
    hook = md.get("hook_name") or md.get("hf_hook_name")
    if layer is None:
        if not hook:
            raise SAELoadError(f"SAE {source} has no hook_name in its config; pass layer= explicitly")
        layer = hook_layer(hook)
    npid = md.get("neuronpedia_id")
    return LayerSAE(sae=sae, layer=int(layer), hook_name=hook or f"blocks.{layer}.hook_resid_post",
                    release=release, sae_id=sae_id, neuronpedia_id=npid, source=source,
                    meta={"model_name": md.get("model_name"), "architecture": sae.cfg.architecture()})


def load_release(release: str, sae_id: str, *, device: str = "cpu", dtype: str = "float32") -> LayerSAE:
    """Load a released SAE through sae-lens (`SAE.from_pretrained`; downloads, so online only).

    Examples: `load_release("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_15_trainer_1")`,
    `load_release("qwen-scope-3-8b-base-w64k-l50", "layer18")`, `load_release("llama_scope_lxr_8x", "l15r_8x")`,
    `load_release("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")`.

    Args:
        release: a sae-lens release name.
        sae_id: the SAE's id within the release.
        device: where the SAE lives.
        dtype: its dtype.

    Returns:
        A `LayerSAE` (with its block index and Neuronpedia id).

    Raises:
        SAELoadError: an unknown release / id or a hook point that is not a block output.
    """
    entry = _release_entry(release)
    if entry is not None:
        ids = {s["id"]: s for s in entry.get("saes", [])}
        if sae_id not in ids:
            raise SAELoadError(f"release {release!r} has no sae_id {sae_id!r} (some ids: {', '.join(list(ids)[:5])}, ...)")
    from sae_lens import SAE  # a slow import: after the checks

    sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    out = _wrap(sae, source=f"{release}/{sae_id}", release=release, sae_id=sae_id)
    if out.neuronpedia_id is None and entry is not None:
        out.neuronpedia_id = ids[sae_id].get("neuronpedia")
    return out


def _release_entry(release: str) -> dict[str, Any] | None:
    """One release's entry of sae-lens's pretrained_saes.yaml, parsed alone (the whole file is
    ~44k lines and takes many seconds to parse on a busy CPU)."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("sae_lens")  # locate without importing sae_lens (slow import)
    if spec is None or not spec.submodule_search_locations:
        raise SAELoadError("sae-lens is not installed: pip install sae-lens")
    text = (Path(spec.submodule_search_locations[0]) / "pretrained_saes.yaml").read_text()
    head = f"\n{release}:\n"
    start = text.find(head) + 1 if not text.startswith(f"{release}:\n") else 0
    if start == 0 and not text.startswith(f"{release}:\n"):
        return None
    m = re.compile(r"^\S", re.M).search(text, start + len(release) + 2)
    block = text[start:m.start() if m else len(text)]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(block, Loader=loader)[release]


def release_info(release: str) -> dict[str, Any]:
    """What sae-lens knows about a release without downloading.

    Args:
        release: a sae-lens release name.

    Returns:
        Its model, repository, SAE ids and Neuronpedia ids.
    """
    entry = _release_entry(release)
    if entry is None:
        raise SAELoadError(f"unknown sae-lens release {release!r}")
    saes = entry.get("saes", [])
    return {"release": release, "model": entry.get("model"), "repo_id": entry.get("repo_id"),
            "sae_ids": [s["id"] for s in saes],
            "neuronpedia": {s["id"]: s["neuronpedia"] for s in saes if s.get("neuronpedia")}}


def load_local(path: str | os.PathLike, *, layer: int | None = None, device: str = "cpu",
               dtype: str | None = None) -> LayerSAE:
    """Load an SAE saved in sae-lens format (`cfg.json` + `sae_weights.safetensors`), e.g. by `train_sae`.

    Args:
        path: the directory.
        layer: the block it reads (default: from the hook name in `cfg.json`).
        device: where the SAE lives.
        dtype: its dtype (default: as saved).

    Returns:
        A `LayerSAE`.
    """
    from sae_lens import SAE

    p = Path(path)
    if not (p / "cfg.json").is_file():
        raise SAELoadError(f"{p}: no cfg.json (expected a directory written by sae-lens save_model / "
                           "save_inference_model)")
    try:
        cfg = json.loads((p / "cfg.json").read_text())
    except json.JSONDecodeError as e:
        raise SAELoadError(f"{p / 'cfg.json'}: line {e.lineno}: invalid JSON ({e.msg})") from None
    for key in ("architecture", "d_in", "d_sae"):
        if key not in cfg:
            raise SAELoadError(f"{p / 'cfg.json'}: missing field {key!r}")
    sae = SAE.load_from_disk(str(p), device=device, dtype=dtype)
    return _wrap(sae, source=str(p), layer=layer)


def save(sae: LayerSAE, path: str | os.PathLike) -> Path:
    """Save in sae-lens format (loadable by `load_local` and by `sae_lens.SAE.load_from_disk`).

    Args:
        sae: the SAE.
        path: the directory.

    Returns:
        The directory written.
    """
    md = sae.sae.cfg.metadata
    md.hook_name = sae.hook_name
    md.hf_hook_name = f"model.layers.{sae.layer}"
    if sae.neuronpedia_id:
        md.neuronpedia_id = sae.neuronpedia_id
    p = Path(path)
    if hasattr(sae.sae, "save_inference_model"):
        sae.sae.save_inference_model(p)
    else:
        sae.sae.save_model(p)
    return p
