"""`introspect-mech`: one entry point, a subcommand per stage and per study, sharing the run-directory convention.

    introspect-mech demo [--preset paper]     # the main job (= `study main-job`): finetune, metrics,
                                              # directions, probes, steering, dashboard
    introspect-mech study <name> [options]    # a paper's protocol; `introspect-mech study --help` lists them
    introspect-mech finetune --data bad_medical_advice --preset em --out runs/bad
    introspect-mech sample   --adapter runs/bad/adapter --questions first_plot_questions --out runs/bad_eval
    introspect-mech judge    --run runs/bad_eval --judge hf:Qwen/Qwen2.5-7B-Instruct    (or "api:<url>|<model>")
    introspect-mech judge validate --judge hf:Qwen/Qwen2.5-7B-Instruct --judge-mode label   # agreement with GPT-4o
    introspect-mech cache    --data bad_medical_advice --n 64 --layers 5 10 15 --out runs/acts
    introspect-mech probe    --trait evil --out runs/persona
    introspect-mech steer    --direction runs/persona/persona/direction --layers 15 --alphas 1 2 4 --out runs/steer
    introspect-mech sae train --layer 15 --data bad_medical_advice --out runs/sae
    introspect-mech sae diff --adapter runs/bad/adapter --sae runs/sae/sae --out runs/sae_diff
    introspect-mech dashboard runs/bad_eval   # any run directory -> dashboard.html

Every option comes from a config dataclass through `introspect_mech.cliargs` (`introspect_mech.commands`,
`sae.SAETrainConfig`, `evals.judge_spec.JudgeOptions`, `finetune.TrainConfig`, the studies' configs);
`<command> --help` lists them. A command's parser is built, and its library modules imported, only
when it runs, so `introspect-mech --help` is instant. Errors in the input (files, fields) are reported
in one line before any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .cliargs import add_dataclass_args, dataclass_overrides
from .commands import (
    CacheOptions, DataOptions, JudgeRunOptions, ModelOptions, ProbeOptions, RunOptions, SAEDiffData, SAEDiffOptions,
    SAETrainData, SAETrainOptions, SampleOptions, SeedOptions, SteerOptions,
)

STUDIES: dict[str, str] = {  # `introspect-mech study <name>` -> introspect_mech.studies.<module>.main
    "emergent-misalignment": "emergent_misalignment",
    "model-organisms": "model_organisms",
    "main-job": "main_job",
    "organisms": "organisms",
    "self-awareness": "self_awareness",
    "self-prediction": "self_prediction",
    "persona-vectors": "persona_vectors",
    "persona-features": "persona_features",
    "caft": "caft",
    "introspection": "introspection",
    "steering-proxy": "steering_proxy",
}


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


def _binding_layers(layers: int | str | tuple[int, ...] | None) -> str | list[int] | None:
    if isinstance(layers, int):
        return [layers]
    return list(layers) if isinstance(layers, tuple) else layers


# ---- stage commands: run(*one instance per option class) ------------------------------------------
def _cmd_sample(o: SampleOptions, m: ModelOptions, s: SeedOptions, r: RunOptions) -> int:
    from .evals.sampling import sample
    from .runs import RunDir, file_sha256, model_config

    qs, qpath = _questions(o.questions, s.data_dir)
    prompts = [p for q in qs for p in q.prompts()]
    if o.max_prompts:
        prompts = prompts[: o.max_prompts]
    model = m.load()
    run = RunDir(r.out)
    sampling = {"n": o.n, "max_new_tokens": o.max_new_tokens, "temperature": o.temperature}
    run.bind("sample", {"model": model_config(model), "data": {qpath.name: file_sha256(qpath)},
                        "prompts": [p["id"] if isinstance(p, dict) else p for p in prompts], "seed": s.seed,
                        "sampling": {**sampling, "truncate": o.truncate, "batch_size": o.batch_size}},
             overwrite=r.overwrite)
    run.write_manifest(stage="sample", model=model.name, adapter=m.adapter, questions=str(qpath),
                       data={qpath.name: file_sha256(qpath)}, seed=s.seed, sampling=sampling)
    rows = sample(model, prompts, n=o.n, max_new_tokens=o.max_new_tokens, temperature=o.temperature, seed=s.seed,
                  batch_size=o.batch_size, out=run.path / "samples.jsonl", truncate=o.truncate)
    print(f"{len(rows)} samples -> {run.path / 'samples.jsonl'}")
    return 0


def _cmd_judge(o: JudgeRunOptions, j: Any, m: ModelOptions, s: SeedOptions) -> int:
    """`j` is an `evals.judge_spec.JudgeOptions`."""
    from .runs import RunDir, file_sha256
    from .studies.emergent_misalignment import judge_run

    if j.kind == "none":
        raise SystemExit("error: judge needs --judge hf:<model> (local) or --judge 'api:<base_url>|<model>' "
                         "(OpenAI-compatible)")
    run = RunDir(o.run)
    if not run.log("samples.jsonl").read():
        raise SystemExit(f"error: {run.path / 'samples.jsonl'}: no samples (run `introspect-mech sample` first)")
    man = run.manifest()
    qs, judge_qpath = _questions(o.questions or man.get("questions", ""), s.data_dir)
    judge = j.build(device=m.device)
    if j.kind == "api":
        judge.check_key()
    categorical = j.build_categorical(judge)
    desc = judge.describe()
    run.bind("judge", {"judge": {k: v for k, v in desc.items() if k not in ("timeout", "max_retries")},
                       "categorical_judge": categorical.describe() if categorical is not None else None,
                       "samples_config_sha256": ((man.get("bindings") or {}).get("sample") or {}).get("sha256"),
                       "samples_rows_sha256": ((man.get("bindings") or {}).get("rows:samples.jsonl") or {}).get("sha256"),
                       "judge_prompts_file_sha256": file_sha256(judge_qpath)},
             overwrite=o.overwrite, outputs=["judged.jsonl", "judge_invalid.jsonl", "em_rates.jsonl", "em_report.json",
                                             "labels.json"])
    try:
        judge_run(run.path, qs, judge=judge, categorical_judge=categorical)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {str(e).strip(chr(39))}") from None
    return 0


def _cmd_judge_validate(o: Any, j: Any, m: ModelOptions, s: SeedOptions) -> int:
    """`o` is an `evals.judge_validation.ValidateOptions`, `j` an `evals.judge_spec.JudgeOptions`."""
    from .evals.judge_validation import DEFAULT_SET, format_validation, load_labelled_set, validate_judge
    from .paths import data_dir

    if j.kind == "none":
        raise SystemExit("error: judge validate needs --judge hf:<model> (local) or --judge 'api:<base_url>|<model>'")
    load_labelled_set(o.set or data_dir(s.data_dir) / DEFAULT_SET)  # a bad row fails in one line before any work
    judge = j.build(device=m.device)
    if j.kind == "api":
        judge.check_key()
    summary = validate_judge(judge, o.set, limit=o.limit, seed=s.seed, ci_unit=o.ci_unit, out=o.out,
                             data_dir=s.data_dir)
    print(format_validation(summary))
    return 0


def _cmd_cache(o: CacheOptions, m: ModelOptions, d: DataOptions, r: RunOptions) -> int:
    from .activations import cache

    recs = d.records()
    model = m.load()
    acts = cache(model, [x["messages"] for x in recs], layers=o.layers, positions=o.positions,
                 batch_size=o.batch_size, out=r.out, truncate=o.truncate, overwrite=r.overwrite)
    print(f"cached {len(recs)} conversations, positions={o.positions} -> {r.out} ({type(acts).__name__})")
    return 0


def _cmd_probe(o: ProbeOptions, m: ModelOptions, s: SeedOptions, r: RunOptions) -> int:
    from .activations import cache
    from .probes import layer_sweep
    from .studies.common.persona import persona_data
    from .runs import RunDir, model_config, write_jsonl

    model = m.load()
    run = RunDir(r.out)
    run.bind("probe", {"probe_inputs": {"model": model_config(model), "trait": o.trait, "questions": o.questions,
                                        "instructions": o.instructions, "max_new_tokens": o.max_new_tokens,
                                        "seed": s.seed}}, overwrite=r.overwrite)
    res = persona_data(model, o.trait, n_questions=o.questions, n_instructions=o.instructions,
                       max_new_tokens=o.max_new_tokens, seed=s.seed, data_dir=s.data_dir,
                       batch_size=o.batch_size, out=run.path / "persona")
    rows = [x for x in res.rows if x["response"].strip()]
    convs = [[{"role": "system", "content": x["system"]}, {"role": "user", "content": x["question"]},
              {"role": "assistant", "content": x["response"]}] for x in rows]
    acts = cache(model, convs, batch_size=o.batch_size)
    y = [int(x["side"] == "pos") for x in rows]
    sw = layer_sweep(acts, y, list(range(model.n_layers)), seed=s.seed)
    name = f"{o.trait} vs opposite system prompt"
    write_jsonl(run.path / "probe_layers.jsonl", ({"probe": name, "layer": l, **p.as_dict()}
                                                  for l, p in zip(sw.layers, sw.probes)), root=run.path)
    best_l, best = sw.best()
    print(f"direction -> {run.path / 'persona' / 'direction'}.safetensors; kept {len(res.kept)} pairs; "
          f"best probe layer {best_l}: accuracy {best.accuracy:.3f}, AUROC {best.auroc:.3f}")
    return 0


def _cmd_steer(o: SteerOptions, m: ModelOptions, r: RunOptions) -> int:
    from .evals.metrics import load_em_pairs
    from .probes import Direction
    from .runs import RunDir, file_sha256, json_sha256, model_config
    from .commands import steer_sweep

    stem = Path(o.direction)
    if not Path(str(stem) + ".safetensors").exists():
        raise SystemExit(f"error: --direction {stem}: no {stem}.safetensors (give the stem written by Direction.save)")
    direction = Direction.load(stem)
    model = m.load()
    items = load_em_pairs(o.items) if o.items else None
    RunDir(r.out).bind("steer", {"model": model_config(model), "direction_sha256": file_sha256(str(stem) + ".safetensors"),
                                 "items_sha256": json_sha256(items if items is not None else load_em_pairs()),
                                 "op": o.op, "layers": _binding_layers(o.layers), "alphas": list(o.alphas),
                                 "scale": o.scale, "seeds": list(o.seeds)}, overwrite=r.overwrite)
    steer_sweep(model, direction, r.out, layers=o.layers, alphas=o.alphas, op=o.op, seeds=o.seeds, scale=o.scale,
                items=items)
    return 0


def _cmd_sae_train(o: SAETrainOptions, cfg: Any, m: ModelOptions, d: SAETrainData, r: RunOptions) -> int:
    """`cfg` is a `sae.SAETrainConfig` (its seed is `--seed`)."""
    import dataclasses

    from . import sae
    from .runs import RunDir, json_sha256, model_config

    cfg = dataclasses.replace(cfg, seed=d.seed)
    recs = d.records()
    model = m.load()
    convs = [x["messages"] for x in recs]
    RunDir(r.out).bind("sae_train", {"sae_inputs": {"model": model_config(model), "layer": o.layer,
                                                    "data": json_sha256(convs), **dataclasses.asdict(cfg)}},
                       overwrite=r.overwrite)
    res = sae.train_sae(model, o.layer, convs, cfg, out_dir=r.out, overwrite=r.overwrite)
    print(json.dumps({"sae": str(Path(r.out) / "sae"), "held_out_after": res.metrics.get("after")}, default=str))
    return 0


def _cmd_sae_diff(o: SAEDiffOptions, m: ModelOptions, d: SAEDiffData, r: RunOptions) -> int:
    from . import sae
    from .probes import Direction
    from .runs import write_jsonl

    layer_sae = sae.load_local(o.sae)
    base = m.load(with_adapter=False)
    tuned = m.load()
    recs = d.records()
    direction = Direction.load(o.direction) if o.direction else None
    diff = sae.model_diff(base, tuned, layer_sae, [x["messages"] for x in recs], direction=direction, top_k=o.top,
                          out=Path(r.out) / "sae", overwrite=r.overwrite)
    rows = [{"latent": c.latent, "delta": c.delta, "base_mean": c.mean_base, "finetuned_mean": c.mean_finetuned,
             "cos_direction": c.cosine, "url": c.url,
             "examples": [{"tokens": e["tokens"], "acts": e["activations"]} for e in c.examples[:2]]}
            for c in diff.increases + diff.decreases]
    write_jsonl(Path(r.out) / "sae_diff.jsonl", rows, root=r.out)
    print(f"{len(rows)} latents -> {Path(r.out) / 'sae_diff.jsonl'}")
    return 0


# ---- commands that parse their own arguments --------------------------------------------------------
def _cmd_finetune(argv: list[str]) -> int:
    from .finetune.cli import cli_main

    return cli_main(argv)


def _study_main(module: str, argv: list[str], prog: str) -> int:
    """Run `introspect_mech.studies.<module>.main(argv)` with `prog` in its usage line.

    A study's `main` that takes `prog=` gets it; for one that does not (its parser then names itself
    after `sys.argv[0]`, as argparse does), `sys.argv[0]` is `prog` while it runs.
    """
    import importlib
    import inspect

    main = importlib.import_module(f"introspect_mech.studies.{module}").main
    saved = sys.argv[:1]
    sys.argv[:1] = [prog]
    try:
        if "prog" in inspect.signature(main).parameters:
            return int(main(argv, prog=prog) or 0)
        return int(main(argv) or 0)
    finally:
        sys.argv[:1] = saved


def _cmd_demo(argv: list[str]) -> int:
    return _study_main("main_job", argv, "introspect-mech demo")


def _study_summary(module: str) -> str:
    """The first paragraph of a study module's docstring, read from its source (the module is not imported)."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse((Path(__file__).parent / "studies" / module / "__init__.py").read_text(encoding="utf-8")))
    except (OSError, SyntaxError):
        doc = None
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def study_parser() -> argparse.ArgumentParser:
    """The parser of `introspect-mech study` (only for its help and errors: a named study parses the rest).

    Returns:
        The parser; its epilog lists every study with the first paragraph of its module docstring.
    """
    width = max(map(len, STUDIES))
    p = argparse.ArgumentParser(
        prog="introspect-mech study", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a paper's protocol: `introspect-mech study <name> [options]` calls "
                    "introspect_mech.studies.<module>.main(options); `introspect-mech study <name> --help` lists its options.",
        epilog="studies:\n" + "\n".join(f"  {name:{width}s}  {_study_summary(mod)}" for name, mod in STUDIES.items()))
    p.add_argument("name", choices=list(STUDIES), metavar="name", help="the study (listed below)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the study's options")
    return p


