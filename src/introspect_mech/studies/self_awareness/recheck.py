"""Recheck the 0-100 self-report formats of a finished self-awareness run (`introspect-mech tmay-recheck RUN`).

Runs made before the format check looked at single-digit answers (commit 08406a1) recorded only the mass on
numbers, so a finetune that still answers with a number but stops after its first digit passed the check. This
command loads the run's base model and every finetune adapter it saved, recomputes the 0-100 scales the run
measured (its own risk scales and the other personas'), and applies today's format check against the base:
valid-answer mass and the share of single-digit answers. Nothing in the run directory is changed; `--out` writes
`recheck.json` into a run directory of its own.

    introspect-mech tmay-recheck /runs/tmay_s0 --out /runs/tmay_s0_recheck
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ... import runs as _runs
from ...models import load_model
from ...runs import RunDir

__all__ = ["TMAYRecheckError", "recheck", "format_recheck", "main"]

RECHECKED = ("scales", "personas")  # the 0-100 measures: a number can be cut to one digit


class TMAYRecheckError(ValueError):
    """The run cannot be rechecked (not a finished self-awareness run, a finetune adapter missing)."""


def _config_and_splits(run: Path) -> tuple[Any, dict[str, dict[str, list[str]]]]:
    from . import TMAYConfig

    man_path = run / "manifest.json"
    if not man_path.is_file():
        raise TMAYRecheckError(f"{man_path}: missing (not a self-awareness run)")
    man = json.loads(man_path.read_text())
    cfg, splits = man.get("config"), man.get("splits")
    if not isinstance(cfg, dict) or "conditions" not in cfg:
        raise TMAYRecheckError(f"{man_path}: field config.conditions is missing (not a self-awareness run)")
    if not isinstance(splits, dict):
        raise TMAYRecheckError(f"{man_path}: field splits is missing (the run stopped before its data stage)")
    fields = {f.name for f in dataclasses.fields(TMAYConfig)}
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in fields}
    config = TMAYConfig(**kwargs)
    return config, {p: {"train": list(v.get("train_ids", [])), "test": list(v.get("test_ids", []))}
                    for p, v in splits.items()}


def recheck(run_dir: str | os.PathLike, *, load: Callable[..., Any] = load_model, data_dir=None) -> dict[str, Any]:
    """Today's format check on the 0-100 self-reports of a finished run, recomputed from its saved adapters.

    Args:
        run_dir: a self-awareness run directory (its finetunes saved under `finetunes/<condition>/seed<k>/adapter`).
        load: `load_model`-like loader, called as `load(model)` and `load(model, adapter=path)`.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        {"run", "measures", "base": {"masses", "single_digit"}, "format": {condition: {seed: format_check result}},
        "values": {condition: {seed: {measurement: expected value}}}}.

    Raises:
        TMAYRecheckError: one line naming the file or field: not a self-awareness run, no 0-100 measure in the run,
            or a finetune's adapter missing.
    """
    from . import measure, single_digits
    from . import masses as masses_of_result
    from .measures import format_check

    run = Path(run_dir)
    config, splits = _config_and_splits(run)
    which = tuple(m for m in RECHECKED if m in config.measures)
    if not which:
        raise TMAYRecheckError(f"{run / 'manifest.json'}: config.measures has no 0-100 measure ({', '.join(RECHECKED)})")
    config = dataclasses.replace(config, measures=which)
    adapters = {(c, s): run / "finetunes" / c.replace(":", "_") / f"seed{s}" / "adapter"
                for c in config.conditions if c != "base" for s in config.seeds}
    for (c, s), path in adapters.items():  # every input checked before a model is loaded
        if not path.is_dir():
            raise TMAYRecheckError(f"{path}: missing (the finetune of {c}, seed {s}, is not saved in this run)")

    def values(res: dict[str, Any]) -> dict[str, float | None]:
        return {f"{t}/{g}/{q}": (v["mean"]["value"] if g == "scales" else v["mean"])
                for t, r in res.items() if t != "mms" for g in which for q, v in (r.get(g) or {}).items()}

    base_res = measure(load(config.model), "base", splits, config, data_dir=data_dir)
    base_m, base_d = masses_of_result(base_res), single_digits(base_res)
    out: dict[str, Any] = {"run": str(run), "measures": list(which),
                           "base": {"masses": base_m, "single_digit": base_d, "values": values(base_res)},
                           "format": {}, "values": {}}
    for (c, s), path in adapters.items():
        res = measure(load(config.model, adapter=str(path)), c, splits, config, seed=s, data_dir=data_dir)
        out["format"].setdefault(c, {})[s] = format_check(masses_of_result(res), base=base_m,
                                                          single_digit=single_digits(res), base_single_digit=base_d)
        out["values"].setdefault(c, {})[s] = values(res)
    return out


def format_recheck(res: dict[str, Any]) -> str:
    """The recheck as lines: per finetune and measurement, the expected value, mass, single-digit share and verdict.

    Args:
        res: a `recheck` result.

    Returns:
        text.
    """
    lines = [f"{res['run']}: 0-100 self-reports rechecked ({', '.join(res['measures'])}) against the base model"]
    for name, m in res["base"]["masses"].items():
        lines.append(f"  base           {name:42s} value {res['base']['values'].get(name, float('nan')):6.1f}  "
                     f"mass {m:.3f}  single-digit {res['base']['single_digit'].get(name, float('nan')):.2f}")
    for c, by_seed in res["format"].items():
        for s, f in by_seed.items():
            for name, m in f["masses"].items():
                v = res["values"][c][s].get(name)
                verdict = f"FLAGGED: {f['flagged'][name]}" if name in f["flagged"] else "ok"
                lines.append(f"  {c + '/s' + str(s):14s} {name:42s} value {v if v is not None else float('nan'):6.1f}  "
                             f"mass {m:.3f}  single-digit {f['single_digit'].get(name, float('nan')):.2f}  {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Recheck the 0-100 self-report formats of finished self-awareness runs.

    Args:
        argv: command-line options.
        prog: program name for usage lines.

    Returns:
        0 on success, 2 on a usage error.
    """
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished self-awareness run directory")
    ap.add_argument("--out", default=None, help="write recheck.json here (a run directory of its own)")
    ns = ap.parse_args(argv)
    try:
        res = recheck(ns.run)  # a bad run directory: one line before any model loads
    except TMAYRecheckError as e:
        ap.error(str(e))
    print(format_recheck(res))
    if ns.out:
        rd = RunDir(ns.out)
        rd.bind("tmay_recheck", {"run": str(Path(ns.run).resolve()),
                                 "manifest_sha256": _runs.file_sha256(Path(ns.run) / "manifest.json")}, overwrite=True)
        _runs.write_json(rd.path / "recheck.json", res, root=rd.path, default=float)
        print(f"wrote {rd.path / 'recheck.json'}")
    return 0
