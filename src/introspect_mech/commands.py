"""The options of the `introspect-mech` stage commands, as config dataclasses (one source of truth each).

`introspect_mech.cli` turns every class a command is built from into options with
`cliargs.add_dataclass_args` (`--field-name`, help = the field's trailing comment, a field without a
default is a required option) and builds the instances from what was given. The shared pieces:

    ModelOptions   --model --adapter --device     sample, cache, probe, steer, sae train, sae diff (judge: --device)
    SeedOptions    --seed --data-dir              sample, probe (judge: --data-dir)
    DataOptions    --data --n --seed --data-dir   cache, sae train (SAETrainData), sae diff (SAEDiffData)
    RunOptions     --out --overwrite              every command that writes a run directory

and one class per command for what only it takes (`SampleOptions`, `JudgeRunOptions`, `CacheOptions`,
`ProbeOptions`, `SteerOptions`, `SAETrainOptions`, `SAEDiffOptions`); `sae train` adds the library's
`sae.SAETrainConfig` and `judge` adds `evals.judge_spec.JudgeOptions`. Layer options take the
`layers.LayerSpec` words and integers (`--layers 5 10 15`, `--layers middle`); lists are space-separated.

`steer_sweep` is what `introspect-mech steer` runs (a judge-free proxy sweep of one saved direction; it lived in
`studies.steering_proxy` before, where the name still works for one release with a `DeprecationWarning`).

This module imports nothing heavy (the methods import what they use), so building a parser stays fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

from .layers import LAYER_WORDS, LayerSpec

if TYPE_CHECKING:
    from .models import LoadedModel

CliLayers = int | str | tuple[int, ...] | None  # what a `--layers` option holds (a tuple after __post_init__)


def layer_option(value: Any, name: str = "layers") -> str | tuple[int, ...] | None:
    """Check a command-line layer spec: None, "all", "middle", or integers (one int becomes a 1-tuple).

    Args:
        value: the parsed option value.
        name: the option's name in the error message.

    Returns:
        None, the word, or a tuple of ints.

    Raises:
        ValueError: an unknown word, or a word mixed with integers.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in LAYER_WORDS:
            raise ValueError(f"{name}: expected integers or one of {', '.join(LAYER_WORDS)}, got {value!r}")
        return value
    items = (value,) if isinstance(value, int) else tuple(value)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise ValueError(f"{name}: expected integers or one of {', '.join(LAYER_WORDS)} alone, got {list(items)}")
    return items


