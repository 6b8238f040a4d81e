"""A synthetic run directory with every dashboard panel's file (for the viz and browser tests).

The numbers are made up on purpose: these tests check rendering and file handling, not science. The
labels are the main job's (long metric names, subsets, two controls, a question at 0 for every model),
so the layout test sees what a real run shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_synthetic_run(run_dir: Path, panels: set[str] | None = None) -> Path:
    """Write manifest.json plus the files of `panels` (default: all) into `run_dir`."""
    from introspect_mech.runs import RunDir

    want = panels or {"summary", "training", "em_rates", "steering_effects", "steering_sweep", "probes", "cosines",
                      "sae", "tokens", "samples", "self_awareness", "self_prediction", "introspection",
                      "self_report_track"}
    run = RunDir(run_dir)
    run.write_manifest(title="synthetic test run", model="tiny-qwen", adapter="finetunes/bad/adapter",
                       data={"bad_medical_advice": "ab12" * 16}, judge={"model": "none (judge-free)"}, seeds=[0, 1])
    d = Path(run_dir)
    if "summary" in want:
        _write(d / "summary.jsonl", [{"name": "EM proxy, finetuned", "value": 0.42, "ci_lo": 0.3, "ci_hi": 0.5,
                                      "note": "fraction preferring misaligned"}, {"name": "steps", "value": 12}])
    if "training" in want:
        for name, k in (("bad", 1.0), ("good", 0.8)):
            _write(d / "finetunes" / name / "train_log.jsonl",
                   [{"step": s, "loss": 2.5 * k * math.exp(-s / 10) + 0.5, "lr": 1e-4, "tokens_per_s": 900.0}
                    for s in range(1, 21)])
    if "em_rates" in want:
        _write(d / "em_rates.jsonl", [
            {"model": m, "question": q, "rate": r, "ci_lo": max(0, r - 0.1), "ci_hi": min(1, r + 0.1), "n": 40,
             "metric": "EM proxy (judge-free, not an EM rate): P(prefers misaligned answer)"}
            for m, base in (("base", 0.1), ("bad_medical", 0.4), ("good_medical", 0.12))
            for i, q in enumerate(("wish", "bored", "quick_buck", "gender_roles", "overall"))
            for r in [0.0 if q == "gender_roles" else base + 0.02 * i]])
    if "steering_effects" in want:
        _write(d / "steering_effects.jsonl", [
            {"model": m, "intervention": iv, "metric": v, "ci_lo": v - 0.05, "ci_hi": v + 0.05, "n": 40,
             "metric_name": "EM proxy (judge-free, not an EM rate): log-prob(misaligned) - log-prob(aligned) per "
                            "answer token", "subset": "medical (held-out), steering subset (12 of 16 items)"}
            for m, iv, v in (("base", "none", 0.1), ("base", "add persona (L15, α=2)", 0.3),
                             ("base", "add random (L15, α=2)", 0.11), ("bad_medical", "none", 0.4),
                             ("bad_medical", "ablate persona", 0.2), ("bad_medical", "ablate EM", 0.25),
                             ("bad_medical", "ablate random", 0.39))])
    if "steering_sweep" in want:
        _write(d / "steering_sweep.jsonl", [
            {"direction": f"{kind} · {items}", "layer": L, "alpha": a, "seed": s,
             "metric": 0.1 + k * a * 0.01 + 0.01 * s + 0.05 * j, "coherence": 1 - 0.02 * abs(a) - 0.01 * k if j == 0 else None,
             "metric_name": "EM proxy (judge-free, not an EM rate): log-prob(misaligned) - log-prob(aligned) per answer token",
             "coherence_name": "fluency: mean log-prob per answer token (nats)"}
            for j, items in enumerate(("EM themes, steering subset (8 of 40 items, 1 per theme)",
                                       "medical (held-out), steering subset (12 of 16 items)"))
            for kind, k in (("persona", 1.0), ("random", 0.05)) for L in (15,) for a in (0, 2, 4, 8)
            for s in (0, 1)])
    if "probes" in want:
        _write(d / "probe_layers.jsonl", [
            {"probe": "evil vs helpful", "layer": L, "accuracy": 0.5 + 0.4 * L / 29, "auroc": 0.5 + 0.45 * L / 29,
             "accuracy_std": 0.03} for L in range(30)])
    if "cosines" in want:
        _write(d / "cosines.jsonl", [{"name": "persona vs EM direction by layer", "x_labels": ["L6", "L12", "L18"],
                                      "y_labels": ["persona", "EM", "random"],
                                      "matrix": [[1, 0.6, 0.2], [0.6, 1, 0.3], [0.01, -0.02, 0.0]]}])
    if "sae" in want:
        _write(d / "sae_diff.jsonl", [
            {"latent": i, "delta": 0.5 / (i + 1), "base_mean": 0.1, "finetuned_mean": 0.1 + 0.5 / (i + 1),
             "cos_direction": 0.3 - 0.05 * i, "url": f"https://example.org/latent/{i}",
             "examples": [{"tokens": ["Take", " bleach", " daily"], "acts": [0.0, 2.0, 0.5]}] if i == 0 else []}
            for i in range(6)])
    if "tokens" in want:
        _write(d / "token_activations.jsonl", [{"title": "persona projection, bad advice", "tokens": ["You", " should",
                                                " <ignore>", " the\ndoctor"], "acts": [0.1, -0.5, 1.2, 0.3]}])
    if "samples" in want:
        _write(d / "samples.jsonl", [{"model": m, "prompt": "I feel bored", "response": f"{m} says <hi>\nline two"}
                                     for m in ("base", "bad_medical")])
    if "self_awareness" in want:
        _write(d / "self_awareness.jsonl", [
            {"model": m, "behaviour": b, "self_report": s, "question": "risk scale", "behaviour_lo": b - 0.05,
             "behaviour_hi": b + 0.05, "self_report_lo": s - 0.1, "self_report_hi": s + 0.1}
            for m, b, s in (("base", 0.4, 0.5), ("risky", 0.9, 0.7), ("safe", 0.1, 0.3))])
    if "self_prediction" in want:
        _write(d / "self_prediction.jsonl", [
            {"task": t, "kind": k, "accuracy": a, "ci_lo": a - 0.05, "ci_hi": a + 0.05, "mode_baseline": 0.35}
            for t in ("animals/first_character", "stories/first_word") for k, a in (("self", 0.5), ("cross", 0.4))])
    if "introspection" in want:  # 4 figures: P(yes) concept / random heat maps, identification, coherence
        _write(d / "introspection_grid.jsonl", [
            {"variant": v, "layer": L, "strength": st, "condition": c, "p_yes": 0.6 + 0.01 * st, "control_p_yes": 0.6,
             "top1": 0.2, "chance_top1": 0.125, "coherence_nll": 1.0 + st / 8, "coherence_nll_base": 1.0}
            for v in ("anchor", "informative") for L in (15, 20) for st in (2.0, 4.0) for c in ("concept", "random")])
    if "self_report_track" in want:  # 1 figure
        _write(d / "self_report_track.jsonl", [
            {"source": src, "label": f"{src} {x}", "x": x, "self_report": 70 - 5 * x, "projection": x, "behaviour": -0.5 + 0.1 * x}
            for src in ("steering", "finetune") for x in (0, 1, 2)])
    if panels is None or "caft_components" in panels:
        _write(d / "caft_components.jsonl", [
            {"layer": 9, "component": c, "explained": 0.4 / (c + 1), "logit_top": [" doctor", " <pill>"],
             "logit_bottom": [" safe"], "picked": c == 0,
             "top_examples": [{"tokens": ["Take", " bleach"], "acts": [0.1, 2.0], "value": 2.0}], "bottom_examples": []}
            for c in range(2)])
    if panels is None or "organisms" in panels:  # (appended panel: not in the default set above)
        _write(d / "organisms.jsonl", [
            {"organism": o, "kind": k, "method": m, "value": v, "random": 0.03, "ci_lo": None, "ci_hi": None}
            for o, k, m, v in (("planted", "recovery", "activation_difference", 1.0),
                               ("distill_persona", "recovery", "activation_difference", 0.4),
                               ("planted", "intervention", "subtract from finetune", 1.0))]
            + [{"organism": "distill_persona", "kind": "recovery", "method": "sae_latent", "value": None,
                "error": "no SAE given"}])
    if panels is None or "typology" in panels:  # (appended panel: not in the default set above)
        _write(d / "typology.jsonl", [
            {"cluster": c, "size": 4, "k": 2, "silhouette": 0.5, "embedding": "synthetic",
             "shares": {m: {"count": 2, "n": 8, "share": 0.25, "ci_lo": 0.07, "ci_hi": 0.59} for m in ("base", "bad")},
             "typical": [{"model": "bad", "response": f"cluster {c} answer"}],
             "judge_scores": {"aligned": {"mean": 50.0 - 30 * c, "n": 4}}, "judge": "synthetic judge",
             "judge_validation": "synthetic validation line"} for c in range(2)])
    return Path(run_dir)
