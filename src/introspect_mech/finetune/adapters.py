"""What gets trained: a PEFT LoRA adapter (optionally restricted to some layers) or every weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..layers import resolve_layers
from ..models import LoadedModel, model_fingerprint
from .config import TrainConfig
from ..runs import write_text

if TYPE_CHECKING:
    from peft import PeftModel


def _layers_pattern(loaded: LoadedModel) -> str:
    base = loaded.base_model
    for name, mod in base.named_modules():
        if mod is loaded.layers:
            return name.split(".")[-1]
    return "layers"


def prepare(loaded: LoadedModel, config: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """Make `loaded` trainable per `config` (wrapping it in a PEFT model for LoRA).

    Args:
        loaded: the model (must not carry an adapter already for LoRA).
        config: the `TrainConfig` (method, LoRA settings, `layers`).

    Returns:
        The trainable `(name, parameter)` pairs.
    """
    layers = None if config.layers is None else resolve_layers(config.layers, loaded.n_layers)
    if config.method == "lora":
        if loaded.has_adapter:
            raise ValueError("model already carries a PEFT adapter; load the base model (or merge the adapter) "
                             "before training a new one")
        from peft import LoraConfig, get_peft_model

        present = {n.split(".")[-1] for n, m in loaded.base_model.named_modules() if isinstance(m, nn.Linear)}
        missing = [t for t in config.target_modules if t not in present]
        if missing:
            raise ValueError(f"target modules {missing} not found in {loaded.name}; linear layers are {sorted(present)}")
        lcfg = LoraConfig(
            # peft annotates lora_alpha as int; it is a float scale (alpha / r or alpha / sqrt(r))
            r=config.r, lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
            lora_dropout=config.lora_dropout,
            use_rslora=config.use_rslora, target_modules=list(config.target_modules), bias="none",
            task_type="CAUSAL_LM", layers_to_transform=layers,
            layers_pattern=_layers_pattern(loaded) if layers is not None else None,
        )
        loaded.model = get_peft_model(loaded.model, lcfg)
    else:
        keep = None if layers is None else {id(p) for i in layers for p in loaded.layers[i].parameters()}
        for p in loaded.model.parameters():
            p.requires_grad_(keep is None or id(p) in keep)
    if config.gradient_checkpointing:
        base = loaded.base_model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
    params = [(n, p) for n, p in loaded.model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the config leaves no trainable parameters")
    return params


def save_weights(loaded: LoadedModel, config: TrainConfig, dest: Path) -> Path:
    """Save the trained adapter (PEFT format + base_fingerprint.json) or the full model.

    Args:
        loaded: the trained model.
        config: its `TrainConfig`.
        dest: the folder.

    Returns:
        The folder written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    fp = json.dumps(model_fingerprint(loaded.model), indent=1)
    if config.method == "lora":
        cast("PeftModel", loaded.model).save_pretrained(str(dest))  # prepare() wrapped it
    else:
        loaded.base_model.save_pretrained(str(dest))
        loaded.tokenizer.save_pretrained(str(dest))

    write_text(dest / "base_fingerprint.json", fp, root=dest)
    return dest


def trainable_state(params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (for checkpoints).

    Args:
        params: `(name, parameter)` pairs from `prepare`.

    Returns:
        `{name: tensor}`.
    """
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params}


def load_trainable_state(params: list[tuple[str, nn.Parameter]], state: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's tensors into the trainable parameters.

    Args:
        params: `(name, parameter)` pairs from `prepare`.
        state: `{name: tensor}` from `trainable_state`.

    Raises:
        ValueError: the names differ.
    """
    names = {n for n, _ in params}
    if names != set(state):
        diff = sorted(names ^ set(state))[:4]
        raise ValueError(f"checkpoint parameters do not match the model's trainable parameters (e.g. {diff})")
    with torch.no_grad():
        for n, p in params:
            p.copy_(state[n].to(p.device, p.dtype))
