"""The main job (`introspect-mech demo`): the whole pipeline on one model, ending in a dashboard.

Stages, on the study runner (each writes into the run directory as it goes and is recorded when done;
rerunning the same command skips the finished stages and resumes the one that was interrupted):

 1. `finetune`: finetune the model on bad medical advice and on the good-advice control (same questions);
 2. `metrics`: judge-free EM metrics for base / bad / good: paired preference on the project's 40 EM items
    (8 themes), on held-out bad-vs-good medical answers, and self-rated alignment (0-100);
 3. `directions`: the "evil" persona direction in the base model (persona-vector recipe, judge-free filter) and
    the EM direction of the bad-advice finetune (held-out bad minus good answers, teacher-forced);
 4. `probes`: linear probes by layer (evil vs helpful system prompt; bad vs good advice) and cosines;
 5. `steering`: add the persona direction to the base model (layers x alphas, random control at
    matched norm, 3 seeds) and ablate the persona / EM direction in the finetune (random control);
 6. `examples`: a few answers from each model and token-level projections;
 7. `dashboard`: the summary (every stage's notes), the manifest's end and the dashboard.

Every EM number here is the judge-free **proxy** (`evals.em.em_proxy_fn`, metric names
`PROXY_PREF` / `PROXY_DIFF`), never an EM rate and never comparable with the papers' judged
numbers; the EM direction here is the teacher-forced proxy direction (held-out bad minus good
medical answers), not the model-organisms recipe (that one is `studies.model_organisms`).
Relative reductions are computed only where the finetune's proxy shift is significant. The exact
training row ids and held-out item ids are in the manifest.

Defaults ("quick") fit the embedded SmolLM2-135M on a 2-core CPU; `--preset paper` uses the EM
paper's finetuning preset on the full datasets and larger evals (for GPU users with Qwen models).

Modules: `config` (`JobConfig`, presets, medical splits, the bound data files), `stages` (stages 1-4),
`steer` (stages 5-7), `report` (tables, the self-report floor, summary notes, warning capture).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from ...cliargs import config_parser, parse_config
from ...viz import export_dashboard
from .. import runner
from .config import DATASETS, JOB_PRESETS, PRESETS, JobConfig, data_files, medical_splits  # noqa: F401
from .report import (  # noqa: F401  (the job's helpers, importable here as before)
    SELF_REPORT_MIN_MASS, Stages, _CaptureWarnings, _ci, _table, _write_rows, self_report,
)
from .stages import directions_stage, finetune_stage, metrics_stage, probes_stage
from .steer import dashboard_stage, examples_stage, steering_stage


# ---- command line ------------------------------------------------------------------------------------
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The main job's command line: `--out`, `--preset` (quick / paper) and every `JobConfig` field.

    Args:
        prog: the program name shown in the usage line (`introspect-mech demo`).

    Returns:
        The parser (`config_from_args(ns, JobConfig, presets=JOB_PRESETS)` builds the config).
    """
    return config_parser(JobConfig, description=(__doc__ or "").splitlines()[0], out="runs/main_job",
                         presets=JOB_PRESETS, default_preset="quick", prog=prog,
                         title="job configuration (overrides the preset; quick: the embedded model on a CPU in minutes, "
                               "paper: the EM preset on full data, GPU)")


STUDY = runner.Study(
    "main-job", JobConfig, PRESETS, title="introspect_mech main job", default_preset="quick", data=data_files,
    stages=(runner.Stage("finetune", finetune_stage, "finetune on bad medical advice and on the good-advice control"),
            runner.Stage("metrics", metrics_stage, "judge-free EM metrics: paired preference (EM themes, held-out "
                         "medical), self-rated alignment"),
            runner.Stage("directions", directions_stage,
                         "persona ('evil') direction in the base model; EM direction of the finetune"),
            runner.Stage("probes", probes_stage, "linear probes by layer and cosines between directions"),
            runner.Stage("steering", steering_stage,
                         "steering: add persona to base (layers x alphas, random control); ablate in the finetune"),
            runner.Stage("examples", examples_stage,
                         "answers from each model and token-level projections on the persona direction"),
            runner.Stage("dashboard", dashboard_stage, "summary, manifest and dashboard")),
    legacy=lambda r: _dashboard(r), dashboard=False)  # the last stage exports it


def run(config: JobConfig | str | os.PathLike | None = None, out: str | os.PathLike | JobConfig | None = None,
        **kw: Any) -> Any:
    """Run the main job into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['quick']`).
        out: the run directory.
        **kw: `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult` whose `.dashboard` is the exported dashboard (`out/dashboard.html`). The deprecated
        call forms (`run(out, config)`, config fields as keywords, ...) return that path itself.
    """
    res = runner.run(STUDY, config, out, **kw)
    if isinstance(res, runner.RunResult) and "dashboard" in res.results:
        res.dashboard = _dashboard(res)
    return res


def _dashboard(res: runner.RunResult) -> Path:
    """The dashboard's path; exported again when the last stage was skipped (every call exports it, so the page
    follows the installed code)."""
    path = Path(res.results["dashboard"]["dashboard"])
    if "dashboard" in res.skipped:
        export_dashboard(res.out, path)
    return path


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the main job from the command line (`introspect-mech demo`, `python experiments/main_job.py`)
    and print the dashboard's path.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        prog: the program name shown in the usage line.

    Returns:
        The exit status (0).
    """
    ns, cfg, _ = parse_config(build_parser(prog), argv, JobConfig, presets=JOB_PRESETS)
    res = run(cfg, ns.out)
    print(f"dashboard: {Path(res.dashboard).resolve()}")
    return 0
