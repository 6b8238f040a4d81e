"""Looking Inward scores from a run's saved answers (docs/results.md, "Looking Inward: A = 0.5B, B = 1.5B").

The study's step 5 for a run whose later stages (features, behaviour shift) had not finished: self vs cross
prediction per target on the held-out test split, ground truth = the finetuned target's own object-level answers,
with the study's own `score_predictions` / `compare_self_cross`, plus the demanding unit: a cluster bootstrap over
the task x property cells (items of one cell share a template). Reads only the answer files; loads no model.

    python experiments/qwen_analyses/li_scores.py /work/runs/qwen/li_05_15 li_scores.json

The splits are drawn again from the run's manifest (its config's split fields; checked against the item ids it
lists), so any `qwen-cpu` run works (e.g. the SmolLM2 pair), and the behaviour shift when the run has one. The cell intervals are the study's own
(`accuracy_by_cell`, `self_minus_cross_by_cell`, since session 10). Session 9 ran it on the `qwen-cpu` preset's run
(code of b64bf71 for the run; the sample files' layout is the same on main).
"""

import hashlib
import json
import sys
from pathlib import Path

from introspect_mech.studies.self_prediction.tasks import behaviour_shift, compare_self_cross, object_key, score_predictions
from introspect_mech.studies.self_prediction import PRESETS, make_splits


def read(f: Path) -> dict[str, str]:
    """{prompt id: response} of a sample file (as `evals.sample` wrote it)."""
    return {r["prompt_id"]: r["response"] for r in map(json.loads, f.open()) if "prompt_id" in r}


def objects(rows: list[dict], f: Path) -> dict[str, str]:
    """`object_level_answers`' mapping {object key: answer}, from its file."""
    got = read(f)
    return {k: got["obj-" + hashlib.sha256(k.encode()).hexdigest()[:16]] for k in {object_key(r) for r in rows}}


SPLIT_FIELDS = ("n_train", "n_test", "n_shift", "train_datasets", "test_datasets", "properties", "shift_datasets",
                "shift", "seed")


def run_splits(run: Path):
    """The run's splits, drawn again from the fields of its manifest's config that decide them (checked against the
    item ids the manifest lists)."""
    man = json.loads((run / "manifest.json").read_text())
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in man["config"].items() if k in SPLIT_FIELDS}
    cfg = PRESETS["qwen-cpu"].replace(**fields)
    splits = make_splits(cfg, None)
    if [r["item_id"] for r in splits.test] != man["splits"]["test"]:
        raise SystemExit(f"{run}/manifest.json: its test item ids differ from the split drawn from its config")
    return cfg, splits


def main(run: Path, out: Path) -> None:
    cfg, splits = run_splits(run)
    names = ["A", "B"]
    obj = {f"{n}_self": objects(splits.train + splits.test, run / "object" / f"{n}_self.jsonl") for n in names}
    hyp = {}
    for f in sorted((run / "hypothetical").glob("*.jsonl")):
        got = read(f) if f.name != "provenance.jsonl" else {}
        if got and all(r["item_id"] in got for r in splits.test):  # complete files only
            hyp[f.stem] = {r["item_id"]: got[r["item_id"]] for r in splits.test}
    print("complete hypothetical files:", sorted(hyp))
    scores, comparisons, clustered = {}, {}, {}
    for t in names:
        gt = obj[f"{t}_self"]
        scores[f"{t}_predicts_{t}"] = score_predictions(splits.test, gt, hyp[f"{t}_self"], seed=cfg.seed)
        for p in names:
            if p != t and f"{p}_predicts_{t}" in hyp:
                scores[f"{p}_predicts_{t}"] = score_predictions(splits.test, gt, hyp[f"{p}_predicts_{t}"], seed=cfg.seed)
                comparisons[f"{t}: self vs {p}"] = compare_self_cross(scores[f"{t}_predicts_{t}"],
                                                                      scores[f"{p}_predicts_{t}"], seed=cfg.seed)
                clustered[f"{t}: self vs {p}"] = comparisons[f"{t}: self vs {p}"]["self_minus_cross_by_cell"]
    for name, sc in scores.items():
        clustered[name] = sc["accuracy_by_cell"]
    brief = {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in scores.items()}
    result = {"scores": brief, "comparisons": comparisons, "clustered": clustered}
    if (run / "object" / "A_shifted.jsonl").exists():  # the behaviour shift (shift_eval is part of the test split)
        new_obj = objects(splits.shift_eval, run / "object" / "A_shifted.jsonl")
        new_hyp = read(run / "hypothetical" / "A_shifted.jsonl")
        sh = behaviour_shift(splits.shift_eval, obj["A_self"], new_obj, new_hyp, seed=cfg.seed)
        result["shift_A"] = {k: v for k, v in sh.items() if k != "rows"}
        e, c = sh["new_minus_old"], sh["new_minus_old_by_cell"]
        print(f"shift A: new - old {e['value']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] over {e['n']} items; "
              f"[{c['lo']:+.3f}, {c['hi']:+.3f}] over {c['n']} cells ({c['method']})")
    for k, v in brief.items():
        print(f"{k}: accuracy {v['accuracy']['value']:.3f} [{v['accuracy']['lo']:.3f}, {v['accuracy']['hi']:.3f}] "
              f"n={v['n_scored']}; cells [{clustered[k]['lo']:.3f}, {clustered[k]['hi']:.3f}] n={clustered[k]['n']}; "
              f"mode {v['mode_baseline']['value']:.3f}; acc - mode {v['accuracy_minus_mode']['value']:+.3f} "
              f"[{v['accuracy_minus_mode']['lo']:+.3f}, {v['accuracy_minus_mode']['hi']:+.3f}]")
    for k, v in comparisons.items():
        e, c = v["self_minus_cross"], clustered[k]
        print(f"{k}: self - cross {e['value']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] n={v['n_common']}; "
              f"cells [{c['lo']:+.3f}, {c['hi']:+.3f}] n={c['n']}")
    out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
