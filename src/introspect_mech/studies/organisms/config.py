"""The organisms study's configuration: `OrganismsConfig` (every option, one `--field` each) and `PRESETS`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class OrganismsConfig:
    """Everything that decides the organisms run (saved in the manifest).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    organisms --help`).
    """

    model: str | None = None  # base model: name, hub id or directory (None = the embedded SmolLM2-135M-Instruct)
    layer: int | float = 0.5  # block L of the planted mechanism: a block index, or a float in [0, 1] = relative depth (layers.depth_block)
    alpha: float = 4.0  # |vec| at L in units of the persona direction's class-mean distance at L
    directions: tuple[str, ...] = ("persona", "concept", "random")  # steering-distillation directions
    seeds: tuple[int, ...] = (0, 1, 2)  # sampling + finetune seeds of distill_persona (others: seeds[0])
    n_train: int = 16  # prompts per finetune
    n_eval: int = 8  # held-out prompts for the behaviour metrics
    max_new_tokens: int = 32  # answer length of every sampled answer (steered teacher, persona, eval prompts)
    temperature: float = 1.0  # sampling temperature
    lora_r: int = 8  # LoRA rank of the organisms' finetunes
    lora_layers: Literal["all", "up_to_L"] = "all"  # "all" | "up_to_L": LoRA only on blocks 0..L (the change must happen by L)
    lr: float = 1e-3  # finetune learning rate
    epochs: int = 2  # finetune epochs
    batch_size: int = 8  # finetune batch size
    n_texts: int = 32  # unrelated texts for the first-token methods
    first_tokens: int = 5  # tokens read from the start of each unrelated text (first-token methods)
    n_random: int = 3  # norm-matched random controls per recovery / intervention
    probe_every: int = 3  # probe every k-th block (and L)
    persona_questions: int = 6  # persona-vector recipe (evil): the first n questions
    persona_instructions: int = 2  # persona-vector recipe: the first n instruction pairs
    persona_max_new_tokens: int = 32  # persona-vector recipe: answer length
    sae: bool = True  # train a small SAE at L on base activations for the SAE diff
    sae_expansion: int = 4  # SAE latents = expansion x d_model
    sae_k: int = 16  # TopK SAE: active latents per token
    sae_records: int = 48  # good_medical_advice conversations the SAE trains on (besides the unrelated texts)
    sae_epochs: float = 10.0  # a few thousand tokens: several passes (4 x 1024 left explained variance < 0)
    sae_batch: int = 256  # SAE training batch (tokens)
    persona_distill: bool = True  # build the persona-distillation organism (narrow -> broad)
    inoculation: bool = True  # build the inoculation organism (system prompt kept in training)
    train_time: tuple[str, ...] = ("preventative",)  # "preventative" and/or "caft" on distill_persona seed 0
    train_time_random: int = 3  # random controls per train-time intervention
    planted: bool = True  # build the planted organism (a hook, no training)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists), as saved in the manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


PRESETS: dict[str, OrganismsConfig] = {
    # default on the 2-core CPU (embedded model); measured 3,164 s with the CPU shared by parallel jobs (docs)
    "cpu": OrganismsConfig(),
    # smallest meaningful run (tests on tiny Qwen; a smoke run of the embedded model)
    "tiny": OrganismsConfig(directions=("persona", "random"), seeds=(0,), n_train=8, n_eval=4, max_new_tokens=12,
                            epochs=3, n_texts=12, n_random=3, persona_questions=3, persona_max_new_tokens=12,
                            sae=False, persona_distill=True, inoculation=False, train_time=(), lora_r=4, lr=5e-3,
                            batch_size=4),
    # a GPU-sized run: more data, every train-time intervention, 3 seeds for every organism
    "gpu": OrganismsConfig(n_train=200, n_eval=40, max_new_tokens=96, epochs=3, lora_r=32, lr=1e-4, n_texts=256,
                           persona_questions=20, persona_instructions=5, persona_max_new_tokens=96,
                           sae_records=2000, sae_expansion=16, train_time=("preventative", "caft"), probe_every=1),
}
