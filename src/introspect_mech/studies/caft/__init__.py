"""CAFT: concept-ablation finetuning (Casademunt et al. 2025) as the paper ran it.

1. Finetune once without intervention (the model that shows the unwanted generalisation).
2. `activation_differences`: on generic prompts answered by the finetuned model, run base and
   finetuned model on the same tokens and take the per-token difference of the residual stream
   `h_ft - h_base` after each chosen block (response tokens).
3. `pca`: principal components of those differences per layer.
4. `component_cards`: for each component, its top-activating examples (tokens where the base
   model's activation projects highest / lowest on it) and its logit-lens tokens (the unembedding
   of the component through the final norm's gain, both signs), so a person can say what it means
   and pick the ones to ablate (the dashboard's "CAFT components" panel, `viz.caft`).
5. `picked_subspace`: the chosen components per layer; `random_pc_subspace`: as many other
   components of the same PCA, drawn at random (the control, as in the paper).
6. Finetune again from the base model with `steering.train_time.caft_subspace` (the subspace is
   projected out at every position of every training forward, and nothing at inference) and with
   the random controls; report in-domain held-out performance kept and the out-of-domain EM change.

Deviations from the paper are listed in docs/caft.md (generic prompts, interpretation texts, judge).

`run(CAFTConfig(...), out)` runs the protocol into a run directory on the study runner, as five stages
(`finetune`, `components`, `cards`, `conditions`, `summary`; `stages.py`); run 1 (no `pick`) stops before
`conditions` until a person has read the cards. `main(argv)` is the command line (`python experiments/caft.py
--help`). The pieces (PCA, cards, subspaces, summary) are in `components.py`, the dashboard panel in `panels.py`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ... import data
from ...cliargs import config_parser, parse_config
from ...data import DataError
from ...evals.judge_spec import JudgeOptions
from ...paths import data_dir as _data_dir
from .. import runner
from . import panels as _panels  # noqa: F401  (registers the study's dashboard panels)
from .components import (  # noqa: F401  (the study's pieces, importable here as before)
    GENERIC_TRAITS, activation_differences, component_cards, generic_prompts, in_domain_logprob, load_components,
    logit_lens, parse_picks, pca, picked_subspace, preset_layers, random_pc_subspace, random_subspace,
    save_components, summarize, top_examples, write_cards,
)
from .stages import cards_stage, components_stage, conditions_stage, finetune_stage, outcome, summary_stage


@dataclass
class CAFTConfig:
    """Every option of a CAFT run (run 1 without `pick`: the component cards; run 2: CAFT vs random).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    caft --help`).
    """

    model: str | None = None  # model name/path/hub id (None: the embedded SmolLM2-135M-Instruct)
    data: str = "bad_medical_advice"  # finetuning data: a registered name, gen:<generator> or a JSONL(.gz) path
    n_train: int = 64  # training records (the first N of the data)
    steps: int = 16  # optimizer steps of every finetune
    lr: float = 2e-4  # learning rate of every finetune
    n_prompts: int = 24  # generic prompts answered by the plain finetune (activation differences)
    n_heldout: int = 24  # held-out records (the last N, never trained on): in-domain log-prob
    max_new_tokens: int = 48  # tokens per sampled answer
    pick: str | None = None  # components to ablate, e.g. "9:0;14:0,1" (after reading the cards); none: run 1
    n_random: int = 2  # random subspaces of the picked dimensions (controls)
    conditions: tuple[str, ...] | None = None  # run only these conditions now, e.g. caft base (parallel processes)
    seed: int = 0  # seed of the finetunes, the sampling and the random controls
    allow_unvalidated_judge: bool = False  # report the judged EM rate (run 2) from a judge without a passing validation on the shared GPT-4o set (labelled "unvalidated judge")
    layer_fractions: tuple[float, ...] = (0.3, 0.5, 0.7)  # relative depths of the PCA layers
    n_components: int = 6  # principal components per layer
    n_top_examples: int = 4  # top / bottom activating examples per component card
    n_logit_tokens: int = 8  # logit-lens tokens per sign on a component card


# "paper": Casademunt et al. on Qwen2.5-Coder-32B-Instruct (64 blocks): PCA at 3 layers spread
# over depth, top ~20 components inspected per layer; "cpu": the embedded model (30 blocks).
PRESETS: dict[str, CAFTConfig] = {
    "paper": CAFTConfig(layer_fractions=(0.19, 0.5, 0.78), n_components=20, n_top_examples=20, n_logit_tokens=10),
    "cpu": CAFTConfig(layer_fractions=(0.3, 0.5, 0.7), n_components=6, n_top_examples=4, n_logit_tokens=8),
}


def data_files(config: CAFTConfig, resources: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): the finetuning
    data (a JSONL path, or a registered dataset found locally; a generator has no file), the EM questions and the
    persona traits' eval questions (the generic prompts).

    Args:
        config: the run's config (`data`).
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"train" | "questions/first_plot_questions" | "persona/<trait>": path}.
    """
    ddir = (resources or {}).get("data_dir")
    out: dict[str, Path] = {}
    if not config.data.startswith("gen:"):
        if Path(config.data).exists():
            out["train"] = Path(config.data)
        else:
            try:
                out["train"] = data.locate(config.data, ddir, fetch=False, verify_checksum=False)
            except DataError:
                pass  # a registered set not found locally: `data.load` downloads it and checks its checksum
    root = _data_dir(ddir)
    out["questions/first_plot_questions"] = root / "em" / "questions" / "first_plot_questions.yaml"
    for t in GENERIC_TRAITS:
        out[f"persona/{t}"] = root / "persona" / "trait_data_eval" / f"{t}.json"
    return out


STUDY = runner.Study(
    "caft", CAFTConfig, PRESETS, default_preset="cpu", title="CAFT: concept ablation fine-tuning", data=data_files,
    stages=(runner.Stage("finetune", finetune_stage, "the plain finetune (no intervention)"),
            runner.Stage("components", components_stage,
                         "generic answers, activation differences (finetuned - base), their PCA"),
            runner.Stage("cards", cards_stage, "component cards: top / bottom examples, logit-lens tokens"),
            runner.Stage("conditions", conditions_stage, "run 2 (--pick): base, plain, CAFT and random-PC "
                         "finetunes scored (run 1 stops here until a person picks)"),
            runner.Stage("summary", summary_stage, "in-domain learning kept, OOD proxy change")),
    unbound=("pick", "conditions"),  # run 2 picks after run 1 in the same directory; rows are keyed by the pick
    legacy=outcome,
    dashboard=False)  # the stages export it (after run 1's cards, and once run 2 has every condition)


def run(config: CAFTConfig | str | os.PathLike | None = None, out: str | os.PathLike | CAFTConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (rerun the same call to resume).

    Run 1 (no `config.pick`): the plain finetune, the PCA components and their cards; run 2: the
    finetunes with the picked subspace and random subspaces ablated, scored against base and plain.

    Args:
        config: every option (default `PRESETS["cpu"]`).
        out: the run directory.
        **kw: `judge=` (a `JudgeOptions`: the 0-100 judge of the judged EM rate, run 2), `preset_name=`
            (the preset recorded in the manifest), `data_dir=` (the data folder), `overwrite=`, `progress=`
            (see `runner.run`).

    Returns:
        A `runner.RunResult` (one result per stage); `outcome(result)` is {"cards", "dashboard", "rows", "todo",
        "summary"}. The deprecated `run(out, config)` returns that dict itself.
    """
    return runner.run(STUDY, config, out, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `--preset`, one option per `CAFTConfig` field, the judge options and `--out`."""
    return config_parser(CAFTConfig, description=(__doc__ or "").splitlines()[0], out="runs/caft", presets=PRESETS,
                         default_preset="cpu", groups=[(JudgeOptions, "judge", "scores the answers for the judged EM rate (run 2)")])


def config_from_argv(argv: Sequence[str] | None = None) -> tuple[CAFTConfig, JudgeOptions, argparse.Namespace]:
    """What the command line asks for: the config (the preset, then the options given), the judge
    options and the parsed namespace (`out`, ...).

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        (config, judge options, namespace).
    """
    # usage_errors=False: a bad judge spec raises its ValueError (the entry point makes it one line)
    a, cfg, (judge,) = parse_config(build_parser(), argv, CAFTConfig, presets=PRESETS, groups=[JudgeOptions],
                                    usage_errors=False)
    return cfg, judge, a


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the study and print what it wrote.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """
    cfg, judge, a = config_from_argv(argv)
    res = outcome(run(cfg, a.out, judge=judge, preset_name=a.preset))
    if cfg.pick is None:
        print(f"component cards: {res['cards']}; dashboard: {res['dashboard']}")
        print('read the cards, then rerun with --pick "LAYER:C1,C2;LAYER:C3"')
        return 0
    if res["todo"]:
        print(f"conditions still to run: {res['todo']}")
        return 0
    print(json.dumps(res["summary"], indent=2))
    print(f"dashboard: {res['dashboard']}")
    return 0
