"""Emergent misalignment over finetune seeds: the seed-level interval across runs of one configuration.

One `introspect-mech study emergent-misalignment` run finetunes each dataset once, so its intervals are
over questions (question-clustered) or answers: they say how sure we are about *that finetune*. The papers'
claim is about finetuning on the dataset, whose unit is the finetune: this command reads several finished
runs that differ only in `seed` (and `include_base`), and reports per dataset the mean over seeds with a
Student-t interval (unit: finetune seed), each run's own question-clustered interval beside it, and the
difference against the control dataset paired by seed (same seed: same sampling seed for both datasets and,
for bad / good medical advice, the same training-question rows). Judged rates carry the judge's validation label; the proxy and the capability check are
reported apart from them (never on one line with a judged rate).

    introspect-mech em-seeds /runs/em_s0 /runs/em_s1 /runs/em_s2 --out /runs/em_seeds
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
from ...stats import Estimate, Measure, t_interval, welch

STAGE = "emergent_misalignment"
# config fields that may differ between the runs of one seed study (everything else must be equal)
FREE_FIELDS = ("seed", "include_base")
CONTROLS = {"bad_medical_advice": "good_medical_advice", "insecure": "secure", "risky_financial_advice": None,
            "extreme_sports": None}


class SeedRunsError(ValueError):
    """The runs cannot be pooled over seeds (unfinished, or their configurations differ beyond the seed)."""


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """A finished EM run's configuration and stage results.

    Args:
        path: the run directory (`manifest.json` and `stages.jsonl` inside).

    Returns:
        {"path", "config", "results" (the `emergent_misalignment` stage), "capability" (or None)}.

    Raises:
        SeedRunsError: (one line, naming the file) when the run has not finished its main stage.
    """
    p = Path(path)
    man_path, stages_path = p / "manifest.json", p / "stages.jsonl"
    if not man_path.is_file():
        raise SeedRunsError(f"{man_path}: no manifest (not a run directory)")
    man = json.loads(man_path.read_text())
    cfg = man.get("config")
    if not isinstance(cfg, dict) or "seed" not in cfg:
        raise SeedRunsError(f"{man_path}: field config.seed is missing (not an emergent-misalignment run)")
    stages: dict[str, Any] = {}
    if stages_path.is_file():
        for row in _runs.JsonlLog(stages_path).read():
            stages[row["stage"]] = row.get("result")
    if STAGE not in stages:
        raise SeedRunsError(f"{stages_path}: stage {STAGE!r} has not finished (rerun the study command to resume)")
    return {"path": str(p), "config": cfg, "results": stages[STAGE], "capability": stages.get("capability")}


def check_same_config(runs: Sequence[dict[str, Any]]) -> None:
    """Refuse runs whose configurations differ in anything but `FREE_FIELDS`, or that repeat a seed.

    Args:
        runs: `load_run` results.

    Raises:
        SeedRunsError: one line naming the runs and the differing fields.
    """
    if len(runs) < 2:
        raise SeedRunsError(f"need at least 2 runs (one per seed), got {len(runs)}")
    ref = {k: v for k, v in runs[0]["config"].items() if k not in FREE_FIELDS}
    for r in runs[1:]:
        other = {k: v for k, v in r["config"].items() if k not in FREE_FIELDS}
        diff = sorted(k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k))
        if diff:
            raise SeedRunsError(f"{r['path']}: config differs from {runs[0]['path']} in {', '.join(diff)} "
                                f"(only {', '.join(FREE_FIELDS)} may differ)")
    seeds = [r["config"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SeedRunsError(f"seeds repeat across the runs: {seeds}")


def _paired_diff(a: dict[int, float], b: dict[int, float], unit: str, measure: Measure) -> Estimate:
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        return t_interval([a[s] - b[s] for s in common], unit=unit, measure=measure).with_(method="paired t")
    return welch(list(a.values()), list(b.values()), unit=unit, measure=measure)


def aggregate(paths: Sequence[str | os.PathLike], *, question_set: str = "main") -> dict[str, Any]:
    """Seed-level estimates over finished EM runs of one configuration.

    Args:
        paths: the run directories (one seed each).
        question_set: which question set's EM rates to pool.

    Returns:
        {"seeds", "runs", "judge", "judge_validation", "question_set", "per_dataset": {dataset: {measure:
        {"per_seed": {seed: value}, "per_run_interval": {seed: Estimate dict}, "over_seeds": Estimate dict}}},
        "contrasts": {"<dataset> - <control>": {measure: Estimate dict}}, "base": {...} or None}.
        Judged measures are `em_rate/<denominator>` and `coherent_rate`; proxy measures `proxy/<metric>`;
        capability measures `capability/<set>`.
    """
    runs = [load_run(p) for p in paths]
    check_same_config(runs)
    jv = [json.dumps(r["results"].get("judge_validation"), sort_keys=True) for r in runs]
    datasets = list(runs[0]["config"]["datasets"])
    per: dict[str, dict[str, dict[str, Any]]] = {}

    def put(model: str, measure: str, seed: int, est: dict[str, Any] | None, kind: str) -> None:
        if not est or est.get("value") is None:
            return
        slot = per.setdefault(model, {}).setdefault(measure, {"per_seed": {}, "per_run_interval": {}, "kind": kind})
        slot["per_seed"][seed] = float(est["value"])
        slot["per_run_interval"][seed] = est

    for r in runs:
        seed, res = int(r["config"]["seed"]), r["results"]
        for model, sets in res.get("models", {}).items():
            e = sets.get(question_set) or {}
            for den, rep in (e.get("em_rate") or {}).items():
                put(model, f"em_rate/{den}", seed, rep.get("overall"), "judged")
            put(model, "coherent_rate", seed, e.get("coherent_rate"), "judged")
        for model, p in (res.get("proxy") or {}).items():
            if model != "metrics":
                for metric, est in p.items():
                    put(model, f"proxy/{metric}", seed, est, "proxy")
        for model, sets in ((r.get("capability") or {}).get("accuracy") or {}).items():
            for s, est in sets.items():
                put(model, f"capability/{s}", seed, est, "exact")
    out_per: dict[str, Any] = {}
    for model, measures in per.items():
        out_per[model] = {}
        for measure, slot in measures.items():
            unit = "finetune seed" if model != "base" else "sampling seed (same base model)"
            est = t_interval(list(slot["per_seed"].values()), unit=unit, measure=slot["kind"])
            out_per[model][measure] = {"kind": slot["kind"], "per_seed": slot["per_seed"],
                                       "per_run_interval": slot["per_run_interval"], "over_seeds": est.to_dict()}
    contrasts: dict[str, Any] = {}
    for d in datasets:
        c = CONTROLS.get(d)
        ctrls = ([c] if c is not None and c in datasets else []) + (["base"] if "base" in out_per else [])
        for ctrl in ctrls:
            name = f"{d} - {ctrl}"
            contrasts[name] = {}
            for measure, slot in out_per.get(d, {}).items():
                other = out_per.get(ctrl, {}).get(measure)
                if other is None:
                    continue
                est = _paired_diff(slot["per_seed"], other["per_seed"], unit="seed pair", measure=slot["kind"])
                contrasts[name][measure] = {"kind": slot["kind"], **est.to_dict()}
    first = runs[0]["results"]
    return {"seeds": [int(r["config"]["seed"]) for r in runs], "runs": [r["path"] for r in runs],
            "question_set": question_set, "judge": first.get("judge"),
            "judge_validation": first.get("judge_validation") if len(set(jv)) == 1 else "differs between runs",
            "per_dataset": out_per, "contrasts": contrasts}


def _fmt(e: dict[str, Any]) -> str:
    if e.get("value") is None:
        return "n/a"
    ci = f"[{e['lo']:+.3f}, {e['hi']:+.3f}]" if e.get("lo") is not None else "[no interval]"
    return f"{e['value']:+.3f} {ci} {e['method']}, n={e['n']} (unit: {e['unit']})"


def format_aggregate(agg: dict[str, Any]) -> str:
    """The aggregate as text: judged, proxy and capability measures in separate blocks.

    Args:
        agg: what `aggregate` returned.

    Returns:
        Lines; every judged line starts with the judge's validation label.
    """
    jv = agg.get("judge_validation")
    jlabel = jv.get("label", "unvalidated judge") if isinstance(jv, dict) else "unvalidated judge"
    lines = [f"seeds {agg['seeds']} · question set {agg['question_set']} · judge "
             f"{(agg.get('judge') or {}).get('model', '?')} ({jlabel})"]
    if isinstance(jv, dict) and jv.get("line"):
        lines.append(f"judge validation: {jv['line']}")
    for kind, title in (("judged", f"[{jlabel}] judged"), ("proxy", "[proxy, not an EM rate]"),
                        ("exact", "[capability, exact match]")):
        block = []
        for model, measures in agg["per_dataset"].items():
            for measure, m in measures.items():
                if m["kind"] == kind:
                    per_seed = ", ".join(f"s{s}={v:.3f}" for s, v in sorted(m["per_seed"].items()))
                    block.append(f"  {model:24s} {measure:28s} mean over seeds {_fmt(m['over_seeds'])}  ({per_seed})")
        for name, measures in agg["contrasts"].items():
            for measure, e in measures.items():
                if e["kind"] == kind:
                    block.append(f"  {name:24s} {measure:28s} difference {_fmt(e)}")
        if block:
            lines += [f"{title}:", *block]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Pool finished EM runs over seeds (`introspect-mech em-seeds RUN RUN ... [--out DIR]`).

    Args:
        argv: command-line options.
        prog: program name for usage lines.

    Returns:
        0 on success, 2 on a usage error (runs that cannot be pooled).
    """
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished emergent-misalignment run directories, one per seed")
    ap.add_argument("--question-set", default="main", help="question set whose EM rates are pooled (default: main)")
    ap.add_argument("--out", default=None, help="write seeds.json here (a run directory of its own)")
    ns = ap.parse_args(argv)
    try:
        agg = aggregate(ns.runs, question_set=ns.question_set)
    except SeedRunsError as e:
        ap.error(str(e))
    print(format_aggregate(agg))
    if ns.out:
        rd = RunDir(ns.out)
        rd.bind("em_seeds", {"runs": [str(Path(p).resolve()) for p in ns.runs], "question_set": ns.question_set},
                overwrite=True)
        _runs.write_json(rd.path / "seeds.json", agg, root=rd.path, default=float)
        print(f"wrote {rd.path / 'seeds.json'}")
    return 0
