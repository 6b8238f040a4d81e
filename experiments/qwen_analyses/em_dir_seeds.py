"""The misalignment direction over finetune seeds (docs/results.md, "The misalignment direction ... over 3 seeds").

Reads the `summary.jsonl` and `results.json` of `introspect-mech em-direction` runs, one per bad-advice finetune seed,
and gives each proxy effect, the held-out AUROC and the cosine with the persona direction as the mean over the seeds
with the Student-t interval over seeds (`stats.t_interval`, unit "finetune seed": fewer than 10 units, never a
bootstrap), next to each seed's own value. Loads no model.

    python experiments/qwen_analyses/em_dir_seeds.py /work/runs/qwen/em_dir_s0 /work/runs/qwen/em_dir_s1 \
        /work/runs/qwen/em_dir_s2 > em_dir_seeds.json
"""
import json
import sys
from pathlib import Path

from introspect_mech.stats import t_interval


def main(runs: list[Path]) -> dict:
    per_seed: dict[str, list] = {}
    for run in runs:
        for r in map(json.loads, (run / "summary.jsonl").read_text().splitlines()):
            if r["name"].startswith("proxy ") or r["name"].startswith("held-out AUROC"):
                per_seed.setdefault(r["name"], []).append(r["value"])
        res = json.loads((run / "results.json").read_text())
        per_seed.setdefault("cosine with the persona direction at the layer", []).append(res["cos_with_persona"]["at_layer"])
        per_seed.setdefault("layer", []).append(res["layer"])
    out = {"runs": [str(r) for r in runs], "per_seed": per_seed, "over_seeds": {}}
    for name, vals in per_seed.items():
        if len(vals) != len(runs):
            raise SystemExit(f"{name!r}: {len(vals)} values for {len(runs)} runs")
        if name == "layer":
            continue
        est = t_interval(vals, unit="finetune seed", measure="proxy" if name.startswith("proxy") else "exact").to_dict()
        out["over_seeds"][name] = est
        print(f"{name}: {est['value']:+.3f} [{est['lo']:+.3f}, {est['hi']:+.3f}] over {est['n']} seeds; "
              f"per seed {', '.join(f'{v:+.3f}' for v in vals)}", file=sys.stderr)
    return out


if __name__ == "__main__":
    print(json.dumps(main([Path(a) for a in sys.argv[1:]]), indent=1))
