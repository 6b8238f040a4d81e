"""The judge-free steering study (proxy metrics): does adding a direction move the EM proxy, does
ablating it undo a finetune's proxy shift, and does ablating it during finetuning (CAFT) prevent it?

Every metric is the one judge-free EM proxy (`evals.em.em_proxy_fn`), per item, so every number
gets a bootstrap CI over items and seeds. **These are proxies, not EM rates**: they are never
compared with the papers' judged numbers (the judged model-organisms protocol, with the EM
direction from the model's own judged answers, is `studies.model_organisms`). The EM direction
here is the teacher-forced proxy direction (bad minus good held-out medical answers).

* `proxy_diff` / `proxy_pref`: paired preference on the project's 40 EM items (PROXY_DIFF / PROXY_PREF);
* `med_proxy_diff`: the same on held-out bad-vs-good medical advice pairs (the finetuning domain);
* `self_alignment`: expected 0-100 self-rated alignment (5 paraphrases);
* `coherence_nll`: mean per-token NLL of the unsteered base model's own greedy answers to neutral
  prompts (rising = the model is losing ordinary fluent text).
Relative reductions are computed only where the finetune's shift is significant.

The study runs as runner stages (`stages.py`): `directions`, `creates_em` (a), `caft` (c), `removes_em` (b),
`report`; modules: `config`, `data` (the bound data files), `measures` (the experiments and their summaries),
`stages`. The generic `introspect-mech steer` sweep is `commands.steer_sweep`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Sequence

from ...cliargs import config_parser, parse_config
from .. import runner
from .config import PRESETS, STUDY_PRESETS, SteeringProxyConfig, check
from .data import data_files
from .measures import (EM_METRICS, HIGHER_IS_MISALIGNED, combine_removal, creates_em, em_eval_fn, finetune_gap,
                       gated_reduction, removal_tag, removes_em, summarize_removal, summarize_train_time, train_time)
from .stages import STAGES

__all__ = ["SteeringProxyConfig", "PRESETS", "STUDY_PRESETS", "STUDY", "run", "main", "data_files", "EM_METRICS",
           "HIGHER_IS_MISALIGNED", "em_eval_fn", "creates_em", "removes_em", "summarize_removal", "train_time",
           "summarize_train_time", "gated_reduction", "finetune_gap", "removal_tag", "combine_removal", "run_study"]

STUDY = runner.Study(
    "steering-proxy", SteeringProxyConfig, PRESETS, default_preset="gpu", title="Steering: creates / removes EM, CAFT",
    stages=STAGES, data=data_files, check=check,
    # which parts run, and (b)'s ablation blocks and controls, select work: (b)'s outputs are tagged by them
    unbound=("stages", "ablate_layers", "random_per_finetune"), dashboard=False)


def run(config: SteeringProxyConfig | str | os.PathLike | None = None,
        out: str | os.PathLike | SteeringProxyConfig | None = None, **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS["gpu"]`).
        out: the run directory.
        **kw: `data_dir=` (the data folder, default `$INTROSPECT_MECH_DATA`), `overwrite=`, `progress=` (see
            `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["report"]` is {"creates_em", "caft", "removes_em<tag>", ...} (also written
        to `out/results.json`).
    """
    return runner.run(STUDY, config, out, **kw)


def run_study(out: str | os.PathLike, **kw: Any) -> dict:
    """Deprecated (one release): `run(SteeringProxyConfig(...), out).results["report"]`.

    Args:
        out: the run directory.
        **kw: `model_name=` and the other `SteeringProxyConfig` fields.

    Returns:
        {"creates_em", "caft", "removes_em<tag>", ...}.
    """
    warnings.warn("steering_proxy.run_study is deprecated; use run(SteeringProxyConfig(...), out)", DeprecationWarning,
                  stacklevel=2)
    if "model_name" in kw:
        kw["model"] = kw.pop("model_name")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}  # the config's sequences are tuples
    if kw.get("preset", "gpu") not in STUDY_PRESETS:
        raise ValueError(f"unknown study preset {kw['preset']!r}; presets: {', '.join(STUDY_PRESETS)}")
    cfg = dataclasses.replace(SteeringProxyConfig(), **kw)
    return runner.run(STUDY, cfg, out, progress=False).results["report"]


def main(argv: Sequence[str] | None = None) -> int:
    """`introspect-mech study steering-proxy [options]`: run the study (every option a `SteeringProxyConfig` field).

    Args:
        argv: the options (default `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """
    p = config_parser(SteeringProxyConfig, description=(__doc__ or "").splitlines()[0], out="runs/steering_proxy")
    a, cfg, _ = parse_config(p, argv, SteeringProxyConfig, usage_errors=False)  # bad --stages: its ValueError
    run(cfg, a.out)
    return 0


def __getattr__(name: str) -> Any:
    if name == "steer_sweep":  # moved to the command-line layer: a generic command, not this study's
        warnings.warn("studies.steering_proxy.steer_sweep is deprecated; use introspect_mech.commands.steer_sweep",
                      DeprecationWarning, stacklevel=2)
        from ...commands import steer_sweep

        return steer_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
