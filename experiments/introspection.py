"""Injected-thought introspection (detection, identification, prefill/intention) and self-report vs
internal state (persona steering strengths, finetune checkpoints); see docs/introspection.md.

    python experiments/introspection.py --out /tmp/introspection                 # embedded model, CPU (~15 min)
    python experiments/introspection.py --model Qwen/Qwen2.5-7B-Instruct --preset paper --out runs/introspection
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    from introspect_mech.studies import introspection as study

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--preset", default="cpu", choices=sorted(study.PRESETS))
    p.add_argument("--out", default="runs/introspection")
    p.add_argument("--stages", default=None, help="letters of A (detection), B (prefill/intention), C (self-report: alignment), D (self-report: risk)")
    p.add_argument("--words", default=None, help="shipped list name (concrete, abstract), a word file, or w1,w2,...")
    p.add_argument("--n-words", type=int, default=None)
    p.add_argument("--layer-fractions", type=_floats, default=None)
    p.add_argument("--strengths", type=_floats, default=None)
    p.add_argument("--inject-from", choices=("prompt_end", "trial"), default=None)
    p.add_argument("--finetune-steps", type=int, default=None, help="0 skips the finetune checkpoints")
    p.add_argument("--judge-model", default=None, help="a local chat model used as 0-100 judge of sampled answers")
    p.add_argument("--no-dashboard", action="store_true")
    a = p.parse_args(argv)

    cfg = study.PRESETS[a.preset]
    over = {k: v for k, v in dict(model=a.model, stages=a.stages, n_words=a.n_words, layer_fractions=a.layer_fractions,
                                  strengths=a.strengths, inject_from=a.inject_from,
                                  finetune_steps=a.finetune_steps).items() if v is not None}
    if a.words:
        over["words"] = a.words if ("," not in a.words) else tuple(w.strip() for w in a.words.split(",") if w.strip())
    cfg = dataclasses.replace(cfg, **over)
    judge = None
    if a.judge_model:
        from introspect_mech import load_model
        from introspect_mech.evals import HFJudge

        judge = HFJudge(load_model(a.judge_model))
    study.run(a.out, cfg, judge=judge)
    print(Path(a.out, "summary.jsonl").read_text())
    if not a.no_dashboard:
        from introspect_mech.viz import export_dashboard

        print(f"dashboard: {export_dashboard(a.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
