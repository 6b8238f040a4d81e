"""`introspect-mech finetune --model M --data D --preset P --out DIR [overrides]`.

`--data` is a registered dataset name (see `introspect_mech.data.names('chat')`), a generator
(`gen:backdoor_medical_standin`, `gen:evil_numbers_standin`, ...; `--n` sets its size) or a path to a JSONL(.gz) file.
Every TrainConfig field is an option generated from the dataclass (`--lr 2e-4`, `--layers 15`,
`--no-use-rslora`; see `--help`); `--set field=value` takes a JSON value instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cliargs import add_dataclass_args, dataclass_overrides
from ..commands import DataOptions, ModelOptions, RunOptions
from ..data.specs import load_records
from .config import PRESETS, TrainConfig, preset

__all__ = ["build_parser", "cli_main", "load_records", "run_from_args"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `finetune` command's options: model, data, preset, run directory and every `TrainConfig` field.

    Args:
        parser: a parser (e.g. a subcommand's) to add the options to; None builds a new one.

    Returns:
        The parser.
    """
    p = parser or argparse.ArgumentParser(prog="introspect-mech finetune", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="em", choices=sorted(PRESETS), help="the TrainConfig preset the options override")
    add_dataclass_args(p, ModelOptions, exclude=("adapter",), title="model")
    add_dataclass_args(p, DataOptions, exclude=("seed",), title="data (the subset's seed is --seed)")
    add_dataclass_args(p, RunOptions, title="run directory")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainConfig field with a JSON value (same as its --field option)")
    add_dataclass_args(p, TrainConfig, exclude=("n_examples",), title="training configuration (overrides the preset)")
    return p


def run_from_args(args: argparse.Namespace):
    """Finetune as parsed options say and print a one-line JSON summary.

    Args:
        args: options parsed by `build_parser()`.

    Returns:
        The `TrainResult` of `finetune.train`.

    Raises:
        SystemExit: an invalid configuration or dataset (a one-line message).
    """
    from ..data import DataError
    from ..data import info as data_info
    from ..models import load_model
    from .loop import train

    over = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    over.update(dataclass_overrides(args, TrainConfig, exclude=("n_examples",)))
    mo = ModelOptions(**dataclass_overrides(args, ModelOptions, exclude=("adapter",)))
    do = DataOptions(**dataclass_overrides(args, DataOptions, exclude=("seed",)))
    ro = RunOptions(**dataclass_overrides(args, RunOptions))
    if do.n is not None:
        over["n_examples"] = do.n
    try:
        cfg = preset(args.preset, **over)
        records = load_records(do.data, None, cfg.seed, do.data_dir) if not do.data.startswith("gen:") \
            else load_records(do.data, do.n, cfg.seed, do.data_dir)
    except (DataError, ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None
    info: dict[str, Any] = {"spec": do.data}
    if not do.data.startswith("gen:") and not Path(do.data).exists():
        ds = data_info(do.data)
        info |= {"name": ds.name, "registry_sha256": ds.sha256, "url": ds.url}
    elif Path(do.data).exists():
        from ..runs import file_sha256

        info["file_sha256"] = file_sha256(do.data)
    loaded = load_model(mo.model, device=mo.device)
    res = train(loaded, records, cfg, ro.out, data_info=info, overwrite=ro.overwrite)
    summary = {"out": str(res.out_dir), "weights": str(res.weights_dir), "steps": res.steps,
               "final_loss": res.final_loss, "tokens_per_s": round(res.tokens_per_s, 1),
               "seconds": round(res.seconds, 1), "resumed_from": res.resumed_from}
    print(json.dumps(summary))
    return res


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `introspect-mech finetune`.

    Args:
        argv: the command-line arguments (None: `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    run_from_args(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
