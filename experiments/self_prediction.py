"""Introspective self-prediction ("Looking Inward"): does a model predict properties of its own
answers better than a model trained on its answers (cross-prediction) and than the mode baseline?

Model A = the base model, B = a second model (default Gemma-3-270M, embedded). A is finetuned to
predict its own object-level properties (self); B is finetuned on A's labels (cross). Both are
scored against A's object-level answers on held-out test tasks.

    python experiments/self_prediction.py                                     # embedded, CPU
    python experiments/self_prediction.py --model Qwen/Qwen2.5-7B-Instruct --other Qwen/Qwen3-8B --n-items 500
"""

import argparse
import json
from pathlib import Path

from introspect_mech import load_model
from introspect_mech.evals.self_prediction import (compare_self_cross, cross_prediction_data, hypothetical_answers,
                                                   load_task, object_level_answers, score_predictions,
                                                   self_prediction_data)
from introspect_mech.finetune import preset, train
from introspect_mech.runs import RunDir
from introspect_mech.viz import export_dashboard

TRAIN = ["colors_long_first_character", "wikipedia_long_first_word", "arc_challenge_non_cot_among_a_or_c"]
TEST = ["animals_long_first_character", "english_words_long_second_character", "survival_instinct_ethical_stance"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model A (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--other", default="gemma3-270m", help="model B for cross-prediction")
    p.add_argument("--n-items", type=int, default=40, help="items per task")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/self_prediction")
    a = p.parse_args()

    out = Path(a.out)
    RunDir(out).write_manifest(title="Introspective self-prediction: self vs cross vs mode baseline",
                               model=a.model or "smollm2-135m-instruct", other_model=a.other, seed=a.seed,
                               data={"train": TRAIN, "test": TEST}, judge="none", decoding="greedy")
    model_a = load_model(a.model)
    answers = {}
    train_rows, test_rows = [], {}
    for t in TRAIN:
        rows = load_task(t, n=a.n_items)
        answers.update(object_level_answers(model_a, rows, out=out / "object" / f"{t}.jsonl"))
        train_rows += rows
    for t in TEST:
        test_rows[t] = load_task(t, n=a.n_items)
        answers.update(object_level_answers(model_a, test_rows[t], out=out / "object" / f"{t}.jsonl"))
    cfg = preset("em", lr=a.lr, epochs=a.epochs, batch_size=8, warmup_steps=2, seed=a.seed)
    self_m = load_model(a.model)
    train(self_m, self_prediction_data(answers, train_rows), cfg, out / "finetunes" / "self")
    cross_m = load_model(a.other)
    train(cross_m, cross_prediction_data(answers, train_rows, "A"), cfg, out / "finetunes" / "cross")
    rows_out, summary = [], {}
    for t, rows in test_rows.items():
        scored = {}
        for kind, m in (("self", self_m), ("cross", cross_m)):
            m.model.eval()
            hyp = hypothetical_answers(m, rows, out=out / "hypothetical" / kind / f"{t}.jsonl")
            scored[kind] = s = score_predictions(rows, answers, hyp, seed=a.seed)
            e, mb = s["accuracy"], s["mode_baseline"]
            rows_out.append({"task": t, "kind": kind, "accuracy": e["value"], "ci_lo": e["lo"], "ci_hi": e["hi"],
                             "n": e["n"], "mode_baseline": mb["value"]})
            print(f"{t} {kind}: accuracy {e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}], mode {mb['value']:.3f}")
        summary[t] = compare_self_cross(scored["self"], scored["cross"], seed=a.seed)
    (out / "self_prediction.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_out if r["accuracy"] is not None))
    (out / "self_vs_cross.json").write_text(json.dumps(summary, indent=2))
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
