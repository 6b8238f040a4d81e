"""Compact, resumable finetuning: LoRA (incl. rank-1 single-layer) or full, assistant-only loss, packing."""

from .cli import cli_main
from .config import PRESETS, TrainConfig, preset
from .loop import TrainResult, assistant_loss, lr_factor, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "preset", "train", "cli_main", "assistant_loss", "lr_factor"]
