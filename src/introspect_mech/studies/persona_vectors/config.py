"""The persona-vectors study's configuration: `PVConfig` (every option, one `--field` each), `PRESETS` and the
constants of upstream's protocol (steering positions, the coherence bar, the paper's shift correlation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, Literal

UPSTREAM_POSITIONS: Final = "last_prompt_and_response"

Stage = Literal["extract", "probes", "select", "screen", "finetune", "controls", "shift"]
STAGES: tuple[Stage, ...] = ("extract", "probes", "select", "screen", "finetune", "controls", "shift")


@dataclass
class PVConfig:
    """Everything that decides a persona-vectors run (`run`); each field is an option of `main`."""

    model: str | None = None  # model name/path/hub id (None: the embedded SmolLM2-135M-Instruct)
    device: str | None = None  # device of the model and finetunes (None: load_model's choice)
    trait: str = "evil"  # trait file name (persona/trait_data_extract and trait_data_eval)
    extract: Literal["paper", "cpu"] = "paper"  # common.persona extraction preset (pos/neg answer counts)
    max_heldout: int | None = None  # held-out instruction pairs per answer for the judge-free proxy filter (None: all)
    n_questions: int | None = None  # eval-split questions for trait expression (None: all)
    n_per_question: int = 10  # samples per eval question for trait expression
    max_new_tokens: int = 1000  # new tokens per answer (trait expression, screening's base answers)
    temperature: float = 1.0  # sampling temperature for trait expression
    coef: float = 2.0  # steering coefficient times the raw mean difference (layer selection, preventative steering)
    layer: int | None = None  # steering / projection layer when none is selected (block index; None: the middle block)
    layers: tuple[int, ...] | None = None  # candidate layers for selection, e.g. 10 15 20 (needs a judge)
    layer_fractions: tuple[float, ...] | None = None  # candidate layers as relative depths (used when `layers` is None)
    n_screen: int = 24  # records per side (bad / good medical advice) in the screening mix
    n_train: int = 48  # bad-medical-advice records to finetune on
    steps: int = 12  # finetuning steps
    save_every: int = 4  # finetuning checkpoint interval in steps
    random_controls: int = 2  # "controls" stage: preventative finetunes with this many norm-matched random directions
    stages: tuple[Stage, ...] = STAGES  # stages to run (the direction is always extracted)
    seed: int = 0  # seed of sampling, probes, screening mix and finetuning
    allow_unvalidated_judge: bool = False  # report judged numbers (pair filter, trait scores, layer selection) from a judge without a passing validation on the shared GPT-4o set (labelled "unvalidated judge")
    reference_judge: str = "gpt-4.1-mini-2025-04-14"  # the judge the preset is meant for (a note; the judge used is --judge)

    def replace(self, **changes: Any) -> PVConfig:
        """A copy with some fields changed.

        Args:
            **changes: field names and their new values.

        Returns:
            The new config (this one is unchanged).
        """
        return dataclasses.replace(self, **changes)


# Sample counts. "paper": upstream's eval_persona.py defaults (10 samples per question, up to 1000
# new tokens, temperature 1, all 20 eval questions) and the extraction preset of common.persona;
# coefficient 2.0 and the judge gpt-4.1-mini are upstream's README example. "cpu": the embedded model.
PRESETS: dict[str, PVConfig] = {
    "paper": PVConfig(extract="paper", n_questions=None, n_per_question=10, max_new_tokens=1000, temperature=1.0,
                      coef=2.0, reference_judge="gpt-4.1-mini-2025-04-14", layers=None,
                      layer_fractions=(0.4, 0.5, 0.6, 0.7, 0.75, 0.8)),  # upstream picked block 19/20 of Qwen2.5-7B by a sweep
    "cpu": PVConfig(extract="cpu", max_heldout=1, n_questions=4, n_per_question=2, max_new_tokens=40, temperature=1.0,
                    coef=2.0, reference_judge="embedded model (HFJudge)", layers=None),
    # Qwen2.5-Coder-0.5B-Instruct on an idle 2-core CPU (about 2 h, docs/qwen_runbook.md) with a label-mode judge
    # (--judge hf:qwen2.5-coder-1.5b-instruct --judge-mode label): the CPU extraction counts, 6 eval questions
    # x 3 samples of 96 tokens, layer selection over 4 blocks (depths ~1/3 .. 5/6 of 24).
    "qwen-cpu": PVConfig(model="qwen2.5-coder-0.5b-instruct", extract="cpu", max_heldout=2, n_questions=6,
                         n_per_question=3, max_new_tokens=96, temperature=1.0, coef=2.0, layers=(8, 12, 16, 20),
                         n_train=48, steps=12, save_every=4,
                         reference_judge="qwen2.5-coder-1.5b-instruct, label mode (validate it first)"),
}
COHERENCE_MIN = 50.0
PAPER_SHIFT_R = "0.76-0.97"  # Chen et al.: finetuning shift vs judged trait expression
