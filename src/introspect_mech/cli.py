"""`introspect-mech`: one command per stage, all sharing the run-directory convention.

    introspect-mech demo                      # the main job: finetune, metrics, directions, probes,
                                              # steering, dashboard (see introspect_mech.studies.main_job)
    introspect-mech finetune --data bad_medical_advice --preset em --out runs/bad
    introspect-mech sample   --adapter runs/bad/adapter --questions first_plot_questions --out runs/bad_eval
    introspect-mech judge    --run runs/bad_eval --judge-model Qwen/Qwen2.5-7B-Instruct   (or --api-base ...)
    introspect-mech cache    --data bad_medical_advice --n 64 --out runs/acts
    introspect-mech probe    --trait evil --out runs/persona
    introspect-mech steer    --direction runs/persona/persona/direction --layers 15 --alphas 1,2,4 --out runs/steer
    introspect-mech sae train --layer 15 --data bad_medical_advice --out runs/sae
    introspect-mech sae diff --adapter runs/bad/adapter --sae runs/sae/sae --out runs/sae_diff
    introspect-mech dashboard runs/bad_eval   # any run directory -> dashboard.html

Every subcommand imports its library module only when it runs, so `--help` is instant.
Errors in the input (files, fields) are reported in one line before any work starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _floats(s: str) -> list[float]:
    import math

    try:
        out = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not all(math.isfinite(x) for x in out):
        raise argparse.ArgumentTypeError(f"expected finite numbers (no nan/inf), got {s!r}")
    return out


def _model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("--model", default=None, help="embedded name, hub id (Qwen/...), checkpoint dir or .gguf "
                   "(default: embedded SmolLM2-135M-Instruct)")
    if adapter:
        p.add_argument("--adapter", default=None, help="PEFT adapter directory (e.g. RUN/adapter from finetune)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: cuda if available)")


def _load(args: argparse.Namespace):
    from .models import load_model

    return load_model(args.model, adapter=getattr(args, "adapter", None), device=args.device)


def _records(spec: str, n: int | None, seed: int, data_dir: str | None) -> list[dict]:
    from .finetune.cli import load_records

    recs = load_records(spec, n if spec.startswith("gen:") else None, seed, data_dir)
    if n is not None and not spec.startswith("gen:") and n < len(recs):
        import random

        recs = [recs[i] for i in sorted(random.Random(seed).sample(range(len(recs)), n))]
    return recs


def _questions(spec: str, data_dir: str | None):
    from .evals.questions import load_questions
    from .paths import data_dir as _dd

    p = Path(spec)
    if not p.exists():
        p = _dd(data_dir) / "em" / "questions" / (spec if spec.endswith((".yaml", ".yml")) else f"{spec}.yaml")
    if not p.exists():
        raise SystemExit(f"error: question file {spec!r} not found (a path, or a name in <data>/em/questions/)")
    try:
        return load_questions(p), p
    except UnicodeDecodeError as e:
        from .data import DataError

        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(str(p), line, "text", f"not UTF-8 (byte 0x{e.object[e.start]:02x}); re-encode the file as UTF-8") from None


# ---- subcommands --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .studies import main_job

    cfg = main_job.JOB_PRESETS[args.preset]
    over: dict[str, Any] = {k: v for k, v in (("model", args.model), ("device", args.device),
                                              ("data_dir", args.data_dir), ("n_train", args.n_train),
                                              ("seed", args.seed)) if v is not None}
    path = main_job.run(args.out, cfg, **over)
    print(f"dashboard: {path.resolve()}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune.cli import cli_main

    return cli_main(args.rest)


def cmd_sample(args: argparse.Namespace) -> int:
    from .evals.sampling import sample
    from .runs import RunDir, file_sha256

    qs, qpath = _questions(args.questions, args.data_dir)
    prompts = [p for q in qs for p in q.prompts()]
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    model = _load(args)
    run = RunDir(args.out)
    from .runs import model_config

    run.bind("sample", {"model": model_config(model), "data": {qpath.name: file_sha256(qpath)},
                        "prompts": [p["id"] if isinstance(p, dict) else p for p in prompts], "seed": args.seed,
                        "sampling": {"n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                     "truncate": args.truncate}}, overwrite=args.overwrite)
    run.write_manifest(stage="sample", model=model.name, adapter=args.adapter, questions=str(qpath),
                       data={qpath.name: file_sha256(qpath)}, seed=args.seed,
                       sampling={"n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature})
    rows = sample(model, prompts, n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  seed=args.seed, batch_size=args.batch_size, out=run.path / "samples.jsonl", truncate=args.truncate)
    print(f"{len(rows)} samples -> {run.path / 'samples.jsonl'}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from .runs import RunDir, file_sha256
    from .studies.emergent_misalignment import judge_run

    run = RunDir(args.run)
    if not run.log("samples.jsonl").read():
        raise SystemExit(f"error: {run.path / 'samples.jsonl'}: no samples (run `introspect-mech sample` first)")
    man = run.manifest()
    qs, judge_qpath = _questions(args.questions or man.get("questions", ""), args.data_dir)
    categorical = None
    if args.api_base:
        from .evals.judges import APIJudge

        if not args.api_model:
            raise SystemExit("error: --api-base needs --api-model")
        judge = APIJudge(args.api_base, args.api_model, api_key_env=args.api_key_env or None,
                         timeout=args.timeout, max_retries=args.max_retries)
        judge.check_key()
    elif args.judge_model:
        from .evals.em import HFCategoricalJudge
        from .evals.judges import HFJudge
        from .models import load_model

        jm = load_model(args.judge_model, device=args.device)
        judge, categorical = HFJudge(jm), HFCategoricalJudge(jm)
    else:
        raise SystemExit("error: give --judge-model (local) or --api-base and --api-model (OpenAI-compatible)")
    desc = judge.describe()
    run.bind("judge", {"judge": {k: v for k, v in desc.items() if k not in ("timeout", "max_retries")},
                       "categorical_judge": categorical.describe() if categorical is not None else None,
                       "samples_config_sha256": ((man.get("bindings") or {}).get("sample") or {}).get("sha256"),
                       "judge_prompts_file_sha256": file_sha256(judge_qpath)},
             overwrite=args.overwrite, outputs=["judged.jsonl", "judge_invalid.jsonl", "em_rates.jsonl", "em_report.json",
                                                "labels.json"])
    try:
        judge_run(run.path, qs, judge=judge, categorical_judge=categorical)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {str(e).strip(chr(39))}") from None
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .activations import cache

    recs = _records(args.data, args.n, args.seed, args.data_dir)
    model = _load(args)
    acts = cache(model, [r["messages"] for r in recs], layers=args.layers, positions=args.positions,
                 batch_size=args.batch_size, out=args.out, truncate=args.truncate)
    print(f"cached {len(recs)} conversations, positions={args.positions} -> {args.out} ({type(acts).__name__})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .activations import cache
    from .probes import layer_sweep, persona_data
    from .runs import RunDir

    model = _load(args)
    run = RunDir(args.out)
    from .runs import model_config

    run.bind("probe", {"probe_inputs": {"model": model_config(model), "trait": args.trait, "questions": args.questions,
                                        "instructions": args.instructions, "max_new_tokens": args.max_new_tokens,
                                        "seed": args.seed}}, overwrite=args.overwrite)
    res = persona_data(model, args.trait, n_questions=args.questions, n_instructions=args.instructions,
                       max_new_tokens=args.max_new_tokens, seed=args.seed, data_dir=args.data_dir,
                       batch_size=args.batch_size, out=run.path / "persona")
    rows = [r for r in res.rows if r["response"].strip()]
    convs = [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
              {"role": "assistant", "content": r["response"]}] for r in rows]
    x = cache(model, convs, batch_size=args.batch_size)
    y = [int(r["side"] == "pos") for r in rows]
    sw = layer_sweep(x, y, list(range(model.n_layers)), seed=args.seed)
    log = run.path / "probe_layers.jsonl"
    name = f"{args.trait} vs opposite system prompt"
    log.write_text("".join(json.dumps({"probe": name, "layer": l, **p.as_dict()}) + "\n"
                           for l, p in zip(sw.layers, sw.probes)))
    best_l, best = sw.best()
    print(f"direction -> {run.path / 'persona' / 'direction'}.safetensors; kept {len(res.kept)} pairs; "
          f"best probe layer {best_l}: accuracy {best.accuracy:.3f}, AUROC {best.auroc:.3f}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from .probes import Direction
    from .studies.steering_proxy import steer_sweep

    stem = Path(args.direction)
    if not Path(str(stem) + ".safetensors").exists():
        raise SystemExit(f"error: --direction {stem}: no {stem}.safetensors (give the stem written by Direction.save)")
    direction = Direction.load(stem)
    model = _load(args)
    from .evals.metrics import load_em_pairs

    items = load_em_pairs(args.items) if args.items else None
    from .runs import RunDir, file_sha256, json_sha256, model_config

    RunDir(args.out).bind("steer", {"model": model_config(model), "direction_sha256": file_sha256(str(stem) + ".safetensors"),
                                    "items_sha256": json_sha256(items if items is not None else load_em_pairs()),
                                    "op": args.op, "layers": args.layers, "alphas": args.alphas, "scale": args.scale,
                                    "seeds": args.seeds}, overwrite=args.overwrite)
    steer_sweep(model, direction, args.out, layers=args.layers, alphas=args.alphas, op=args.op, seeds=args.seeds,
                scale=args.scale, items=items)
    return 0


def cmd_sae(args: argparse.Namespace) -> int:
    from . import sae
    from .runs import RunDir

    if args.sae_cmd == "train":
        recs = _records(args.data, args.n, args.seed, args.data_dir)
        model = _load(args)
        from .runs import json_sha256, model_config

        RunDir(args.out).bind("sae_train", {"sae_inputs": {
            "model": model_config(model), "layer": args.layer, "data": json_sha256([r["messages"] for r in recs]),
            "k": args.k, "expansion": args.expansion, "seed": args.seed}}, overwrite=args.overwrite)
        res = sae.train_sae(model, args.layer, [r["messages"] for r in recs],
                        sae.SAETrainConfig(k=args.k, expansion=args.expansion), out_dir=args.out)
        print(json.dumps({k: v for k, v in vars(res).items() if isinstance(v, (int, float, str))}, default=str))
        return 0
    from .models import load_model
    from .probes import Direction

    layer_sae = sae.load_local(args.sae)
    base = load_model(args.model, device=args.device)
    ft = load_model(args.model, adapter=args.adapter, device=args.device)
    recs = _records(args.data, args.n, args.seed, args.data_dir)
    direction = Direction.load(args.direction) if args.direction else None
    d = sae.model_diff(base, ft, layer_sae, [r["messages"] for r in recs], direction=direction, top_k=args.top,
                       out=Path(args.out) / "sae")
    rows = [{"latent": c.latent, "delta": c.delta, "base_mean": c.mean_base, "finetuned_mean": c.mean_finetuned,
             "cos_direction": c.cosine, "url": c.url,
             "examples": [{"tokens": e["tokens"], "acts": e["activations"]} for e in c.examples[:2]]}
            for c in d.increases + d.decreases]
    RunDir(args.out)
    (Path(args.out) / "sae_diff.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} latents -> {Path(args.out) / 'sae_diff.jsonl'}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .viz import DashboardError, export_dashboard

    try:
        path = export_dashboard(args.run_dir, args.out)
    except DashboardError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"dashboard: {path.resolve()}")
    return 0


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="introspect-mech", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:13]))
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    d = sub.add_parser("demo", help="the main job: finetune, EM metrics, directions, probes, steering, dashboard")
    d.add_argument("--out", default="runs/main_job", help="run directory (rerun to resume; default runs/main_job)")
    d.add_argument("--preset", default="quick", choices=["quick", "paper"],
                   help="quick: embedded model on CPU in minutes; paper: the EM preset on full data (GPU)")
    _model_args(d, adapter=False)
    d.add_argument("--data-dir", default=None, help="canonical data folder (default $INTROSPECT_MECH_DATA)")
    d.add_argument("--n-train", type=int, default=None, help="training examples per finetune")
    d.add_argument("--seed", type=int, default=None)
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("finetune", help="LoRA / full finetuning (see `introspect-mech finetune --help`)", add_help=False)
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(func=cmd_finetune)

    s = sub.add_parser("sample", help="sample answers to an EM question file into RUN/samples.jsonl")
    _model_args(s)
    s.add_argument("--questions", required=True, help="question YAML path or name in <data>/em/questions")
    s.add_argument("--n", type=int, default=1, help="samples per prompt")
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--max-prompts", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--truncate", action="store_true",
                   help="drop the oldest prompt tokens of prompts over the context length (recorded per row) "
                        "instead of refusing")
    s.add_argument("--overwrite", action="store_true",
                   help="if --out holds samples of a different configuration, delete them and start clean")
    s.set_defaults(func=cmd_sample)

    j = sub.add_parser("judge", help="score RUN/samples.jsonl with its judge prompts; EM report (both denominators)")
    j.add_argument("--run", required=True, help="run directory holding samples.jsonl from `sample`")
    j.add_argument("--questions", default=None, help="question file with judge_prompts (default: the one sampled)")
    j.add_argument("--judge-model", default=None, help="local HF judge (name, hub id or dir)")
    j.add_argument("--api-base", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    j.add_argument("--api-model", default=None)
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    j.add_argument("--device", default=None)
    j.add_argument("--data-dir", default=None)
    j.add_argument("--timeout", type=float, default=60.0, help="seconds per API request (default 60)")
    j.add_argument("--max-retries", type=int, default=5,
                   help="API retries after timeouts, connection errors, 408/409/429/5xx (default 5)")
    j.add_argument("--overwrite", action="store_true",
                   help="if RUN holds judgements by a different judge, delete them and judge again")
    j.set_defaults(func=cmd_judge)

    c = sub.add_parser("cache", help="cache residual-stream activations to safetensors shards")
    _model_args(c)
    c.add_argument("--data", required=True, help="dataset name, gen:<generator> or JSONL path")
    c.add_argument("--n", type=int, default=None)
    c.add_argument("--layers", type=_ints, default=None, help="e.g. 5,10,15 (default all)")
    c.add_argument("--positions", default="response_mean",
                   choices=["last_prompt", "response_mean", "response_last", "all"])
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data-dir", default=None)
    c.add_argument("--out", required=True)
    c.add_argument("--truncate", action="store_true",
                   help="cut conversations over the context length (listed in activations.json) instead of refusing")
    c.set_defaults(func=cmd_cache)

    pr = sub.add_parser("probe", help="persona direction for a trait + probe accuracy by layer")
    _model_args(pr)
    pr.add_argument("--trait", default="evil")
    pr.add_argument("--questions", type=int, default=8)
    pr.add_argument("--instructions", type=int, default=5)
    pr.add_argument("--max-new-tokens", type=int, default=64)
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--data-dir", default=None)
    pr.add_argument("--out", required=True)
    pr.add_argument("--overwrite", action="store_true",
                    help="if --out holds results of a different configuration, delete them and start clean")
    pr.set_defaults(func=cmd_probe)

    st = sub.add_parser("steer", help="steering sweep with a saved direction and the random control")
    _model_args(st)
    st.add_argument("--direction", required=True, help="Direction stem (path without .safetensors)")
    st.add_argument("--op", default="add", choices=["add", "ablate"])
    st.add_argument("--layers", type=_ints, default=None, help="layers to steer one at a time (default all)")
    st.add_argument("--alphas", type=_floats, default=[1.0, 2.0, 4.0])
    st.add_argument("--scale", default="norm", choices=["norm", "unit"],
                    help="norm: alpha in class-mean distances (Direction.norms); unit: alpha x unit vector")
    st.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="random-control seeds")
    st.add_argument("--items", default=None, help="paired-preference items YAML (default: the built-in EM items)")
    st.add_argument("--out", required=True)
    st.add_argument("--overwrite", action="store_true",
                    help="if --out holds a sweep of a different configuration, delete it and start clean")
    st.set_defaults(func=cmd_steer)

    sa = sub.add_parser("sae", help="train an SAE on one layer, or diff base vs finetuned through one")
    sa_sub = sa.add_subparsers(dest="sae_cmd", required=True, metavar="sae_command")
    t = sa_sub.add_parser("train", help="train a TopK SAE (sae-lens) on one layer's activations")
    _model_args(t)
    t.add_argument("--layer", type=int, required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--n", type=int, default=256)
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--expansion", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true",
                   help="if --out holds an SAE of a different configuration, delete it and start clean")
    df = sa_sub.add_parser("diff", help="rank SAE latents by their change from base to finetuned")
    _model_args(df)
    df.add_argument("--sae", required=True, help="SAE directory in sae-lens format")
    df.add_argument("--data", default="bad_medical_advice")
    df.add_argument("--n", type=int, default=64)
    df.add_argument("--direction", default=None, help="Direction stem for cosines (e.g. the EM direction)")
    df.add_argument("--top", type=int, default=20)
    df.add_argument("--seed", type=int, default=0)
    df.add_argument("--data-dir", default=None)
    df.add_argument("--out", required=True)
    sa.set_defaults(func=cmd_sae)

    db = sub.add_parser("dashboard", help="export RUN_DIR as one offline HTML file")
    db.add_argument("run_dir")
    db.add_argument("--out", default=None, help="output path (default RUN_DIR/dashboard.html)")
    db.set_defaults(func=cmd_dashboard)
    return p


def error_line(e: BaseException) -> str:
    """One line for a library error: `error: <file>:<line>: <field>: <what>` where those are known.

    Args:
        e: the exception.

    Returns:
        The line (no traceback, no newline).
    """
    import json as _json

    from .data.records import DataError

    if isinstance(e, DataError):
        msg = str(e)
    elif isinstance(e, FileNotFoundError) and e.filename:
        msg = f"{e.filename}: file not found"
    elif isinstance(e, UnicodeDecodeError):
        msg = f"text: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    elif isinstance(e, _json.JSONDecodeError):
        msg = f"line {e.lineno}: json: invalid JSON ({e.msg} at column {e.colno})"
    elif isinstance(e, (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError)) and \
            type(e).__module__.startswith("introspect_mech"):
        msg = str(e)
    else:
        text = str(e).strip()
        msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    lines = [x for x in msg.splitlines() if x.strip()] or [type(e).__name__]
    line = lines[0] + (" ..." if len(lines) > 1 else "")
    return f"error: {line}" + ("" if isinstance(e, DataError) else "  (--debug shows the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Library errors become one line and a non-zero exit (`--debug`: traceback).

    Args:
        argv: arguments (default `sys.argv[1:]`); `--debug` anywhere (or INTROSPECT_MECH_DEBUG=1)
            lets exceptions propagate with their traceback.

    Returns:
        The exit status (errors exit through `SystemExit` with the one-line message).
    """
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("INTROSPECT_MECH_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        if argv and argv[0] == "finetune":  # its own parser (it owns --help)
            return cmd_finetune(argparse.Namespace(rest=argv[1:]))
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:
        if debug:
            raise
        raise SystemExit(error_line(e)) from None


if __name__ == "__main__":
    raise SystemExit(main())