def _check_ints(obj: Any, **minimum: int) -> None:
    """Refuse an integer option below its minimum (None = the option's "none" is allowed)."""
    for name, lo in minimum.items():
        v = getattr(obj, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {v}")


# ---- shared pieces ------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelOptions:
    """The model a command runs on."""

    model: str | None = None  # embedded name, hub id (Qwen/...), checkpoint dir or .gguf (none: the embedded SmolLM2-135M-Instruct)
    adapter: str | None = None  # PEFT adapter directory (e.g. RUN/adapter from finetune)
    device: str | None = None  # cpu, cuda, cuda:1 or auto (none: cuda if available)

    def load(self, *, with_adapter: bool = True) -> LoadedModel:
        """Load the model (with the adapter unless `with_adapter=False`).

        Args:
            with_adapter: apply `adapter` (False: the base model, e.g. the base side of a diff).

        Returns:
            The `LoadedModel`.
        """
        from .models import load_model

        return load_model(self.model, adapter=self.adapter if with_adapter else None, device=self.device)


@dataclass(kw_only=True)
class SeedOptions:
    """Seed and data folder."""

    seed: int = 0  # random seed (data subsets, sampling, initialisation)
    data_dir: str | None = None  # canonical data folder (none: $INTROSPECT_MECH_DATA)


@dataclass(kw_only=True)
class DataOptions(SeedOptions):
    """The chat records a command reads."""

    data: str  # dataset name, gen:<generator> or JSONL(.gz) path
    n: int | None = None  # a seeded subset of n records (for gen:<generator>, the number generated; none: all)

    def __post_init__(self) -> None:
        _check_ints(self, n=1)

    def records(self) -> list[dict]:
        """The records: a generator's `n`, or a seeded subset of `n` of a dataset or file (in file order).

        Returns:
            The chat records (dicts with "messages").
        """
        from .data.specs import load_records  # the data layer (light); commands itself imports nothing heavy

        generated = self.data.startswith("gen:")
        recs = load_records(self.data, self.n if generated else None, self.seed, self.data_dir)
        if self.n is not None and not generated and self.n < len(recs):
            import random

            recs = [recs[i] for i in sorted(random.Random(self.seed).sample(range(len(recs)), self.n))]
        return recs


@dataclass(kw_only=True)
class RunOptions:
    """The run directory a command writes."""

    out: str  # run directory (rerun the same command to resume)
    overwrite: bool = False  # if --out holds results of a different configuration, delete them and start clean (otherwise refused)


# ---- one class per command ----------------------------------------------------------------------
@dataclass(kw_only=True)
class SampleOptions:
    """What `sample` generates."""

    questions: str  # question YAML path, or a name in <data>/em/questions
    n: int = 1  # samples per prompt
    max_new_tokens: int = 256  # tokens generated per answer
    temperature: float = 1.0  # sampling temperature (0: greedy)
    max_prompts: int | None = None  # only the first N prompts (none: all)
    batch_size: int = 16  # prompts per generation batch
    truncate: bool = False  # drop the oldest tokens of prompts over the context length (recorded per row) instead of refusing

    def __post_init__(self) -> None:
        _check_ints(self, n=1, max_new_tokens=1, batch_size=1, max_prompts=1)
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature: expected a finite number >= 0, got {self.temperature}")


@dataclass(kw_only=True)
class JudgeRunOptions:
    """Which samples `judge` scores."""

    run: str  # run directory holding samples.jsonl from `sample` (the judgements are written there)
    questions: str | None = None  # question file with judge_prompts (none: the one sampled)
    overwrite: bool = False  # if RUN holds judgements by a different judge, delete them and judge again


POOLINGS = ("last_prompt", "response_mean", "response_last", "all")  # = activations.POOLINGS (checked by a test)


@dataclass(kw_only=True)
class CacheOptions:
    """What `cache` stores."""

    layers: CliLayers = None  # decoder blocks: integers (negative from the end) or a LayerSpec word such as middle (none: all)
    positions: Literal["last_prompt", "response_mean", "response_last", "all"] = "response_mean"  # pooling over tokens
    batch_size: int = 8  # conversations per forward pass
    truncate: bool = False  # cut conversations over the context length (listed in activations.json) instead of refusing

    def __post_init__(self) -> None:
        self.layers = layer_option(self.layers)
        _check_ints(self, batch_size=1)


@dataclass(kw_only=True)
class ProbeOptions:
    """The persona data `probe` generates."""

    trait: str = "evil"  # persona trait (a name in <data>/persona)
    questions: int = 8  # trait questions
    instructions: int = 5  # positive / negative system-prompt pairs
    max_new_tokens: int = 64  # tokens per generated answer
    batch_size: int = 16  # prompts per generation batch

    def __post_init__(self) -> None:
        _check_ints(self, questions=1, instructions=1, max_new_tokens=1, batch_size=1)


@dataclass(kw_only=True)
class SteerOptions:
    """The sweep `steer` runs (each layer on its own, against norm-matched random directions)."""

    direction: str  # Direction stem (path without .safetensors, as written by Direction.save)
    op: Literal["add", "ablate"] = "add"  # add the direction, or ablate it
    layers: CliLayers = None  # layers steered one at a time: integers or a LayerSpec word such as middle (none: all)
    alphas: tuple[float, ...] = (1.0, 2.0, 4.0)  # steering strengths (finite numbers)
    scale: Literal["norm", "unit"] = "norm"  # norm: alpha in class-mean distances (Direction.norms); unit: alpha x unit vector
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the random-direction controls
    items: str | None = None  # paired-preference items YAML (none: the built-in EM items)

    def __post_init__(self) -> None:
        self.layers = layer_option(self.layers)
        self.alphas = tuple(float(a) for a in self.alphas)
        if not all(math.isfinite(a) for a in self.alphas):
            raise ValueError(f"--alphas: expected finite numbers (no nan/inf), got {' '.join(map(str, self.alphas))}")
        self.seeds = tuple(self.seeds)


def steer_sweep(model: LoadedModel, direction: Any, out: str | os.PathLike, *, layers: LayerSpec = None,
                alphas: Sequence[float] = (1.0, 2.0, 4.0), op: str = "add", seeds: Sequence[int] = (0, 1, 2),
                scale: Literal["unit", "norm"] = "norm", items: Sequence[dict] | None = None) -> list[dict[str, Any]]:
    """Sweep `direction` (add / ablate) over layers x alphas vs norm-matched random directions, scored
    with the judge-free EM proxy; writes OUT/steering/sweep.jsonl and OUT/steering_sweep.jsonl.

    Args:
        model: a `LoadedModel`.
        direction: the direction (a `Direction` or tensor).
        out: the run directory.
        layers: blocks (a `LayerSpec`; None: all).
        alphas: strengths.
        op: "add" or "ablate".
        seeds: seeds of the norm-matched random directions.
        scale: "norm" (alpha times the raw vector) or "unit".
        items: paired EM items of the proxy (default: the project's).

    Returns:
        The summary rows (one per layer, alpha and kind) with the proxy metric name.
    """
    from . import runs as _runs
    from .evals.metrics import PROXY_PREF, load_em_pairs, paired_preference
    from .runs import RunDir
    from .steering.sweep import summarize, sweep

    run = RunDir(out)
    items = list(items) if items is not None else load_em_pairs()

    def eval_fn(m):  # the judge-free proxy per item (what studies.common.em_proxy.em_proxy_fn computes first)
        rows = paired_preference(m, items, batch_size=16)["rows"]
        return {"proxy_pref": [r["prefers_misaligned"] for r in rows], "proxy_diff": [r["diff"] for r in rows]}

    # eval_fn cannot be hashed: bind what determines it (the proxy's items by value, its metrics)
    binding = {"proxy_items_sha256": _runs.json_sha256(items),
               "metrics": ["proxy_pref", "proxy_diff"]}
    rows = sweep(model, direction, layers=layers, alphas=alphas, eval_fn=eval_fn, out=run.path / "steering", op=op,
                 seeds=seeds, scale=scale, binding=binding)
    out_rows, summary = [], summarize(rows, "proxy_pref")
    for s in summary:
        if s["kind"] != "none":
            out_rows.append({"direction": "direction" if s["kind"] == "direction" else "random", "layer": str(s["layer"]),
                             "alpha": s["alpha"], "metric": s["value"], "metric_name": PROXY_PREF})
        print(f"  {s['op']} layer={s['layer']} alpha={s['alpha']} {s['kind']:9s} {PROXY_PREF}: "
              f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]")
    _runs.write_jsonl(run.path / "steering_sweep.jsonl", out_rows)
    return summary


@dataclass(kw_only=True)
class SAETrainOptions:
    """Where `sae train` reads."""

    layer: int  # decoder block whose residual stream the SAE reconstructs


@dataclass(kw_only=True)
class SAETrainData(DataOptions):
    """The records `sae train` reads its activations from."""

    n: int | None = 256


@dataclass(kw_only=True)
class SAEDiffOptions:
    """What `sae diff` compares."""

    sae: str  # SAE directory in sae-lens format (e.g. RUN/sae from `sae train`)
    direction: str | None = None  # Direction stem for the latents' decoder cosines (e.g. the EM direction)
    top: int = 20  # latents listed each way (largest increases and decreases)

    def __post_init__(self) -> None:
        _check_ints(self, top=1)


@dataclass(kw_only=True)
class SAEDiffData(DataOptions):
    """The records `sae diff` compares base and finetuned on."""

    data: str = "bad_medical_advice"
    n: int | None = 64
