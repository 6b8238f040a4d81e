"""The organisms study's tables: the methods x organisms table (recovery cosine at L per method, intervention
effects), its dashboard rows (`organisms.jsonl`), its text form and the summary rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import runs as _runs
from ...stats import bootstrap_ci
from .measures import _removed


def summary_table(recovery_rows: list[dict], intervention_rows: list[dict], L: int) -> list[dict]:
    """One row per (organism, measure): recovery cosine at L per method (mean over seeds with a
    bootstrap CI over seeds when there are several) and intervention effects.

    Args:
        recovery_rows: `recovery.jsonl` rows (organism, method, layer, cosine, random |cos|, or error).
        intervention_rows: `interventions.jsonl` rows (several seeds of one intervention are pooled).
        L: the planted block (recovery is read there).

    Returns:
        Rows {"organism", "kind" ("recovery" | "intervention"), "method", "value", "ci_lo", "ci_hi",
        "random", "n_seeds", ...}.
    """
    out = []
    orgs = list(dict.fromkeys(r["organism"] for r in recovery_rows))
    for org in orgs:
        methods = list(dict.fromkeys(r["method"] for r in recovery_rows if r["organism"] == org))
        for m in methods:
            rs = [r for r in recovery_rows if r["organism"] == org and r["method"] == m and r.get("layer") == L]
            err = next((r.get("error") for r in recovery_rows if r["organism"] == org and r["method"] == m
                        and r.get("error")), None)
            if not rs:
                out.append({"organism": org, "kind": "recovery", "method": m, "value": None, "error": err or
                            f"no direction at block {L}"})
                continue
            cs = [r["cosine"] for r in rs]
            est = bootstrap_ci(cs) if len(cs) > 1 else None
            out.append({"organism": org, "kind": "recovery", "method": m, "value": float(np.mean(cs)),
                        "ci_lo": est.lo if est else None, "ci_hi": est.hi if est else None, "n_seeds": len(cs),
                        "random": float(np.mean([r["random_abs_mean"] for r in rs])),
                        "random_max": float(max(r["random_abs_max"] for r in rs))})
    groups: dict[tuple, list[dict]] = {}
    for r in intervention_rows:
        groups.setdefault((r["organism"], r["source"], r["intervention"]), []).append(r)
    for (org, src, op), rs in groups.items():
        if len(rs) == 1:
            r = rs[0]
            out.append({"organism": org, "kind": "intervention", "method": f"{op} [{src}]", "value": r["value"],
                        "ci_lo": r["ci_lo"], "ci_hi": r["ci_hi"], "random": r["random"], "n_seeds": 1,
                        "metric": r["metric"]})
            continue
        # several finetune seeds: ratio of means over seeds, bootstrap over seeds then items
        full = [r["items"]["full"] for r in rs]
        removed = _removed(full, [r["items"]["direction"] for r in rs])
        rnd = [float(r["random"]) for r in rs if r["random"] is not None]
        out.append({"organism": org, "kind": "intervention", "method": f"{op} [{src}]", **removed,
                    "random": float(np.mean(rnd)) if rnd else None, "n_seeds": len(rs), "metric": rs[0]["metric"]})
    return out


def panel(table: list[dict]) -> list[dict]:
    """Rows for the dashboard's methods x organisms panel (`viz.organisms`).

    Args:
        table: `summary_table` rows.

    Returns:
        The rows restricted to the panel's keys.
    """
    keep = ("organism", "kind", "method", "value", "ci_lo", "ci_hi", "random", "n_seeds", "error", "metric")
    return [{k: r.get(k) for k in keep if k in r} for r in table]


def format_table(table: list[dict]) -> str:
    """The methods x organisms table as text (recovery cosine at L; intervention effects).

    Args:
        table: `summary_table` rows.

    Returns:
        The table, one line per organism (recovery) and per intervention.
    """
    def f(v):
        return "   n/a" if v is None else f"{v:+.3f}"

    lines = []
    rec = [r for r in table if r["kind"] == "recovery"]
    orgs = list(dict.fromkeys(r["organism"] for r in rec))
    methods = list(dict.fromkeys(r["method"] for r in rec))
    w = max([len(o) for o in orgs] + [12])
    lines.append("Recovery: cosine with the ground truth at L (mean over seeds) | random |cos| mean")
    lines.append(f"{'organism':<{w}} " + " ".join(f"{m[:22]:>22}" for m in methods) + f" {'random':>8}")
    for o in orgs:
        cells, rnd = [], None
        for m in methods:
            r = next((x for x in rec if x["organism"] == o and x["method"] == m), None)
            if r is None or r.get("value") is None:
                cells.append(f"{'fail' if r and r.get('error') else '-':>22}")
                continue
            ci = f" [{r['ci_lo']:+.2f},{r['ci_hi']:+.2f}]" if r.get("ci_lo") is not None else ""
            cells.append(f"{f(r['value']) + ci:>22}")
            rnd = r.get("random", rnd)
        lines.append(f"{o:<{w}} " + " ".join(cells) + f" {f(rnd):>8}")
    iv = [r for r in table if r["kind"] == "intervention"]
    if iv:
        lines.append("")
        lines.append("Interventions: effect [95 % CI] vs mean of norm-matched random directions")
        for r in iv:
            ci = f"[{f(r.get('ci_lo'))}, {f(r.get('ci_hi'))}]"
            lines.append(f"{r['organism']:<{w}} {r['method']:<48} {f(r['value'])} {ci:<18} random {f(r.get('random'))}"
                         f"  (seeds {r.get('n_seeds')})")
    return "\n".join(lines)


def _summary(out: Path, table: list[dict], behaviour: list[dict], seconds: float) -> None:
    rows = [{"name": "wall time (s)", "value": round(seconds, 1), "note": "whole organisms run"}]
    for b in behaviour:
        if "rise" in b:
            rows.append({"name": f"{b['organism']}: persona expression rise (proxy)", "value": b["rise"],
                         "ci_lo": b["rise_ci_lo"], "ci_hi": b["rise_ci_hi"],
                         "note": f"base {b['base']:+.3f} -> finetune {b['finetune']:+.3f} nats/token (judge-free proxy)"})
        else:
            rows.append({"name": f"{b['organism']} seed {b['seed']}: KL(finetune || base)", "value": b["finetune"],
                         "note": f"steered base {b['steered_base']:.4f}; finetune to steered {b['finetune_to_steered']:.4f}"})
    for r in table:
        if r.get("value") is None:
            continue
        rows.append({"name": f"{r['organism']}: {r['method']} ({r['kind']})", "value": r["value"],
                     "ci_lo": r.get("ci_lo"), "ci_hi": r.get("ci_hi"),
                     "note": f"random {r['random']:+.3f}" if r.get("random") is not None else ""})
    _runs.write_jsonl(out / "summary.jsonl", rows)
