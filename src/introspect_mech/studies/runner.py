"""The one runner every study runs on: a `Config` dataclass with `PRESETS` and an ordered list of stages.

    STUDY = Study("caft", CAFTConfig, PRESETS, stages=(Stage("differences", _differences), ...))

    def run(config: CAFTConfig | None = None, out: str | Path | None = None, **resources) -> RunResult:
        return runner.run(STUDY, config, out, **resources)

`runner.run(study, config, out)`:

1. binds the run directory (`runs.RunDir.bind("study", ...)`) to everything that decides the rows: the
   study's name, the whole config, the code version, the content hashes of the data files the study
   declares and the judge (its spec and, when it carries one, its validation summary). A rerun with one
   config field changed is refused by a one-line `RunConfigError` naming the field (`overwrite=True`
   starts clean instead). A stage that loads a model binds its content fingerprint and adapter hash too
   (`ctx.bind_model`), so the same config with other weights under the same name is refused as well;
2. seeds `random`, numpy and torch from `config.seed` (0 without one) before every stage, so a stage
   resumed in a new process sees the same seed as in an uninterrupted run;
3. runs the stages in order, printing `[k/N] name` with the elapsed time; each finished stage is recorded
   in `stages.jsonl` with its (JSON) result, and a rerun skips the recorded stages and hands their stored
   results to the later ones (`ctx.results[name]`). A process killed inside a stage redoes only that
   stage, which itself resumes from its own keyed logs (`ctx.log(name, key_fields)`);
4. writes typed rows (`viz.rows`, one dataclass per dashboard panel) with `ctx.write(row)` through the run
   directory's writer (`runs.JsonlLog`);
5. prints the summary (`summary.jsonl`, or the study's own `summary(ctx)` text) and exports the
   dashboard (`dashboard.html`) when the run holds any panel's rows.

Old call forms (`run(out, config)`, a `preset=` keyword, config fields as keywords) still work for one
release with a `DeprecationWarning`, and then return what the study returned before (`Study.legacy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..data.records import DataError
from ..evals.judge_validation import validation_status
from ..runs import JsonlLog, RunConfigError, RunDir, file_sha256, model_config
from ..viz.dashboard import export_dashboard, panels
from ..viz.rows import PanelRow, SummaryRow

__all__ = ["Stage", "Study", "Context", "RunResult", "NotDone", "run", "STAGES_FILE", "RunConfigError", "code_version",
           "judge_binding", "resolve_call"]

STAGES_FILE = "stages.jsonl"
BINDING = "study"


@dataclass(frozen=True)
class Stage:
    """One named step of a study.

    Args:
        name: a short identifier (`[a-z_]+`), unique within the study; recorded in `stages.jsonl`.
        fn: `fn(ctx) -> result`; the result (a JSON-serialisable dict, or None) is stored when the stage
            finishes and given to later stages as `ctx.results[name]`, also after a resume.
        about: one line shown in the progress header.
    """

    name: str
    fn: Callable[[Context], Any]
    about: str = ""


@dataclass(frozen=True)
class NotDone:
    """What a stage returns when it stopped short on purpose (e.g. CAFT waits for a person's picks): the
    stage is not recorded as done, the later stages do not run, and a rerun runs it again.

    Args:
        value: the stage's partial result (handed back as its result for this call).
    """

    value: Any = None


@dataclass(frozen=True)
class Study:
    """A paper's protocol as data: its config class, presets and ordered stages.

    Args:
        name: the study's name (`introspect-mech study NAME`).
        config: the config dataclass.
        presets: name -> config instance.
        stages: the stages, in order.
        title: the dashboard's title (default: the name).
        default_preset: the preset `run(None, out)` uses (default: the class defaults).
        data: `data(config, resources) -> {name: path}`, the data files the study reads (`resources`: the
            `run` keywords, e.g. `data_dir=`); their content hashes are bound as `data_sha256.<name>`, so a
            rerun on a changed file is refused naming it. A file that is missing is a `DataError` before any work.
        summary: `summary(ctx) -> str`, the text printed at the end (default: the summary rows).
        legacy: `legacy(result) -> old return value` for the deprecated call forms (default: the last
            stage's result).
        dashboard: export `dashboard.html` at the end when any panel has rows.
        unbound: config fields left out of the binding because they select work rather than decide rows
            (e.g. CAFT's `pick`, whose rows are keyed by the pick); their values key the stage records
            instead, so a rerun with another value runs the stages again (each resuming from its logs).
        resources: keywords that are always resources handed to the stages, even where a config field has the
            same name (e.g. `model=` a loaded model, beside the config's `model` name).
        legacy_keywords: keywords only the old `run` took (e.g. `log=`): a call with one is a deprecated form.
        check: `check(config)` raises a one-line `ValueError` for a config the study cannot run, before
            the run directory is touched.
    """

    name: str
    config: type
    presets: Mapping[str, Any]
    stages: tuple[Stage, ...]
    title: str = ""
    default_preset: str | None = None
    data: Callable[[Any, Mapping[str, Any]], Mapping[str, str | os.PathLike]] | None = None
    summary: Callable[[Context], str] | None = None
    legacy: Callable[[RunResult], Any] | None = None
    dashboard: bool = True
    unbound: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    legacy_keywords: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"study {self.name!r}: stage names must be non-empty and unique, got {names}")
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"study {self.name!r}: config must be a dataclass, got {self.config!r}")
        if odd := set(self.unbound) - {f.name for f in dataclasses.fields(self.config)}:
            raise ValueError(f"study {self.name!r}: unbound names no config field: {sorted(odd)}")

    def default_config(self) -> Any:
        """The default preset's config (or the class defaults)."""
        return self.presets[self.default_preset] if self.default_preset else self.config()


@dataclass
class RunResult:
    """What `run` returns.

    Args:
        out: the run directory.
        results: `{stage name: its result}` (stored results for stages skipped on resume).
        summary: the summary rows written (`summary.jsonl`).
        dashboard: the exported dashboard, or None.
        skipped: names of the stages a resume skipped.
    """

    out: Path
    results: dict[str, Any] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    dashboard: Path | None = None
    skipped: list[str] = field(default_factory=list)


class Context:
    """What a stage sees: the config, the run directory, earlier stages' results and the caller's resources.

    Args:
        study: the study.
        config: the run's config.
        run_dir: the bound run directory.
        resources: objects the caller passed to `run` (e.g. `model=`, `judge=`), by name.
        progress: print progress lines.
    """

    def __init__(self, study: Study, config: Any, run_dir: RunDir, resources: Mapping[str, Any],
                 progress: bool = True):
        self.study, self.config, self.run_dir = study, config, run_dir
        self.resources: dict[str, Any] = dict(resources)
        self.results: dict[str, Any] = {}
        self.progress = progress
        self._logs: dict[str, JsonlLog] = {}

    @property
    def out(self) -> Path:
        """The run directory's path."""
        return self.run_dir.path

    def echo(self, msg: str) -> None:
        """Print a progress line (unless `progress=False`).

        Args:
            msg: the line.
        """
        if self.progress:
            print(msg, flush=True)

    def log(self, name: str, key_fields: Sequence[str] = ()) -> JsonlLog:
        """A resumable JSONL log in the run directory (one object per file name).

        Args:
            name: file name relative to the run directory.
            key_fields: row fields identifying a unit of work (`done_keys()` skips them on resume).

        Returns:
            The log.
        """
        if name not in self._logs:
            self._logs[name] = self.run_dir.log(name, tuple(key_fields))
        return self._logs[name]

    def write(self, *rows: PanelRow) -> None:
        """Append typed panel rows to their panels' files.

        Args:
            *rows: `viz.rows` instances.
        """
        for row in rows:
            if not isinstance(row, PanelRow):
                raise TypeError(f"ctx.write takes viz.rows dataclasses, got {type(row).__name__}")
            self.log(row.file()).append(row.as_row())

    def bind_model(self, key: str, model: Any) -> None:
        """Bind a loaded model's content (weights fingerprint, adapter hash) into the run directory.

        Args:
            key: which model of the study ("base", "finetuned", ...).
            model: a `LoadedModel`.

        Raises:
            RunConfigError: the directory holds results made with another model under this key.
        """
        self.run_dir.bind(f"model.{key}", model_config(model))


# ---- binding pieces ---------------------------------------------------------------------------
def code_version() -> str:
    """The installed introspect_mech version (bound, so results of another release are not mixed)."""
    try:
        return metadata.version("introspect_mech")
    except metadata.PackageNotFoundError:  # pragma: no cover - the package is always installed here
        return "unknown"


def judge_binding(judge: Any) -> dict[str, Any] | None:
    """What identifies a judge in a binding: its spec or description, and its validation summary when it has one.

    Args:
        judge: None, a `JudgeOptions`, or a judge object (its `describe()` is used when present).

    Returns:
        None for no judge, else `{"judge": spec or description, "validation": {"validated", "passes",
        "fingerprint"} of its saved shared-set validation (`evals.judge_validation.validation_status`), or None
        for a judge without a fingerprint}`.
    """
    if judge is None or getattr(judge, "kind", None) == "none":
        return None
    if hasattr(judge, "judge") and isinstance(judge.judge, str):  # JudgeOptions: the spec decides rows
        return {"judge": judge.judge, "validation": None}
    desc = judge.describe() if callable(getattr(judge, "describe", None)) else type(judge).__name__
    validation = None
    if hasattr(judge, "fingerprint"):  # a built judge: its saved shared-set validation (evals.judge_validation)
        st = validation_status(judge)
        validation = {k: st[k] for k in ("validated", "passes", "fingerprint")}
    return {"judge": desc, "validation": validation}


def _data_hashes(study: Study, config: Any, resources: Mapping[str, Any]) -> dict[str, str]:
    if study.data is None:
        return {}
    out = {}
    for name, path in sorted(study.data(config, resources).items()):
        if not Path(path).is_file():
            raise DataError(str(path), None, name, "data file not found")
        out[name] = file_sha256(path)
    return out


def _seed(config: Any) -> None:
    s = int(getattr(config, "seed", 0) or 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ---- the call forms -----------------------------------------------------------------------------
def resolve_call(study: Study, config: Any, out: Any, kwargs: dict[str, Any]) -> tuple[Any, Path, dict[str, Any], bool]:
    """Turn a study's `run(...)` arguments into (config, out, other keywords, legacy?).

    The deprecated forms -- `run(out, config)`, `run(out)`, `preset="name"`, config fields as keywords --
    warn once with a `DeprecationWarning` and are translated.

    Args:
        study: the study.
        config: the first positional argument (a config, or an old-style `out`).
        out: the second (a path, or an old-style config).
        kwargs: the remaining keywords (config fields and `preset` are taken out).

    Returns:
        (config, out path, remaining keywords, whether a deprecated form was used).
    """
    legacy: list[str] = [f"{k}=" for k in study.legacy_keywords if k in kwargs]
    if isinstance(config, (str, os.PathLike)) and not isinstance(out, (str, os.PathLike)):
        config, out = out, config
        legacy.append("run(out, config) -> run(config, out)")
    preset = kwargs.pop("preset", None)
    if preset is not None:
        legacy.append("preset= -> run(PRESETS[name], out)")
        if preset not in study.presets:
            raise ValueError(f"{study.name}: unknown preset {preset!r} (choose from {', '.join(study.presets)})")
        if config is None:
            config = study.presets[preset]
    if config is None:
        config = study.default_config()
    if not isinstance(config, study.config):
        raise TypeError(f"{study.name}: config must be a {study.config.__name__}, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(study.config)}
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in names and k not in study.resources}
    if fields:
        legacy.append(f"config fields as keywords ({', '.join(sorted(fields))}) -> dataclasses.replace(config, ...)")
        config = dataclasses.replace(config, **fields)  # type: ignore[type-var]
    if out is None:
        raise TypeError(f"{study.name}: run(config, out) needs `out`, the run directory")
    if legacy:
        warnings.warn(f"{study.name}.run: deprecated call form ({'; '.join(legacy)}); "
                      "it will be removed in the next release", DeprecationWarning, stacklevel=3)
    return config, Path(out), kwargs, bool(legacy)


# ---- the runner ---------------------------------------------------------------------------------
def run(study: Study, config: Any = None, out: Any = None, *, judge: Any = None,
        overwrite: bool = False, progress: bool = True, redo: str | None = None, **resources: Any) -> Any:
    """Run `study` with `config` into the run directory `out` (rerun the same call to resume).

    Args:
        study: the study.
        config: an instance of `study.config` (None: the default preset).
        out: the run directory (str or path).
        judge: the judge (`JudgeOptions` or a judge object), bound and handed to stages as `ctx.resources["judge"]`.
        overwrite: a different config on disk: delete the directory's results and start clean instead of refusing.
        progress: print stage headers and the summary.
        redo: run this recorded stage and every later one again (e.g. after a fix to that stage's code), each
            resuming from its own logs and files as a killed run would; the new records replace the old ones.
        **resources: objects handed to the stages (`ctx.resources`), e.g. a preloaded `model=`; a stage
            that uses a model binds its fingerprint.

    Returns:
        A `RunResult`; with a deprecated call form, what the study returned before (`Study.legacy`).

    Raises:
        RunConfigError: the directory holds results of another config (one line naming the fields).
        ValueError: `redo` names no stage of the study.
    """
    names = [s.name for s in study.stages]
    if redo is not None and redo not in names:
        raise ValueError(f"redo={redo!r}: {study.name} has the stages {names}")
    config, path, resources, legacy = resolve_call(study, config, out, resources)
    if study.check is not None:
        study.check(config)
    run_dir = RunDir(path)
    fields = _json(dataclasses.asdict(config))
    variant = {k: fields.pop(k) for k in study.unbound}
    # names no study writes into the manifest itself (a bound name cannot be rewritten there)
    binding = {"study_name": study.name, "study_config": fields, "code_version": code_version(),
               "data_sha256": _data_hashes(study, config, resources), "judge_binding": judge_binding(judge)}
    run_dir.bind(BINDING, binding, overwrite=overwrite)
    ctx = Context(study, config, run_dir, {"judge": judge, **resources}, progress)
    stages_log = ctx.log(STAGES_FILE, ("stage", "variant"))
    done = {r["stage"]: r.get("result") for r in stages_log.rows() if r.get("variant", {}) == variant}
    if redo is not None:  # the named stage and the later ones run again (their newer records win when read back)
        done = {k: v for k, v in done.items() if k in names[:names.index(redo)]}
    result = RunResult(path)
    t0 = time.perf_counter()
    n = len(study.stages)
    for k, stage in enumerate(study.stages, 1):
        if stage.name in done:
            ctx.results[stage.name] = done[stage.name]
            result.skipped.append(stage.name)
            ctx.echo(f"[{k}/{n}] {stage.name}: done in an earlier run, skipped")
            continue
        ctx.echo(f"\n[{k}/{n}] {stage.name}{': ' + stage.about if stage.about else ''}  "
                 f"(t={time.perf_counter() - t0:.0f}s)")
        _seed(config)
        t = time.perf_counter()
        value = stage.fn(ctx)
        if isinstance(value, NotDone):
            ctx.results[stage.name] = value.value
            ctx.echo(f"[{k}/{n}] {stage.name}: stopped short on purpose; a rerun continues here")
            break
        ctx.results[stage.name] = value
        stages_log.append({"stage": stage.name, "variant": variant, "result": _json(value),
                           "seconds": round(time.perf_counter() - t, 2)})
    result.results = ctx.results
    summary_file = path / SummaryRow.file()
    result.summary = ctx.log(SummaryRow.file()).read() if summary_file.exists() else []
    if progress:
        text = study.summary(ctx) if study.summary is not None else format_summary(result.summary)
        if text:
            print("\n" + text, flush=True)
    if study.dashboard and _has_panels(path):
        result.dashboard = export_dashboard(path, title=study.title or study.name)
        ctx.echo(f"dashboard: {result.dashboard}")
    if legacy:
        return study.legacy(result) if study.legacy is not None else list(result.results.values())[-1]
    return result


def _has_panels(path: Path) -> bool:
    return any((path / p.file).is_file() for p in panels() if p.key != "training") or any(path.rglob("train_log.jsonl"))


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary rows as aligned text lines (`name  value [lo, hi]  note`).

    Args:
        rows: `summary.jsonl` rows.

    Returns:
        The text ("" for no rows).
    """
    if not rows:
        return ""
    width = max(len(str(r.get("name", ""))) for r in rows)
    lines = []
    for r in rows:
        v = r.get("value")
        s = f"{v:.4g}" if isinstance(v, float) else str(v)
        if r.get("ci_lo") is not None and r.get("ci_hi") is not None:
            s += f" [{r['ci_lo']:.4g}, {r['ci_hi']:.4g}]"
        lines.append(f"  {str(r.get('name', '')):{width}s}  {s}{'  ' + str(r['note']) if r.get('note') else ''}")
    return "summary:\n" + "\n".join(lines)
