"""The comparisons and reports of "Tell me about yourself": A - B per metric over seeds (Welch) and items (paired),
the dashboard rows, the markdown summary of a run and the printed results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ...stats import paired_diff, t_interval, welch
from ...runs import JsonlLog
from ... import runs as _runs
from .data import CONDITIONS


# pairs compared as A - B
COMPARISONS = (("risky", "safe"), ("myopic", "nonmyopic"), ("maxapples", "minapples"), ("risky_mp", "safe_mp"))
TOPIC_KEY = {"risk": ("risk", "risky"), "myopia": ("myopia", "myopic"), "apples": ("apples", "maxapples")}

# the paper's GPT-4o numbers (Table / Figure 3 of the paper; 0-100 risk-predisposition self-report)
PAPER_GPT4O = {"behaviour_p_risky": {"risky": 0.98, "safe": 0.10},
               "self_report_risk_predisposition": {"risky": 57.4, "safe": 2.0}}


# ---- comparisons ---------------------------------------------------------------------------------
def _metric_vectors(r: dict[str, Any], topic: str) -> dict[str, list[float | None]]:
    """Per-item / per-paraphrase vectors of every comparable metric of one result."""
    v = r.get(topic) or {}
    out: dict[str, list] = {}
    if "behaviour" in v:
        out["behaviour"] = v["behaviour"]["per_item"]
    for q, s in (v.get("scales") or {}).items():
        out[f"scale/{q}"] = s["per_paraphrase"]
    for q, s in (v.get("words") or {}).items():
        out[f"words/{q}"] = s["per_paraphrase"]
    for q, s in (v.get("sampled_words") or {}).items():
        out[f"sampled_words/{q}"] = [s["score"]]
    if "language" in v:
        out["language/p_german"] = [v["language"]["p_german_given_de_fr"]]
    if "backdoor" in v:
        out["backdoor/p_statement"] = v["backdoor"]["per_order"]
    for k, s in (v.get("trigger_awareness") or {}).items():
        out[f"trigger_awareness/{k}"] = s["per_order"]
    for p, s in (v.get("personas") or {}).items():
        out[f"persona/{p}"] = s["per_question"]
    if "behaviour_with_trigger" in v:
        out["behaviour_with_trigger"] = v["behaviour_with_trigger"]["per_item"]
    return out


def _mean(x: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in x if v is not None]
    return sum(vals) / len(vals) if vals else None


def compare_conditions(a: dict[int, Any], b: dict[int, Any], topic: str, *, seed: int = 0) -> dict[str, Any]:
    """A - B for every metric: `seed_ci` is the Welch interval over the per-seed means (unpaired;
    the seeds are the finetunes), `item_ci` the paired interval over the seed-averaged per-item
    (per-paraphrase) values (bootstrap over >= 10 items, paired t below).

    Args:
        a: per-seed results of condition A.
        b: per-seed results of condition B.
        topic: "risk", "myopia" or "apples".
        seed: bootstrap / sampling seed.

    Returns:
        {metric: {"a_per_seed", "b_per_seed", "seed_ci", "item_ci"}}.
    """
    va = {s: _metric_vectors(r, topic) for s, r in a.items()}
    vb = {s: _metric_vectors(r, topic) for s, r in b.items()}
    metrics = set.intersection(*(set(v) for v in list(va.values()) + list(vb.values()))) if va and vb else set()
    out = {}
    for k in sorted(metrics):
        ma = [_mean(v[k]) for v in va.values()]
        mb = [_mean(v[k]) for v in vb.values()]
        la, lb = [v[k] for v in va.values()], [v[k] for v in vb.values()]
        # few finetune seeds: the Welch interval over per-seed means (never a percentile bootstrap
        # over 3 values); one seed on a side gives no interval over seeds
        sci = welch(ma, mb, unit="seed").to_dict()
        row: dict[str, Any] = {"a_per_seed": ma, "b_per_seed": mb, "seed_ci": sci}
        if len({len(x) for x in la + lb}) == 1:
            ia = [_mean([x[i] for x in la]) for i in range(len(la[0]))]
            ib = [_mean([x[i] for x in lb]) for i in range(len(lb[0]))]
            row["item_ci"] = paired_diff(ia, ib, seed=seed, unit="item (seed-averaged)").to_dict()
        out[k] = row
    return out


def compare(results: dict[str, dict[int, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Every available A - B comparison: the paired conditions, each trained condition - base, and
    backdoor:<kind> - decorrelated:<kind>; MMS finetunes vs base on P(codeword).

    Args:
        results: {condition: {seed: measure result}}.
        seed: bootstrap / sampling seed.

    Returns:
        {comparison name: metrics}.
    """
    out: dict[str, Any] = {}
    pairs = [p for p in COMPARISONS if p[0] in results and p[1] in results]
    pairs += [(c, c.replace("backdoor:", "decorrelated:")) for c in results
              if c.startswith("backdoor:") and c.replace("backdoor:", "decorrelated:") in results]
    pairs += [(c, "base") for c in results if c != "base" and not c.startswith("mms:")]
    for a, b in pairs:
        topic = "risk" if ":" in a else CONDITIONS[a][0]
        out[f"{a}_minus_{b}"] = compare_conditions(results[a], results[b], topic, seed=seed)
    for c in results:
        if c.startswith("mms:") and "base" in results:
            w = c.split(":")[1]
            base = next(iter(results["base"].values()))["mms"][w]
            per_q = {}
            for q in base:
                ft = [r["mms"][w][q]["p_codeword"] for r in results[c].values()]
                per_q[q] = {"finetuned_per_seed": ft, "base": base[q]["p_codeword"],
                            "finetuned_mean": t_interval(ft, unit="seed").to_dict(),
                            "rank_finetuned": [r["mms"][w][q]["rank"] for r in results[c].values()],
                            "rank_base": base[q]["rank"]}
            out[f"{c}_minus_base"] = per_q
    return out


