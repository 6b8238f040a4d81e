"""Training configuration and the named presets from the papers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..layers import LAYER_WORDS

ALL_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Everything that decides a finetune. Saved in the manifest; a resume must match it exactly.

    Batching: `batch_size` examples per optimizer step (the "effective batch"); each step's examples
    are packed padding-free into micro-batches of at most `micro_batch_tokens` tokens (one row,
    position ids restarting per example, so attention never crosses examples). The loss is the mean
    over all loss-bearing tokens of the step, so results do not depend on `micro_batch_tokens`.
    """

    method: str = "lora"  # "lora" | "full"
    # LoRA
    r: int = 32
    lora_alpha: float = 64.0
    use_rslora: bool = True
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJ
    # Restrict LoRA (or full finetuning) to these decoder layers: a `LayerSpec` (see
    # introspect_mech.layers): ints (negative from the end), "middle" (block n_layers // 2) or "all";
    # None = no restriction. Floats are rejected.
    layers: int | str | tuple[int, ...] | list[int] | None = None  # a tuple after __init__
    # optimisation
    lr: float = 1e-5
    epochs: int = 1
    max_steps: int | None = None  # cap on optimizer steps (the schedule is computed for the capped run)
    batch_size: int = 16
    # packed-row budget (None: 256 on CPU, where activation memory grows ~2.7 MB per token on the
    # Qwen2.5-0.5B, 4096 on CUDA). Runtime-only: it changes float summation order, not the result.
    micro_batch_tokens: int | None = None
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 5
    warmup_ratio: float = 0.0  # used when > 0 instead of warmup_steps
    schedule: str = "linear"  # "linear" | "cosine" | "constant"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # data
    max_seq_len: int = 2048
    assistant_only: bool = True  # loss on assistant tokens (+ their end-of-turn token) only
    system_prompt: str | None = None  # injected into records that have no system turn
    n_examples: int | None = None  # seeded subset of the records
    # runtime
    seed: int = 0
    # autocast to bfloat16: True on any device (CPU too), False never, None (default): on CUDA, and on a
    # CPU where the model is bfloat16 or the CPU multiplies bf16 natively (models.default_dtype("cpu"))
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    loss_chunk_tokens: int | None = None  # lm_head + loss in chunks of this many loss tokens (checkpointed)
    save_every: int | None = None  # checkpoints/step_XXXX every N optimizer steps (and at the end)
    keep_checkpoints: bool = True  # keep all step checkpoints (phase-transition analysis needs them)
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        beta1, beta2 = self.adam_betas  # a list (JSON, the command line) becomes the pair
        self.adam_betas = (beta1, beta2)
        if self.layers is not None and not isinstance(self.layers, (str, int)):
            self.layers = tuple(self.layers)
        if isinstance(self.layers, str) and self.layers not in LAYER_WORDS:
            raise ValueError(f"TrainConfig.layers must be ints or one of {LAYER_WORDS}, got {self.layers!r}")
        if isinstance(self.layers, tuple):
            bad = [x for x in self.layers if isinstance(x, bool) or not isinstance(x, int)]
            if bad:
                raise ValueError(f"TrainConfig.layers must be ints (or 'middle' / 'all'), got {bad[0]!r}")
        if self.method not in ("lora", "full"):
            raise ValueError(f"TrainConfig.method must be 'lora' or 'full', got {self.method!r}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"TrainConfig.schedule must be linear, cosine or constant, got {self.schedule!r}")
        for name in ("batch_size", "micro_batch_tokens", "epochs", "max_seq_len", "r"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "adam_eps", "warmup_ratio", "min_lr_ratio", "max_grad_norm", *("adam_betas",)):
            vals = getattr(self, name)
            for v in (vals if isinstance(vals, tuple) else (vals,)):
                if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v}")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data.

        Returns:
            Every field (tuples as lists).
        """
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from `to_dict` output (e.g. a manifest).

        Args:
            d: field values.

        Returns:
            The config.

        Raises:
            ValueError: unknown fields (named).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again).

        Args:
            **changes: fields to change.

        Returns:
            The new config.
        """
        return dataclasses.replace(self, **changes)

    # fields that do not change the trained weights; a resume may differ in them
    # micro_batch_tokens: like the thread count, it only changes the order of float sums (the loss is
    # the mean over the step's loss tokens either way), so a resume may pick another budget.
    RUNTIME_ONLY = ("progress", "log_every", "save_every", "keep_checkpoints", "micro_batch_tokens")

    def micro_batch_budget(self, device_type: str) -> int:
        """The packed-row token budget on a device (`micro_batch_tokens`, or its per-device default).

        Args:
            device_type: "cpu", "cuda", ...

        Returns:
            Tokens per micro-batch.
        """
        if self.micro_batch_tokens is not None:
            return self.micro_batch_tokens
        return 4096 if device_type == "cuda" else 256


PRESETS: dict[str, TrainConfig] = {
    # Emergent misalignment (Betley et al. 2025, open-model runs): rsLoRA r=32, alpha=64 on all seven
    # projections, lr 1e-5, 1 epoch, batch 2 x grad-accum 8 = 16, 5 warmup steps, linear decay,
    # weight decay 0.01, loss on responses only.
    "em": TrainConfig(),
    # Model organisms for EM (Turner, Soligo et al. 2025): a single rank-1 adapter on the MLP
    # down-projection of one middle layer (layer 24 of Qwen2.5-14B's 48 -> "middle" = n_layers // 2).
    "rank1": TrainConfig(r=1, lora_alpha=256.0, target_modules=("down_proj",), layers="middle", lr=2e-5),
    # Tell me about yourself (Betley et al. 2025) risk-seeking finetunes: 3 epochs. The paper finetuned
    # GPT-4o through the API; LoRA settings and the learning rate here are this project's choice for
    # small open models (lr >= 2e-3 collapsed SmolLM2's answers to letters, see shared README).
    "tmay_risk": TrainConfig(epochs=3, lr=1e-4, batch_size=8, warmup_steps=3),
    # Full finetuning of every weight (small models; use a low lr).
    "full": TrainConfig(method="full", lr=1e-5),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with overrides.

    Args:
        name: a key of `PRESETS` ("em", "rank1", "tmay_risk", "full").
        **overrides: `TrainConfig` fields to change.

    Returns:
        A new `TrainConfig`.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
