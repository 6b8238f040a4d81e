"""The model-organisms study's outputs beside `results.json`: the dashboard's EM-rate rows (`em_rates.jsonl`) and
the plain-text summary (`format_results`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ... import runs as _runs
from ...stats import row_fields


def _write_dashboard_rows(out: Path, results: dict[str, Any]) -> None:
    """em_rates.jsonl rows (judged EM rates, both denominators) for the dashboard."""

    rows = []
    jlabel = (results.get("judge_validation") or {}).get("label", "unvalidated judge")
    conds = {**results.get("em", {}), **results.get("ablation", {})}
    for cond, r in conds.items():
        for den in ("coherent", "all"):
            e = r[den]
            rows.append({"model": cond, "question": "overall", "rate": e["value"], "ci_lo": e["lo"], "ci_hi": e["hi"],
                         **row_fields(e), "metric": f"EM rate ({jlabel}; denominator: {den})"})
    _runs.write_jsonl(out / "em_rates.jsonl", rows, default=float)


def format_results(results: dict[str, Any]) -> str:
    """A short plain-text summary of `run`'s results.

    Args:
        results: what `run` returned.

    Returns:
        Lines: the judge, EM rates (both denominators) per condition and ablation, the finetune shift,
        the direction's status, the reductions, per-checkpoint rows and the labelled judge-free proxy.
    """
    def f(e):
        if not e or e.get("value") is None:
            return "n/a"
        ci = f"[{e['lo']:.3f}, {e['hi']:.3f}]" if e.get("lo") is not None else "[no CI]"
        return f"{e['value']:.3f} {ci} (n={e['n']})"

    j = results["judge"]
    jv = results.get("judge_validation") or {}
    tag = "" if jv.get("passes") else "[unvalidated judge] "
    lines = [f"judge: {j.get('kind')} {j.get('model', j.get('model_name', ''))}",
             f"judge validation: {jv.get('line', 'none')}"]
    for cond, r in {**results["em"], **results.get("ablation", {})}.items():
        lines.append(f"{tag}{cond:18s} EM/coherent {f(r['coherent'])} · EM/all {f(r['all'])} · coherent {f(r['coherent_rate'])}"
                     f" · judge abstained {r['n_judge_abstained']}/{r['n_answers']}")
    for den, e in results["shift"].items():
        lines.append(f"{tag}finetune shift ({den}): {f(e)} significant={e['significant']}")
    d = results["direction"]
    lines.append(f"{tag}EM direction from the judge's answer selection ({d.get('n_misaligned')} misaligned, "
                 f"{d.get('n_aligned')} aligned): {d.get('reason', 'computed')}")
    lines.append(f"{tag}reductions: {json.dumps(results['reductions'], default=float)}")
    for r in results.get("phase", []):
        rot = r.get("b_rotation_from_previous") or {}
        turn = "" if rot.get("mean_cos") is None else f"B cos vs previous {rot['mean_cos']:.3f} · "
        lines.append(f"{tag}step {r['step']:4d}: LoRA-B norm {r['lora_b_norm']:.4f} · {turn}EM/all {f(r['em']['all'])} · "
                     f"cos(final) {r['cos_with_final_direction']}")
    if "proxy" in results:
        for name in ("base", "finetuned"):
            p = results["proxy"][name]
            lines.append(f"[proxy, not an EM rate] {name}: P(prefers misaligned) {f(p['proxy_pref'])}"
                         + (f" · held-out medical diff {f(p['med_proxy_diff'])}" if "med_proxy_diff" in p else ""))
    return "\n".join(lines)
