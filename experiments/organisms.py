"""Ground-truth model organisms: plant a mechanism, then check that locate -> intervene recovers it.

    python experiments/organisms.py                                  # embedded model, 2-core CPU (53 min when shared)
    python experiments/organisms.py --preset tiny --out runs/organisms_tiny
    python experiments/organisms.py --model Qwen/Qwen2.5-0.5B-Instruct --preset gpu

Prints the methods x organisms table and writes `<out>/dashboard.html`. See docs/organisms.md.
"""

import argparse
import dataclasses
import time

from introspect_mech.studies import organisms
from introspect_mech.viz import export_dashboard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--preset", default="cpu", choices=sorted(organisms.PRESETS))
    p.add_argument("--out", default="runs/organisms")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of distill_persona (overrides the preset)")
    p.add_argument("--alpha", type=float, default=None, help="|vec| in persona class-mean distances at L")
    p.add_argument("--layer", type=float, default=None, help="block L (int) or relative depth in (0, 1)")
    a = p.parse_args()
    cfg = organisms.PRESETS[a.preset]
    if a.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(int(s) for s in a.seeds.split(",")))
    if a.alpha is not None:
        cfg = dataclasses.replace(cfg, alpha=a.alpha)
    if a.layer is not None:
        cfg = dataclasses.replace(cfg, layer=int(a.layer) if a.layer >= 1 else a.layer)
    t0 = time.time()
    res = organisms.run(a.model, a.out, cfg)
    print()
    print(organisms.format_table(res["table"]))
    print(f"\nwall time {time.time() - t0:.0f} s")
    print(f"dashboard: {export_dashboard(a.out).resolve()}")


if __name__ == "__main__":
    main()
