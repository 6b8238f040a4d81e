"""Persona vectors (Chen et al. 2025, safety-research/persona_vectors) as the paper ran them.

Steps, each a function here over the library's pieces:

1. `extract`: the persona direction from the trait file's pos/neg system prompts, judged with the
   trait file's `eval_prompt` and upstream's coherence prompt, filtered by the upstream rule
   (pos >= 50, neg < 50, both coherent >= 50), response-averaged activations, per-layer mean
   difference (`common.persona.persona_data`).
2. `trait_expression`: the trait score (and coherence) of a model's answers to the trait's
   *eval-split* questions, optionally while steering; upstream's `eval_persona.py`.
3. `select_layer`: steer at each candidate layer with the same coefficient and pick the layer with
   the largest trait expression among those whose answers stay coherent (mean coherence >= 50).
4. `finetune_and_express`: finetune (optionally with preventative steering, `steering.preventative_steering`)
   and measure trait expression after.
5. `screen_dataset`: projection-difference data screening (`common.persona.projection_difference`).
6. `shift_correlation`: the finetuning shift -- mean activation of the finetuned model minus the
   base model at the last prompt token of the eval prompts, projected on the persona direction --
   against trait expression across finetunes / checkpoints (paper: r = 0.76-0.97).

Steering follows upstream's `ActivationSteerer(positions="response")`, which adds `coef * v` at the
last position of every forward: the last prompt token in the prefill and each generated token. Our
mode for that is `positions="last_prompt_and_response"` (`UPSTREAM_POSITIONS`); `v` is the raw mean
difference (`scale="norm"`), as upstream adds the unnormalised vector. Upstream layer `L` indexes
`hidden_states` (0 = embeddings): it is our block `L - 1`.

`run(PRESETS["cpu"], out)` runs the steps in order as the paper did, on one trait (a `PVConfig` holds
every option), as runner stages (`stages.py`: extract, probes, select, screen, finetune, shift, report; a rerun
skips the finished ones); `main(argv)` is the same as a command (`introspect-mech study persona-vectors --help`).
Modules: `config` (`PVConfig`, `PRESETS`), `data` (the bound data files), `measures` (the steps), `stages`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...cliargs import config_parser, parse_config
from ...evals.judge_spec import JudgeOptions
from ...models import load_model
from ...runs import RunDir
from .. import runner
from .config import COHERENCE_MIN, PAPER_SHIFT_R, PRESETS, STAGES, UPSTREAM_POSITIONS, PVConfig, Stage
from .data import data_files
from .measures import (_steer_ctx as _steer_ctx, extract, finetune_and_express, mean_projection, pearson, pick_layer, screen_dataset,
                       select_layer, shift_correlation, shift_correlation_note, steering_layer_plan, summarize_scores,
                       trait_expression)
from .stages import STAGES as RUNNER_STAGES

__all__ = ["PVConfig", "PRESETS", "STAGES", "Stage", "UPSTREAM_POSITIONS", "COHERENCE_MIN", "PAPER_SHIFT_R", "STUDY",
           "run", "main", "parse_args", "data_files", "extract", "trait_expression", "summarize_scores", "pick_layer",
           "select_layer", "finetune_and_express", "screen_dataset", "mean_projection", "pearson", "shift_correlation",
           "shift_correlation_note", "steering_layer_plan"]


def parse_args(argv: Sequence[str] | None = None) -> tuple[PVConfig, JudgeOptions, argparse.Namespace]:
    """The configuration, judge options and namespace (`out`, `preset`) a command line asks for.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        (config: the preset with the options given, judge options, the parsed namespace).
    """
    p = config_parser(PVConfig, description=(__doc__ or "").splitlines()[0], out="runs/persona_vectors", presets=PRESETS,
                      default_preset="cpu", exclude=("reference_judge",),
                      title="persona-vectors configuration (overrides the preset)",
                      groups=[(JudgeOptions, "judge", "with --judge none (the default), the judge-free proxies are reported, labelled as such")])
    ns, cfg, (judge,) = parse_config(p, argv, PVConfig, presets=PRESETS, exclude=("reference_judge",),
                                     groups=[JudgeOptions])
    return cfg, judge, ns


STUDY = runner.Study(
    "persona-vectors", PVConfig, PRESETS, title="Persona vectors", default_preset="cpu", stages=RUNNER_STAGES,
    data=data_files, unbound=("stages",), resources=("model",), dashboard=False)


def run(config: PVConfig | str | os.PathLike | None = None, out: str | os.PathLike | PVConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['cpu']`).
        out: the run directory.
        **kw: `judge=` (a 0-100 judge, or None for the judge-free proxies), `model=` (the loaded base model),
            `preset_name=` (recorded in the manifest), `data_dir=` (the data folder, default
            `$INTROSPECT_MECH_DATA`), `echo=` (receives each result line; default print with `progress`),
            `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["report"]` is {"summary", "dashboard"} (each earlier stage's result holds
        its summary lines, `notes`). The deprecated call forms (`run(out, config)`, ...) return the report itself.
    """
    return runner.run(STUDY, config, out, **kw)


def _persona_vectors(out: str | os.PathLike, cfg: PVConfig, *, judge: Any = None, model: Any = None,
                     preset: str | None = None, echo: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """The whole protocol into `out` (`run(cfg, out, ...)`'s report), with each result line passed to `echo`.

    Args:
        out: the run directory.
        cfg: the configuration.
        judge: a 0-100 judge, or None for the judge-free proxies.
        model: the loaded base model (default: `load_model(cfg.model)` in float32).
        preset: the name of the preset `cfg` came from, recorded in the manifest.
        echo: called with each result line as it is measured (None: silent).

    Returns:
        {"summary": the rows of summary.jsonl, "dashboard": its path}.
    """
    return runner.run(STUDY, cfg, out, judge=judge, model=model, preset_name=preset, echo=echo,
                      progress=False).results["report"]


def main(argv: Sequence[str] | None = None) -> int:
    """`introspect-mech study persona-vectors [options]`: run the study and print its results.

    Args:
        argv: the arguments (default: sys.argv[1:]); `--help` lists every option.

    Returns:
        0 on success.
    """
    cfg, judge_options, ns = parse_args(argv)
    RunDir(ns.out)
    model = load_model(cfg.model, dtype=torch.float32, device=cfg.device)
    judge = judge_options.build(model=model if cfg.model is None else None, device=cfg.device)
    res = run(cfg, ns.out, judge=judge, model=model, preset_name=ns.preset).results["report"]
    print(f"dashboard: {Path(res['dashboard']).resolve()}")
    return 0