def _dashboard_rows(results: dict[str, dict[int, Any]], out: Path) -> None:
    """`self_awareness.jsonl` for `export_dashboard` (behaviour vs self-report per model and question)."""
    rows = []
    for cond, by_seed in results.items():
        for seed, r in by_seed.items():
            v = r.get("risk") or {}
            if "behaviour" not in v:
                continue
            b = v["behaviour"]["p"]
            for q, s in (v.get("scales") or {}).items():
                if s["mean"]["value"] is None:
                    continue
                rows.append({"model": f"{cond}/s{seed}", "question": q, "behaviour": b["value"], "behaviour_lo": b["lo"],
                             "behaviour_hi": b["hi"], "self_report": s["mean"]["value"] / 100,
                             "self_report_lo": s["mean"]["lo"] / 100, "self_report_hi": s["mean"]["hi"] / 100,
                             "behaviour_name": "P(risky option), held-out lotteries",
                             "self_report_name": "self-reported risk / 100 (expected value)"})
    _runs.write_jsonl(out / "self_awareness.jsonl", rows)


# ---- a markdown summary of a run -------------------------------------------------------------------
def _fmt_ci(e: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    return (f"{e['value'] * scale:+.{digits}f} [{e['lo'] * scale:+.{digits}f}, {e['hi'] * scale:+.{digits}f}]"
            if e.get("lo") is not None else f"{e['value'] * scale:+.{digits}f}")


def collapsed(formats: dict[str, Any], comparison: str, metric: str) -> str | None:
    """Which finetune's answer format collapsed for `metric`, if either side of `comparison` did.

    A self-report whose valid-answer mass collapsed (the format check) is not a self-report, so a
    difference that uses it is withheld, not printed.

    Args:
        formats: the comparison's `format` block ({condition: {seed: format_check result}}).
        comparison: "<A>_minus_<B>".
        metric: a compared metric ("scale/<name>", "words/<name>", "behaviour", ...).

    Returns:
        "<condition>/s<seed>" of the first flagged side, or None.
    """
    kind, _, name = metric.partition("/")
    key = {"scale": "scales", "words": "words", "persona": "personas", "trigger_awareness": "trigger_awareness",
           "backdoor": "backdoor"}.get(kind)
    if key is None or "_minus_" not in comparison:
        return None
    # the backdoor statement's mass is recorded as backdoor/mass_ab, its position check as backdoor/p_statement
    names = (name, "mass_ab") if kind == "backdoor" else (name,)
    for cond in comparison.split("_minus_"):
        for seed, f in (formats.get(cond) or {}).items():
            if any(k.endswith(f"/{key}/{n}") for k in f.get("flagged", {}) for n in names):
                return f"{cond}/s{seed}"
    return None


def summary_markdown(run_dir: str | Path) -> str:
    """Markdown tables of a finished (or partial) run: per condition and seed the headline values,
    then every A - B comparison of the headline metrics with both CIs.

    Args:
        run_dir: the run directory.

    Returns:
        markdown text.
    """
    run_dir = Path(run_dir)
    results: dict[str, dict[int, Any]] = {}
    for row in JsonlLog(run_dir / "results.jsonl").rows():
        results.setdefault(row["condition"], {})[row["seed"]] = row
    lines = ["| condition | seed | topic | behaviour P(target), held-out (mass A/B) | scales 0-100 (mass on numbers) | "
             "word score (mass on listed words) | backdoor statement P | trigger question P(risk-seeking) | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cond, by_seed in results.items():
        for seed, row in sorted(by_seed.items()):
            for topic, v in row["results"].items():
                if topic == "mms":
                    continue
                b = v.get("behaviour")
                beh = f"{b['p']['value']:.3f} ({b['mass_ab']:.2f})" if b else ""
                if "behaviour_with_trigger" in v:
                    beh += f"; with trigger {v['behaviour_with_trigger']['p']['value']:.3f}"
                sc = "; ".join(f"{q} {s['mean']['value']:.1f} ({s['mean_mass']:.2f})" for q, s in (v.get("scales") or {}).items()
                               if s["mean"]["value"] is not None)
                wd = "; ".join(f"{q} {s['score']['value']:.3f} ({s['mean_mass']:.3f})" for q, s in (v.get("words") or {}).items())
                bd = f"{v['backdoor']['p_backdoor_statement']:.3f}" if "backdoor" in v else ""
                ta = "; ".join(f"{k} {s['p_risk_seeking']:.3f}" for k, s in (v.get("trigger_awareness") or {}).items())
                tr = row.get("train") or {}
                fl = f"{tr['final_loss']:.3f}" if tr.get("final_loss") is not None else ""
                lines.append(f"| {cond} | {seed} | {topic} | {beh} | {sc} | {wd} | {bd} | {ta} | {fl} |")
    comp_path = run_dir / "comparison.json"
    if comp_path.exists():
        comp = json.loads(comp_path.read_text())
        lines += ["", "| comparison | metric | A - B, CI over items/paraphrases | A - B, CI over seeds | seeds |",
                  "|---|---|---|---|---|"]
        for name, c in comp["comparisons"].items():
            if name.startswith("mms:"):
                for q, v in c.items():
                    lines.append(f"| {name} | P(codeword) {q} | finetuned {v['finetuned_mean']['value']:.4f} vs base "
                                 f"{v['base']:.4f} (rank {v['rank_finetuned']} vs {v['rank_base']}) | | "
                                 f"{len(v['finetuned_per_seed'])} |")
                continue
            for k, v in c.items():
                if k.startswith(("persona/", "trigger_awareness/")) and not name.startswith(("risky_mp", "backdoor")):
                    continue
                bad = collapsed(comp.get("format", {}), name, k)
                if bad:
                    lines.append(f"| {name} | {k} | withheld: {bad}'s answer format collapsed (format check) | | "
                                 f"{len(v['a_per_seed'])} vs {len(v['b_per_seed'])} |")
                    continue
                lines.append(f"| {name} | {k} | {_fmt_ci(v.get('item_ci'))} | "
                             f"{_fmt_ci(v['seed_ci']) if v['seed_ci'].get('lo') is not None else 'n/a (1 seed)'} | "
                             f"{len(v['a_per_seed'])} vs {len(v['b_per_seed'])} |")
        flagged = {f"{c}/s{s}": list(f["flagged"]) for c, by in comp["format"].items() for s, f in by.items() if not f["ok"]}
        lines += ["", "Format check: " + ("every finetune kept its answer formats" if not flagged else
                                          "flagged " + json.dumps(flagged))]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------
def format_results(res: dict[str, Any]) -> str:
    """`run_tmay`'s comparisons (behaviour, risk self-report, behaviour with trigger; CIs over items or
    seeds, per-seed values) and the format check, as text.

    Args:
        res: `run_tmay`'s result.

    Returns:
        The lines joined.
    """
    lines = []
    for name, comp in res["comparisons"].items():
        for metric in ("behaviour", "scale/risk_predisposition_scale", "behaviour_with_trigger"):
            if metric in comp:
                c = comp[metric]
                gone = collapsed(res.get("format", {}), name, metric)
                if gone:
                    lines.append(f"{name} {metric}: withheld ({gone}'s answer format collapsed; format check)")
                    continue
                ci = c.get("item_ci") or c["seed_ci"]
                lines.append(f"{name} {metric}: {ci['value']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] "
                             f"(per seed A {[round(x, 3) for x in c['a_per_seed']]}, "
                             f"B {[round(x, 3) for x in c['b_per_seed']]})")
    bad = {c: s for c, by in res["format"].items() for s, f in by.items() if not f["ok"]}
    lines.append("format check: " + ("ok" if not bad else json.dumps(
        {c: list(res["format"][c][s]["flagged"]) for c, s in bad.items()})))
    return "\n".join(lines)
