"""Tell me about yourself over finetune seeds run separately (`introspect-mech tmay-seeds RUN RUN ...`).

`introspect-mech study self-awareness --seeds 0 1 2` computes the seed-level interval itself; on a CPU the seeds
often run as separate runs (`--seeds 0`, `--seeds 1`, ...), one per session. This command pools finished runs
that differ only in `seeds`: per comparison (e.g. risky − safe) and measure, the per-seed differences and a
Student-t interval over them (unit: finetune seed; paired by seed, since both conditions of a seed share the data
seed and the training split). A self-report measure whose answer format collapsed in any run (the study's
format check: valid-answer mass, answers cut to a single digit, answers that follow the option position) is
**withheld** for every pooled estimate that would use it: a collapsed format is not a report. So is a measure of a
run made before the check covered it.

    introspect-mech tmay-seeds /runs/tmay_s0 /runs/tmay_s1 /runs/tmay_s2 --out /runs/tmay_seeds
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ... import runs as _runs
from ...runs import RunDir
from ...stats import t_interval
from .report import collapsed

__all__ = ["TMAYSeedsError", "load_run", "aggregate", "format_aggregate", "main"]

FREE_FIELDS = ("seeds",)  # everything else in the config must be equal


class TMAYSeedsError(ValueError):
    """The runs cannot be pooled (unfinished, other settings, a repeated seed)."""


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """A finished self-awareness run: its config and `comparison.json`.

    Args:
        path: the run directory.

    Returns:
        {"path", "config", "comparison"}.

    Raises:
        TMAYSeedsError: one line naming the missing file.
    """
    p = Path(path)
    for f in ("manifest.json", "comparison.json"):
        if not (p / f).is_file():
            raise TMAYSeedsError(f"{p / f}: missing (not a finished self-awareness run; rerun it to resume)")
    cfg = json.loads((p / "manifest.json").read_text()).get("config")
    if not isinstance(cfg, dict) or "seeds" not in cfg or "conditions" not in cfg:
        raise TMAYSeedsError(f"{p / 'manifest.json'}: field config.seeds is missing (not a self-awareness run)")
    return {"path": str(p), "config": cfg, "comparison": json.loads((p / "comparison.json").read_text())}


def aggregate(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Seed-level estimates over finished runs of one configuration.

    Args:
        paths: the run directories (their seeds must not repeat).

    Returns:
        {"seeds", "runs", "comparisons": {comparison: {measure: {"per_seed": {seed: a - b}, "over_seeds":
        Estimate dict} or {"withheld": reason}}}}.

    Raises:
        TMAYSeedsError: fewer than 2 runs, configurations that differ beyond `seeds` (naming the fields), a repeated
            seed.
    """
    runs = [load_run(p) for p in paths]
    if len(runs) < 2:
        raise TMAYSeedsError(f"need at least 2 runs, got {len(runs)}")
    ref = {k: v for k, v in runs[0]["config"].items() if k not in FREE_FIELDS}
    for r in runs[1:]:
        other = {k: v for k, v in r["config"].items() if k not in FREE_FIELDS}
        diff = sorted(k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k))
        if diff:
            raise TMAYSeedsError(f"{r['path']}: config differs from {runs[0]['path']} in {', '.join(diff)} "
                                 f"(only {', '.join(FREE_FIELDS)} may differ)")
    seeds = [s for r in runs for s in r["config"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise TMAYSeedsError(f"seeds repeat across the runs: {seeds}")
    out: dict[str, Any] = {"seeds": seeds, "runs": [r["path"] for r in runs], "comparisons": {}}
    names = list(runs[0]["comparison"]["comparisons"])
    for comp in names:
        block: dict[str, Any] = {}
        for metric in runs[0]["comparison"]["comparisons"][comp]:
            why = [w for r in runs if (w := collapsed(r["comparison"].get("format", {}), comp, metric))]
            withheld = f"answer format collapsed ({', '.join(why)})" if why else _unchecked(runs, metric)
            if withheld:
                block[metric] = {"withheld": withheld}
                continue
            per: dict[int, float] = {}
            for r in runs:
                m = r["comparison"]["comparisons"][comp].get(metric)
                if m is None:
                    raise TMAYSeedsError(f"{r['path']}/comparison.json: no {comp}/{metric}")
                for s, a, b in zip(r["config"]["seeds"], m["a_per_seed"], m["b_per_seed"]):
                    if a is not None and b is not None:
                        per[int(s)] = float(a) - float(b)
            est = t_interval(list(per.values()), unit="finetune seed").with_(method="paired t")
            block[metric] = {"per_seed": per, "over_seeds": est.to_dict()}
        out["comparisons"][comp] = block
    return out


def _unchecked(runs: Sequence[dict[str, Any]], metric: str) -> str | None:
    """Why a self-report measure cannot be pooled though no run flagged it: a run whose format check did not
    cover it (made before the check covered persona scales, or single-digit answers)."""
    kind, _, name = metric.partition("/")
    if kind == "persona":
        unchecked = [r["path"] for r in runs if not _persona_checked(r["comparison"].get("format", {}), name)]
        if unchecked:
            return f"persona scale not format-checked in {', '.join(unchecked)}"
    if kind in ("scale", "persona"):
        unchecked = [r["path"] for r in runs if not _checked(r["comparison"].get("format", {}), "single_digit")]
        if unchecked:
            return f"0-100 scale not checked for single-digit answers in {', '.join(unchecked)}"
    if kind in ("backdoor", "trigger_awareness"):
        unchecked = [r["path"] for r in runs if not _checked(r["comparison"].get("format", {}), "per_order")]
        if unchecked:
            return f"two-order question not checked for position-locked answers in {', '.join(unchecked)}"
    return None


def _checked(formats: dict[str, Any], field: str) -> bool:
    """Whether every finetune's format check of a run recorded `field` (runs made before a check was added lack it)."""
    return all(field in f for by_seed in formats.values() for f in by_seed.values())


def _persona_checked(formats: dict[str, Any], name: str) -> bool:
    return any(k.endswith(f"/personas/{name}") for by_seed in formats.values() for f in by_seed.values()
               for k in (f.get("masses") or {}))


def format_aggregate(agg: dict[str, Any]) -> str:
    """The aggregate as text, one line per comparison and measure.

    Args:
        agg: what `aggregate` returned.

    Returns:
        Lines.
    """
    num = lambda x: "n/a" if x is None else f"{x:+.3f}"  # noqa: E731
    lines = [f"seeds {agg['seeds']} (unit: finetune seed; paired t over seeds)"]
    for comp, block in agg["comparisons"].items():
        for metric, m in block.items():
            if "withheld" in m:
                lines.append(f"  {comp:18s} {metric:36s} withheld: {m['withheld']}")
                continue
            e = m["over_seeds"]
            per = ", ".join(f"s{s}={v:+.3f}" for s, v in sorted(m["per_seed"].items()))
            lines.append(f"  {comp:18s} {metric:36s} {num(e['value'])} [{num(e['lo'])}, {num(e['hi'])}] "
                         f"n={e['n']}  ({per})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Pool finished self-awareness runs over seeds.

    Args:
        argv: command-line options.
        prog: program name for usage lines.

    Returns:
        0 on success, 2 on a usage error.
    """
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished self-awareness run directories (one or more seeds each)")
    ap.add_argument("--out", default=None, help="write seeds.json here (a run directory of its own)")
    ns = ap.parse_args(argv)
    try:
        agg = aggregate(ns.runs)
    except TMAYSeedsError as e:
        ap.error(str(e))
    print(format_aggregate(agg))
    if ns.out:
        rd = RunDir(ns.out)
        rd.bind("tmay_seeds", {"runs": [str(Path(p).resolve()) for p in ns.runs],
                               "comparisons_sha256": [_runs.file_sha256(Path(p) / "comparison.json") for p in ns.runs]},
                overwrite=True)
        _runs.write_json(rd.path / "seeds.json", agg, root=rd.path, default=float)
        print(f"wrote {rd.path / 'seeds.json'}")
    return 0