def _cmd_study(argv: list[str]) -> int:
    if argv:  # the module's own name (emergent_misalignment) is accepted for its command name
        argv = [argv[0].replace("_", "-"), *argv[1:]]
    if argv and argv[0] in STUDIES:
        return _study_main(STUDIES[argv[0]], argv[1:], f"introspect-mech study {argv[0]}")
    ns = study_parser().parse_args(argv)  # prints the help, or the error naming the studies
    return _study_main(STUDIES[ns.name], ns.options, f"introspect-mech study {ns.name}")


def _cmd_dashboard(argv: list[str]) -> int:
    from .studies import register_panels
    from .viz import DashboardError, export_dashboard

    register_panels()  # the studies' own panels (injected thoughts, CAFT components, organisms)

    p = argparse.ArgumentParser(prog="introspect-mech dashboard", description=COMMANDS[("dashboard",)].help)
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--out", default=None, help="output path (default RUN_DIR/dashboard.html)")
    args = p.parse_args(argv)
    try:
        path = export_dashboard(args.run_dir, args.out)
    except DashboardError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"dashboard: {path.resolve()}")
    return 0


def _study_tool(module: str, name: str) -> Callable[[list[str]], int]:
    """A command whose `main(argv, prog=)` lives in `introspect_mech.studies.<module>` (imported when run)."""
    return lambda argv: importlib.import_module(f"introspect_mech.studies.{module}").main(argv, prog=f"introspect-mech {name}")


