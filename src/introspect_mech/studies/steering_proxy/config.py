"""The steering-proxy study's configuration: `SteeringProxyConfig` (every option, one `--field` each), the
finetune and eval sizes of its presets (`STUDY_PRESETS`) and `PRESETS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# Study sizes. "gpu": the finetune of the GPU run (2000 examples, effective batch 16, 125 steps).
# "cpu": the main job's finetune (64 examples, batch 4, lr 2e-4: 16 steps, ~3 min for the embedded
# model on one CPU core) so 3 seeds x (plain, CAFT, random CAFT) fit a 2-core machine; its evals skip
# the 0-100 self-rating (the costliest metric, and the 135M model puts ~13 % of its mass on numbers).
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(n_train=2000, lr=1e-4, train=dict(batch_size=16, max_seq_len=1024, warmup_steps=5), self_rating=True),
    "cpu": dict(n_train=64, lr=2e-4, train=dict(batch_size=4, max_seq_len=384, warmup_steps=2), self_rating=False),
}


@dataclass
class SteeringProxyConfig:
    """The options of the study (its command line is generated from these fields)."""

    model: str | None = None  # model to study (none: the embedded SmolLM2-135M-Instruct)
    stages: str = "abc"  # which parts to run: a creates-EM, b removes-EM, c CAFT (any of them, e.g. bc)
    seeds: tuple[int, ...] = (0, 1, 2)  # finetune seeds (and the random-direction controls' seeds)
    layers: tuple[int, ...] | None = None  # (a) blocks to steer (none: 20/35/50/65 % depth)
    alphas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # (a) in units of the direction's class-mean distance
    preset: Literal["gpu", "cpu"] = "gpu"  # finetune and eval sizes: gpu (2000 examples) or cpu (64, no self-rating)
    n_train: int | None = None  # training examples (none: the preset's)
    lr: float | None = None  # learning rate (none: the preset's)
    n_dir_pairs: int = 64  # answer pairs the EM direction is computed from
    persona: bool = True  # also steer with the persona direction
    batch_size: int = 16  # prompts per forward pass
    ablate_layers: str | tuple[int, ...] = "all"  # (b) blocks to ablate at: all, or block indices
    random_per_finetune: int | None = None  # (b) random-direction controls per finetune seed (none: one per seed)
    quick: bool = False  # tiny sizes, for a smoke test

    def __post_init__(self) -> None:
        if not self.stages or set(self.stages) - set("abc"):
            raise ValueError(f"stages: expected letters among a, b, c (e.g. abc or bc), got {self.stages!r}")


PRESETS: dict[str, SteeringProxyConfig] = {name: SteeringProxyConfig(preset=name) for name in STUDY_PRESETS}  # type: ignore[arg-type]


def check(config: SteeringProxyConfig) -> None:
    """Refuse a config the study cannot run, before the run directory is touched.

    Args:
        config: the run's config.

    Raises:
        ValueError: an unknown `preset`.
    """
    if config.preset not in STUDY_PRESETS:
        raise ValueError(f"unknown study preset {config.preset!r}; presets: {', '.join(STUDY_PRESETS)}")
