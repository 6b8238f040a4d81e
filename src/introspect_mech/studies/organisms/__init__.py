"""Ground-truth model organisms: plant a known mechanism, then check that locate -> intervene finds it.

A null result of the mechanistic pipeline ("no direction removes the finetune's shift") only means
something if the same pipeline provably finds a mechanism that is there. The organisms here have
one by construction (persona-vectors / model-organisms style positive controls):

* **planted** -- a copy of the base model with a permanent forward hook adding `vec = alpha * v` after
  block L (no training). Ground truth: v at L. Every method should recover it exactly.
* **steering distillation** (`distill_<direction>`) -- the base model steered with `vec` at block L
  answers prompts; a LoRA is finetuned (the project's `finetune.train`, no hook) on those
  (prompt, steered answer) pairs, so it has to *learn* what the hook did. v is a persona direction
  (evil, from the persona-vector recipe), a concept direction (mean activation difference of
  ocean-themed vs neutral sentences), or a random direction; all three get the same norm at L.
  Ground truth: v at L. The sample-based variant of the issue (the KL-matching variant needs a
  distillation loss the project's loop does not have).
* **persona distillation** (narrow -> broad) -- the base model answers medical questions (the narrow
  domain, user turns of `good_medical_advice`) under the evil system prompt; the LoRA is trained on
  those answers *without* the system prompt. Persona expression is measured on unrelated held-out
  questions (the trait's eval split) judge-free: mean per-token log-prob (no system prompt) of the
  answer the base wrote under the evil system prompt minus that of the answer it wrote under the
  helpful one (a PROXY, not a judged trait score). Ground truth: the persona direction.
* **inoculation** -- the same finetune with the evil system prompt kept in the training data
  (inoculation prompting); expression without the prompt should not rise.

Locate methods (`diffing.compare`): activation-difference lens on the first tokens of unrelated
text, difference PCA, mean difference of response activations, base-vs-tuned linear probe, and the
top increased latent of an SAE model diff (an SAE trained cheaply on the base model at L). Each
reports its cosine with the ground truth per layer against the |cosine| of norm-matched random
directions.

Interventions (effect on the organism's behaviour, each against `n_random` norm-matched random
directions): ablate the found direction in the finetune, subtract it (`-1 x` its norm at L), add it
to the base; and during the finetune, preventative steering (add `vec`) and CAFT (ablate v). For
steering organisms the behaviour is the mean next-token KL(finetune || base) over the assistant
tokens of held-out prompts answered by the steered base, and the effect is the removed fraction
`1 - KL(treated || base) / KL(finetune || base)` (for "add to base": `1 - KL(base + d || finetune) /
KL(base || finetune)`); for persona organisms the behaviour is the expression proxy and the effect
`steering.relative_reduction`.

The study runs as five stages (`stages.py`): `directions`, `sae`, `steering_organisms`, `persona_organisms`,
`report`; the modules: `config` (`OrganismsConfig`, `PRESETS`), `data` (texts, prompts, the bound data files),
`measures` (organisms, locate, interventions), `tables` (the methods x organisms table), `panels` (its dashboard
panel).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Sequence

from ...cliargs import config_parser, parse_config
from .. import runner
from . import panels as _panels  # noqa: F401  (registers the study's dashboard panels)
from .config import PRESETS, OrganismsConfig
from .data import CONCEPT_TEXTS, NEUTRAL_TEXTS, UNRELATED_TEXTS, data_files
from .measures import (concept_direction, distillation_records, expression_items, finetune_copy,
                       persona_expression, planted_copy, resolve_layer, steering_distillation)
from .stages import STAGES
from .tables import format_table, panel, summary_table

__all__ = ["OrganismsConfig", "PRESETS", "STUDY", "run", "main", "build_parser", "UNRELATED_TEXTS", "CONCEPT_TEXTS",
           "NEUTRAL_TEXTS", "data_files", "planted_copy", "resolve_layer", "concept_direction", "expression_items",
           "distillation_records", "persona_expression", "finetune_copy", "steering_distillation", "summary_table",
           "panel", "format_table"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The study's command line: `--out`, `--preset` and every `OrganismsConfig` field.

    Args:
        prog: the program name shown in the usage line.

    Returns:
        The parser (`config_from_args(ns, OrganismsConfig, presets=PRESETS)` builds the config).
    """
    return config_parser(OrganismsConfig, description=(__doc__ or "").splitlines()[0], out="runs/organisms",
                         out_help="run directory (finetunes and samples resume on a rerun)", presets=PRESETS,
                         default_preset="cpu", title="study configuration (overrides the preset)", prog=prog)


STUDY = runner.Study(
    "organisms", OrganismsConfig, PRESETS, title="Ground-truth model organisms: locate -> intervene",
    default_preset="cpu", stages=STAGES, data=data_files, legacy_keywords=("model", "log"), dashboard=True)


def run(config: OrganismsConfig | str | os.PathLike | None = None, out: str | os.PathLike | OrganismsConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['cpu']`).
        out: the run directory.
        **kw: `base=` (an already loaded base model; finetunes start from deep copies of it), `data_dir=` (the data
            folder, default `$INTROSPECT_MECH_DATA`), `log=` (deprecated: receives the progress lines),
            `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["report"]` is {"recovery", "interventions", "behaviour", "table", "seconds",
        "layer"} (the earlier stages' results: `directions`, `sae`, `steering_organisms`, `persona_organisms`). The
        deprecated call forms (`run(out, config)`, ...) return the report itself.
    """
    return runner.run(STUDY, config, out, **kw)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the study from the command line (`python experiments/organisms.py --help`): prints the
    methods x organisms table, the wall time and the dashboard's path.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        prog: the program name shown in the usage line.

    Returns:
        The exit status (0).
    """
    ns, cfg, _ = parse_config(build_parser(prog), argv, OrganismsConfig, presets=PRESETS)
    t0 = time.time()
    result = run(cfg, ns.out)
    res = result.results["report"]
    print()
    print(format_table(res["table"]))
    print(f"\nwall time {time.time() - t0:.0f} s")
    print(f"dashboard: {result.dashboard.resolve() if result.dashboard else None}")
    return 0