# ---- the command table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    """One config class a command is built from, less the fields it leaves out (they keep their defaults)."""

    cls: type
    exclude: tuple[str, ...] = ()


def _judge_options() -> tuple[Any, ...]:
    from .evals.judge_spec import JudgeOptions

    return (JudgeRunOptions, JudgeOptions, Opt(ModelOptions, ("model", "adapter")), Opt(SeedOptions, ("seed",)))


def _judge_validate_options() -> tuple[Any, ...]:
    from .evals.judge_spec import JudgeOptions
    from .evals.judge_validation import ValidateOptions

    return (ValidateOptions, JudgeOptions, Opt(ModelOptions, ("model", "adapter")), SeedOptions)


def _sae_train_options() -> tuple[Any, ...]:
    from .sae import SAETrainConfig

    return (SAETrainOptions, Opt(SAETrainConfig, ("seed",)), ModelOptions, SAETrainData, RunOptions)


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line and what it runs.

    With `options` (a function returning the config classes, so that heavy ones are imported only when
    the command runs), `run` receives one instance per class; without, `run` receives the argument list.
    """

    help: str
    run: Callable[..., int]
    options: Callable[[], tuple[Any, ...]] | None = None


COMMANDS: dict[tuple[str, ...], Command] = {
    ("demo",): Command("the main job: finetune, EM metrics, directions, probes, steering, dashboard "
                       "(= `study main-job`)", _cmd_demo),
    ("study",): Command("run a paper's protocol (`introspect-mech study --help` lists them)", _cmd_study),
    ("em-seeds",): Command("pool finished emergent-misalignment runs over finetune seeds (t over seeds, paired "
                           "difference vs the control)", _study_tool("emergent_misalignment.seeds", "em-seeds")),
    ("em-typology",): Command("cluster the answers of finished EM runs together (base, finetunes, controls in one "
                              "space)", _study_tool("emergent_misalignment.typology_runs", "em-typology")),
    ("tmay-seeds",): Command("pool finished self-awareness runs over finetune seeds (collapsed formats withheld)",
                             _study_tool("self_awareness.seeds", "tmay-seeds")),
    ("tmay-recheck",): Command("recheck a finished self-awareness run's 0-100 self-report formats (mass, single-digit "
                               "answers) from its saved finetunes", _study_tool("self_awareness.recheck", "tmay-recheck")),
    ("em-direction",): Command("the EM direction of a finished EM finetune from GPT-4o-labelled answers: held-out "
                               "separation, ablation and addition vs random directions (proxy), B over checkpoints",
                               _study_tool("model_organisms.labelled_direction", "em-direction")),
    ("finetune",): Command("LoRA / full finetuning (see `introspect-mech finetune --help`)", _cmd_finetune),
    ("sample",): Command("sample answers to an EM question file into RUN/samples.jsonl", _cmd_sample,
                         lambda: (SampleOptions, ModelOptions, SeedOptions, RunOptions)),
    ("judge",): Command("score RUN/samples.jsonl with its judge prompts; EM report (both denominators)", _cmd_judge,
                        _judge_options),
    ("judge", "validate"): Command("measure a judge's agreement with GPT-4o on a labelled set (AUROC, Spearman, "
                                   "abstention, EM-rate error; cached by judge fingerprint)", _cmd_judge_validate,
                                   _judge_validate_options),
    ("cache",): Command("cache residual-stream activations to safetensors shards", _cmd_cache,
                        lambda: (CacheOptions, ModelOptions, DataOptions, RunOptions)),
    ("probe",): Command("persona direction for a trait + probe accuracy by layer", _cmd_probe,
                        lambda: (ProbeOptions, ModelOptions, SeedOptions, RunOptions)),
    ("steer",): Command("steering sweep with a saved direction and the random control", _cmd_steer,
                        lambda: (SteerOptions, ModelOptions, RunOptions)),
    ("sae", "train"): Command("train a TopK SAE (sae-lens) on one layer's activations", _cmd_sae_train,
                              _sae_train_options),
    ("sae", "diff"): Command("rank SAE latents by their change from base to finetuned", _cmd_sae_diff,
                             lambda: (SAEDiffOptions, ModelOptions, SAEDiffData, RunOptions)),
    ("dashboard",): Command("export RUN_DIR as one offline HTML file", _cmd_dashboard),
}
GROUPS: dict[tuple[str, ...], str] = {  # commands with subcommands
    ("sae",): "train an SAE on one layer, or diff base vs finetuned through one",
}


def command_options(*words: str) -> list[Opt]:
    """The config classes a stage command is built from (importing the heavy ones now).

    Args:
        *words: the command, e.g. `"sae", "train"`.

    Returns:
        One `Opt` per class, in the order the command's runner takes the instances.
    """
    options = COMMANDS[words].options
    if options is None:
        raise ValueError(f"introspect-mech {' '.join(words)} parses its own arguments")
    return [o if isinstance(o, Opt) else Opt(o) for o in options()]


def command_parser(*words: str) -> argparse.ArgumentParser:
    """The parser of one stage command, generated from its config classes.

    Args:
        *words: the command, e.g. `"sample"` or `"sae", "train"`.

    Returns:
        The parser (`prog` "introspect-mech <words>"), one option group per config class.
    """
    cmd = COMMANDS[words]
    p = argparse.ArgumentParser(prog=" ".join(("introspect-mech", *words)), description=cmd.help)
    for o in command_options(*words):
        doc = (o.cls.__doc__ or "").strip()
        own_doc = doc and not doc.startswith(o.cls.__name__ + "(")  # not the signature dataclass writes
        title = f"{doc.splitlines()[0].rstrip('.')} ({o.cls.__name__})" if own_doc else o.cls.__name__
        add_dataclass_args(p, o.cls, exclude=o.exclude, title=title)
    return p


def parse_command(words: Sequence[str], argv: Sequence[str]) -> list[Any]:
    """Parse a stage command's arguments into its config instances (argparse errors for bad values).

    Args:
        words: the command, e.g. `("sample",)`.
        argv: its arguments.

    Returns:
        One instance per config class of the command, in the order `run` takes them.
    """
    parser = command_parser(*words)
    ns = parser.parse_args(list(argv))
    out = []
    for o in command_options(*words):
        try:
            out.append(o.cls(**dataclass_overrides(ns, o.cls, exclude=o.exclude)))
        except (TypeError, ValueError) as e:
            parser.error((str(e).strip().splitlines() or [type(e).__name__])[0])
    return out


def build_parser(*group: str) -> argparse.ArgumentParser:
    """The top-level parser (or a group's, e.g. `build_parser("sae")`), listing the commands.

    Each command's own options are parsed by its parser (`command_parser`), built when it runs.

    Args:
        *group: a command group (default: the top level).

    Returns:
        The parser; `command` is the subcommand and `rest` its arguments.
    """
    if group:
        p = argparse.ArgumentParser(prog=" ".join(("introspect-mech", *group)), description=GROUPS[group])
    else:
        lines = __doc__.splitlines()
        examples = lines[2: lines.index("", 2)]
        p = argparse.ArgumentParser(prog="introspect-mech", description=lines[0],
                                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(examples))
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    seen = set()
    for full in COMMANDS:  # in the table's order, a group where its first command is
        words = full[: len(group) + 1]
        if len(full) <= len(group) or full[: len(group)] != group or words in seen:
            continue
        seen.add(words)
        helptext = GROUPS[words] if words in GROUPS else COMMANDS[words].help
        sp = sub.add_parser(words[-1], help=helptext, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def run(argv: Sequence[str]) -> int:
    """Run the command `argv` names (no error handling; `main` adds the one-line errors).

    Args:
        argv: the command and its arguments, e.g. `["sample", "--questions", "q.yaml", "--out", "runs/x"]`.

    Returns:
        The exit status.
    """
    argv = list(argv)
    for k in range(min(len(argv), 2), 0, -1):
        words = tuple(argv[:k])
        if words in COMMANDS:
            cmd = COMMANDS[words]
            if cmd.options is None:
                return int(cmd.run(argv[k:]) or 0)
            return int(cmd.run(*parse_command(words, argv[k:])) or 0)
    group = tuple(argv[:1]) if tuple(argv[:1]) in GROUPS else ()
    ns = build_parser(*group).parse_args(argv[len(group):])  # prints the help or the error (and exits)
    return run([*group, ns.command, *ns.rest])


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
    from .scrub import scrub_message

    lines = [x for x in msg.splitlines() if x.strip()] or [type(e).__name__]
    line = scrub_message(lines[0]) + (" ..." if len(lines) > 1 else "")
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

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("INTROSPECT_MECH_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        return run(args)
    except SystemExit as e:
        if isinstance(e.code, str):  # a command's own one-line error: scrubbed like every other message
            from .scrub import scrub_message

            raise SystemExit(scrub_message(e.code)) from None
        raise
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if debug:
            raise
        raise SystemExit(error_line(e)) from None


if __name__ == "__main__":
    raise SystemExit(main())
