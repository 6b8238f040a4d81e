"""A two-stage study on a tiny random model, for the runner's tests (importable in a subprocess)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from introspect_mech.models import load_model
from introspect_mech.studies import runner
from introspect_mech.viz.rows import ProbeLayerRow, SummaryRow


@dataclass(frozen=True)
class TinyConfig:
    model: str = ""  # a tiny model directory
    n: int = 3  # numbers to draw
    seed: int = 0  # seed


def _count(ctx: runner.Context, stage: str) -> None:
    with open(ctx.out / "executions.txt", "a") as f:  # how often each stage body ran (for the tests)
        f.write(stage + "\n")


def _draw(ctx: runner.Context) -> dict:
    _count(ctx, "draw")
    m = load_model(ctx.config.model)
    ctx.bind_model("base", m)
    x = torch.randn(ctx.config.n).tolist()
    ctx.write(SummaryRow("first draw", x[0], note="torch.randn after the runner's seed"))
    return {"draws": x, "n_layers": m.n_layers}


def _probe(ctx: runner.Context) -> dict:
    _count(ctx, "probe")
    if os.environ.get("TINY_STUDY_DIE") == "probe":
        os._exit(3)  # a kill between stages: `draw` is recorded, `probe` is not
    draws = ctx.results["draw"]["draws"]
    for layer in range(ctx.results["draw"]["n_layers"]):
        ctx.write(ProbeLayerRow("tiny", layer, accuracy=0.5))
    ctx.write(SummaryRow("sum of draws", sum(draws)))
    return {"total": sum(draws), "again": torch.randn(1).item()}


STUDY = runner.Study("tiny", TinyConfig, {"default": TinyConfig()},
                     stages=(runner.Stage("draw", _draw, "draw numbers"), runner.Stage("probe", _probe, "probe")),
                     title="tiny study")


def run(config: TinyConfig | str | Path | None = None, out: str | Path | TinyConfig | None = None, **kw):
    return runner.run(STUDY, config, out, **kw)


if __name__ == "__main__":
    import sys
    run(TinyConfig(model=sys.argv[1]), sys.argv[2])
