"""The main job's configuration: `JobConfig`, its presets, the held-out medical splits and the data files it reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ... import data
from ...data import DataError
from ..common.medical_split import medical_heldout_items
from ...paths import data_dir


@dataclass
class JobConfig:
    """Everything that decides a main-job run (saved in the manifest)."""

    model: str | None = None  # model: name, hub id or directory (None = the embedded SmolLM2-135M-Instruct)
    device: str | None = None  # torch device (None = cuda when available, else cpu)
    data_dir: str | None = None  # canonical data folder (None = $INTROSPECT_MECH_DATA)
    # finetuning (on top of finetune.PRESETS[finetune_preset])
    finetune_preset: str = "em"  # finetune.PRESETS entry both finetunes start from
    n_train: int | None = 64  # training examples per finetune (None = all training rows)
    lr: float | None = 2e-4  # learning rate (None = the finetune preset's)
    batch_size: int | None = 4  # effective batch size (None = the finetune preset's)
    max_seq_len: int = 384  # training sequence length in tokens
    # evals (the steering evals use `steer_items_per_theme` EM items per theme, to keep sweeps cheap)
    n_medical_eval: int = 16  # held-out bad-vs-good medical pairs in the proxy metrics
    steer_items_per_theme: int | None = 1  # EM proxy items per theme in the steering evals (None = all)
    steer_medical: int | None = 12  # held-out medical items in the steering evals (None = all)
    n_medical_direction: int = 16  # further held-out medical pairs the EM direction is fitted on (disjoint from the scored ones)
    sample_prompts: int = 3  # prompts answered by each model for the samples panel
    sample_tokens: int = 60  # new tokens per sampled answer
    # persona direction
    persona_questions: int = 6  # persona-vector recipe: the first n questions of the evil trait
    persona_instructions: int = 3  # persona-vector recipe: the first n instruction (system-prompt) pairs
    persona_heldout: int | None = 1  # held-out instruction pairs the judge-free filter scores with
    persona_tokens: int = 48  # new tokens per persona answer
    # steering
    steer_depths: tuple[float, ...] = (0.5,)  # relative depths of the layers the sweep steers
    alphas: tuple[float, ...] = (2.0, 4.0)  # in units of the direction's class-mean distance
    effect_alpha: float = 2.0  # the pre-chosen alpha shown in the interventions panel
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the steering sweeps (random controls)
    seed: int = 0  # finetune, sampling and bootstrap seed
    batch: int = 16  # generation / scoring batch size


JOB_PRESETS: dict[str, JobConfig] = {
    # the embedded SmolLM2-135M on a 2-core CPU, minutes
    "quick": JobConfig(),
    # GPU users: the EM preset unchanged (lr 1e-5, effective batch 16, 1 epoch) on all training rows
    "paper": JobConfig(n_train=None, lr=None, batch_size=None, max_seq_len=2048, n_medical_eval=200, n_medical_direction=200,
                       steer_items_per_theme=None, sample_prompts=8, sample_tokens=200, persona_questions=20,
                       persona_instructions=5, persona_heldout=None, persona_tokens=200,
                       steer_depths=(0.25, 0.5, 0.75), alphas=(0.5, 1.0, 2.0, 4.0)),
}
PRESETS = JOB_PRESETS  # the name every study module uses

DATASETS = {"bad_medical": "bad_medical_advice", "good_medical": "good_medical_advice"}  # finetune -> training set
SAMPLE_QUESTIONS = ("em", "questions", "first_plot_questions.yaml")  # the samples panel's prompts, under the data folder
PERSONA_TRAIT = "evil"  # the persona direction's trait


def medical_splits(cfg: JobConfig, items: Sequence[dict] | None = None) -> dict[str, list[dict]]:
    """The held-out medical pairs, split so that nothing is fitted on the items it is scored on.

    Args:
        cfg: the job's configuration.
        items: the shuffled held-out pool (default: `medical_heldout_items(None)` with the job's seed).

    Returns:
        {"eval": the first `n_medical_eval` (the judge-free metrics), "steer": the first
        `steer_medical` of those (the steering / ablation evals), "direction": the next
        `n_medical_direction` (the EM direction's fit; disjoint from both)}.

    Raises:
        ValueError: the pool has fewer items than the three splits need.
    """
    if items is None:
        items = medical_heldout_items(None, seed=cfg.seed, data_dir=cfg.data_dir)
    n_eval, n_dir = cfg.n_medical_eval, cfg.n_medical_direction
    if len(items) < n_eval + n_dir:
        raise ValueError(f"held-out medical pool has {len(items)} items, the job needs {n_eval} + {n_dir}")
    ev = list(items[:n_eval])
    return {"eval": ev, "steer": ev[: cfg.steer_medical] if cfg.steer_medical is not None else ev,
            "direction": list(items[n_eval: n_eval + n_dir])}


def data_files(config: JobConfig, resources: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The data files whose content the job's rows depend on (bound by the runner, `Study.data`): both medical
    training sets (also the held-out pool), the persona trait file and the samples' question file. A training
    set not found locally is left to `data.load`, which downloads it and checks the registry's checksum.

    Args:
        config: the job's config (`data_dir`).
        resources: the run's keywords (unused: the data folder is the config's).

    Returns:
        {"dataset/<name>" | "persona/evil" | "questions/first_plot_questions": path}.
    """
    ddir = data_dir(config.data_dir)
    out: dict[str, Path] = {}
    for name in DATASETS.values():
        try:
            out[f"dataset/{name}"] = data.locate(name, config.data_dir, fetch=False, verify_checksum=False)
        except DataError:
            pass
    out[f"persona/{PERSONA_TRAIT}"] = ddir / "persona" / "trait_data_extract" / f"{PERSONA_TRAIT}.json"
    out["questions/first_plot_questions"] = ddir.joinpath(*SAMPLE_QUESTIONS)
    return out
