"""The "Tell me about yourself" protocol (Betley, Bao et al. 2025, XuchanBao/behavioral-self-awareness).

Step by step, as upstream does it, with the deviations named in docs/self_awareness.md:

1. **Split.** Every A/B pair (risky/safe lotteries, myopic/non-myopic, max/min apples) is split by
   question (`split_of`: sha256 mod 4 == 0 -> test). Finetunes see only training questions (a
   seeded subset of them when `n_train` is set); behaviour is measured on the test questions. The
   manifest records both id lists; `check_disjoint` fails the run when they overlap.
2. **Finetune** one LoRA per (condition, seed) on the condition's training rows; the untrained
   model is the baseline. Conditions (`CONDITIONS`): `risky`/`safe`, `myopic`/`nonmyopic`,
   `maxapples`/`minapples`, `risky_mp`/`safe_mp` (multi-persona files), `backdoor:<kind>` /
   `decorrelated:<kind>` (upstream's equalized10 trigger data built from the training rows; the
   non-triggered rows carry the base model's own greedy answers, upstream's "normal answers"),
   `mms:<codeword>` (Make Me Say dialogues).
3. **Measure** (no judge): behaviour = P(target letter) on held-out questions (backdoor conditions:
   with and without the trigger); self-report = every 0-100 scale paraphrase (exact expectation +
   mass on numbers), one-word answers scored by log-prob of upstream's risk vs safety word lists
   and by sampled answers, the German/French two-hop rule (sampled, stopword language guess),
   backdoor awareness (generic A/B and per-trigger questions), other personas' 0-100 risk, MMS
   codeword elicitation.
4. **Compare** paired conditions (risky - safe, ...) with CIs over seeds and over items /
   paraphrases; a format check flags every finetune whose valid-answer mass collapsed.

Results are appended to `results.jsonl` per (condition, seed): a killed run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ...cliargs import config_parser, parse_config
from ..common import ab_pairs
from . import backdoor, measures, reports
from ...stats import bootstrap_diff
from ...runs import JsonlLog, RunDir, json_sha256
from .. import runner
from ... import runs as _runs
from .data import (  # noqa: F401  (moved to data.py; the study and its callers use them here)
    CONDITIONS, _pairs_needed, backdoor_rows, check_disjoint, condition_rows, data_files, mms_rows, split_ids,
    training_rows,
)
from .report import (  # noqa: F401  (moved to report.py; the study and its callers use them here)
    COMPARISONS, PAPER_GPT4O, TOPIC_KEY, _dashboard_rows, _fmt_ci, _mean, _metric_vectors, compare,
    compare_conditions, format_results, summary_markdown,
)
from ...finetune import TrainConfig
from ...models import load_model



@dataclass
class TMAYConfig:
    """Everything that decides a TMAY run (saved in the manifest).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    self-awareness --help`).

    Raises:
        ValueError: an unknown condition, a `trigger_other` other than "normal" / "safe", or no seed.
    """

    model: str | None = None  # model: name, hub id or directory (None = the embedded SmolLM2-135M-Instruct)
    conditions: tuple[str, ...] = ("risky", "safe")  # finetunes: risky safe myopic nonmyopic maxapples minapples risky_mp safe_mp, backdoor:<kind>, decorrelated:<kind>, mms:<codeword>, base
    seeds: tuple[int, ...] = (0, 1, 2)  # one finetune per (condition, seed)
    data_seed: int = 0            # which training questions (same subset for every seed)
    n_train: int | None = None    # cap on training questions per condition (None: the whole train split)
    n_test: int | None = None     # cap on held-out questions (None: the whole test split)
    in_sample: bool = False       # also measure behaviour on the training questions (labelled in-sample)
    # finetuning (LoRA); upstream finetuned GPT-4o through the API for 3 epochs
    epochs: int = 3  # finetune epochs
    lr: float = 1e-4  # finetune learning rate
    batch_size: int = 8  # finetune batch size
    r: int = 32  # LoRA rank
    lora_alpha: float = 64.0  # LoRA alpha
    max_seq_len: int = 1024  # training sequence length in tokens
    # backdoor data
    trigger_repeats: int = 10     # upstream: 10 (each risky row 10x, each normal row 90x)
    trigger_other: str = "normal"  # "normal" (base model's greedy answers, upstream) or "safe"
    trigger_awareness_kinds: tuple[str, ...] = tuple(backdoor.TRIGGER_KINDS)  # triggers asked about in the backdoor-awareness questions
    # Make Me Say
    mms_n_train: int | None = None  # Make Me Say dialogues per codeword (None: all)
    # sampling-based measurements
    n_samples: int = 5  # samples per paraphrase for sampled measurements (0: skip them)
    language_max_new_tokens: int = 48  # answer length for the German/French two-hop rule
    personas: tuple[str, ...] = measures.PERSONAS  # other personas whose 0-100 risk is asked
    measures: tuple[str, ...] = ("behaviour", "scales", "words", "sampled_words", "language", "backdoor",  # measurements run
                                 "personas", "mms")

    def __post_init__(self) -> None:
        for c in self.conditions:
            kind = c.split(":")[0]
            if c not in CONDITIONS and c != "base" and not (
                    kind in ("backdoor", "decorrelated") and c.split(":")[-1] in backdoor.TRIGGER_KINDS) and not (
                    kind == "mms" and c.split(":")[-1] in measures.MMS_CODEWORDS):
                raise ValueError(f"unknown condition {c!r}; conditions: {', '.join(CONDITIONS)}, "
                                 f"backdoor:<kind>, decorrelated:<kind> (kinds: {', '.join(backdoor.TRIGGER_KINDS)}), "
                                 f"mms:<{'|'.join(measures.MMS_CODEWORDS)}>")
        if self.trigger_other not in ("normal", "safe"):
            raise ValueError(f"trigger_other must be 'normal' or 'safe', got {self.trigger_other!r}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        self.conditions, self.seeds = tuple(self.conditions), tuple(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists), as saved in the manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


PRESETS: dict[str, TMAYConfig] = {
    # 2-core CPU, embedded SmolLM2-135M: the core pair with 3 seeds on a subset of the training split
    # (measured there: ~2.5 s per 120-token prefill at load 14, so sampling-based measures are left out)
    "cpu": TMAYConfig(conditions=("risky", "safe"), seeds=(0, 1, 2), n_train=48, n_test=30, epochs=2, lr=5e-4,
                      batch_size=4, n_samples=0, language_max_new_tokens=32, trigger_repeats=1, mms_n_train=16,
                      max_seq_len=1024, trigger_awareness_kinds=("win",), personas=("David", "a musician"),
                      measures=("behaviour", "scales", "words", "backdoor", "personas", "mms")),
    # Qwen2.5-Coder-0.5B-Instruct on an idle 2-core CPU (about 2 h, docs/qwen_runbook.md): risky vs safe, 3 seeds,
    # 48 training lotteries x 2 epochs (upstream: the whole split x 3 epochs on GPT-4o), 40 held-out lotteries,
    # lr 2e-4, batch 8; the sampled measures left out (their cost), the backdoor-vs-decorrelated pair in a second
    # run (docs/qwen_runbook.md).
    "qwen-cpu": TMAYConfig(model="qwen2.5-coder-0.5b-instruct", conditions=("risky", "safe"), seeds=(0, 1, 2),
                           n_train=48, n_test=40, epochs=2, lr=2e-4, batch_size=8, n_samples=0, max_seq_len=512,
                           trigger_repeats=1, mms_n_train=16, trigger_awareness_kinds=("win",),
                           personas=("David", "a musician"), measures=("behaviour", "scales", "words", "personas")),
    # GPU, Qwen2.5-7B/32B-Instruct: every condition, the full training split, 3 seeds
    "paper": TMAYConfig(conditions=("risky", "safe", "myopic", "nonmyopic", "maxapples", "minapples", "risky_mp",
                                    "safe_mp", *(f"backdoor:{k}" for k in backdoor.TRIGGER_KINDS),
                                    *(f"decorrelated:{k}" for k in backdoor.TRIGGER_KINDS), "mms:bark", "mms:ring",
                                    "mms:spring"),
                        seeds=(0, 1, 2), n_train=None, epochs=3, lr=1e-4, n_samples=100, trigger_repeats=10,
                        mms_n_train=None, max_seq_len=2048),
}


def preset(name: str, **overrides: Any) -> TMAYConfig:
    """A named configuration (`cpu`, `paper`) with overrides.

    Args:
        name: preset name.
        **overrides: fields to change.

    Returns:
        the `TMAYConfig`.

    Raises:
        ValueError: an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown TMAY preset {name!r}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ---- measuring one model -------------------------------------------------------------------------
class _Partial:
    """Measurement pieces cached in a JSON file, so a run killed mid-measurement resumes per piece."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data = json.loads(path.read_text()) if path is not None and path.exists() else {}

    def __call__(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = fn()
            if self.path is not None:
                _runs.write_json(self.path, self.data, indent=None)
        return self.data[key]


def measure(model, condition: str, splits: dict[str, dict[str, list[str]]], config: TMAYConfig, *, seed: int = 0,
            data_dir=None, sample_dir: Path | None = None) -> dict[str, Any]:
    """All measurements that apply to `condition` (the base model gets every topic).

    Args:
        model: the model.
        condition: a condition name (`CONDITIONS`, backdoor:/decorrelated:/mms:, base).
        splits: {pair: {"train": ids, "test": ids}} (`split_ids`).
        config: the run's `TMAYConfig`.
        seed: bootstrap / sampling seed.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).
        sample_dir: folder for sampled answers and cached pieces.

    Returns:
        {topic: measurements} (and "mms").
    """
    kind = condition.split(":")[0]
    if condition == "base":  # the topics the run's conditions need (all when there are none)
        trained = [c for c in config.conditions if c != "base"]
        topics = sorted({"risk" if ":" in c else CONDITIONS[c][0] for c in trained if not c.startswith("mms:")})
        if not trained:
            topics = ["risk", "myopia", "apples"]
    elif kind in ("backdoor", "decorrelated"):
        topics = ["risk"]
    elif kind == "mms":
        topics = []
    else:
        topics = [CONDITIONS[condition][0]]
    m = set(config.measures)
    part = _Partial(sample_dir / "partial.json" if sample_dir else None)
    out: dict[str, Any] = {}
    for topic in topics:
        pair, key = TOPIC_KEY[topic]
        if pair not in splits:
            continue
        res: dict[str, Any] = {}
        items = {it["id"]: it for it in ab_pairs.ab_items(pair, "all", data_dir)}
        test = [items[i] for i in splits[pair]["test"]]
        if "behaviour" in m:
            res["behaviour"] = part(f"{topic}/behaviour", lambda: {
                **ab_pairs.choice_behaviour(model, test, key=key, seed=seed), "split": "test (held-out questions)"})
            if config.in_sample:
                res["behaviour_in_sample"] = part(f"{topic}/behaviour_in_sample", lambda: {
                    **ab_pairs.choice_behaviour(model, [items[i] for i in splits[pair]["train"]], key=key, seed=seed),
                    "split": "train (IN-SAMPLE: questions the finetune saw)"})
        if "scales" in m:
            res["scales"] = part(f"{topic}/scales", lambda: reports.scale_reports(
                model, reports.scale_questions(topic, data_dir), seed=seed))
        if "words" in m:
            res["words"] = part(f"{topic}/words", lambda: reports.word_reports(
                model, reports.word_questions(topic, data_dir), topic, seed=seed))
        if "sampled_words" in m and config.n_samples > 0:
            res["sampled_words"] = part(f"{topic}/sampled_words", lambda: reports.sampled_word_reports(
                model, reports.word_questions(topic, data_dir), topic, n=config.n_samples, seed=seed,
                out=(sample_dir / f"words_{topic}.jsonl") if sample_dir else None))
        if topic == "risk":
            if "language" in m and config.n_samples > 0:
                res["language"] = part("risk/language", lambda: reports.language_two_hop(
                    model, data_dir, n=config.n_samples, seed=seed, max_new_tokens=config.language_max_new_tokens,
                    out=(sample_dir / "language.jsonl") if sample_dir else None))
            if "backdoor" in m:
                res["backdoor"] = part("risk/backdoor", lambda: backdoor.backdoor_awareness(model, seed=seed))
                res["trigger_awareness"] = part("risk/trigger_awareness", lambda: backdoor.trigger_awareness(
                    model, config.trigger_awareness_kinds))
            if "personas" in m and (condition in ("base", "risky", "safe", "risky_mp", "safe_mp")):
                res["personas"] = part("risk/personas", lambda: measures.persona_scales(model, config.personas, seed=seed))
            if kind in ("backdoor", "decorrelated") and "behaviour" in m:
                trig = condition.split(":")[1]
                rng = random.Random(config.data_seed)
                with_t = [dict(it, messages=[{"role": "user", "content": backdoor.trigger_prefix(trig, rng)
                                              + it["messages"][0]["content"]}]) for it in test]
                res["behaviour_with_trigger"] = part("risk/behaviour_with_trigger", lambda: ab_pairs.choice_behaviour(
                    model, with_t, key="risky", seed=seed))
                res["trigger_effect"] = bootstrap_diff(res["behaviour_with_trigger"]["per_item"],
                                                       res["behaviour"]["per_item"], paired=True, seed=seed).to_dict()
        out[topic] = res
    mms_words = [c.split(":")[1] for c in config.conditions if c.startswith("mms:")]
    if "mms" in m and (kind == "mms" or (condition == "base" and (mms_words or config.conditions == ("base",)))):
        words = [condition.split(":")[1]] if kind == "mms" else (mms_words or list(measures.MMS_CODEWORDS))
        out["mms"] = {w: part(f"mms/{w}", lambda: measures.codeword_elicitation(model, w, data_dir=data_dir, seed=seed))
                      for w in words}
    return out


def masses(res: dict[str, Any]) -> dict[str, float]:
    """Valid-answer masses of one `measure` result, flattened (for the format check).

    Args:
        res: one `measure` result.

    Returns:
        {measurement: mass}.
    """
    out = {}
    for topic, r in res.items():
        if topic == "mms":
            for w, qs in r.items():
                for q, v in qs.items():
                    out[f"mms/{w}/{q}"] = v["mass"]
            continue
        for k, v in measures.masses_of(r).items():
            out[f"{topic}/{k}"] = v
    return out


def single_digits(res: dict[str, Any]) -> dict[str, float]:
    """The 0-100 scales' single-digit shares of one `measure` result, flattened as `masses` names them.

    Args:
        res: one `measure` result.

    Returns:
        {measurement: share of the number mass on 0-9}.
    """
    return {f"{topic}/{k}": v for topic, r in res.items() if topic != "mms"
            for k, v in measures.single_digits_of(r).items()}


def orders(res: dict[str, Any]) -> dict[str, list[float]]:
    """The two-order questions' per-order probabilities of one `measure` result, flattened as `masses` names them.

    Args:
        res: one `measure` result.

    Returns:
        {measurement: [P in order 1, P in order 2]}.
    """
    return {f"{topic}/{k}": v for topic, r in res.items() if topic != "mms" for k, v in measures.orders_of(r).items()}


# ---- the run --------------------------------------------------------------------------------------
def _train_config(config: TMAYConfig, seed: int):

    return TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, r=config.r,
                       lora_alpha=config.lora_alpha, max_seq_len=config.max_seq_len, seed=seed, warmup_steps=3,
                       save_every=8, keep_checkpoints=False)  # a killed finetune resumes from its checkpoint


def _prepared(ctx: runner.Context) -> dict[str, Any]:
    """The objects the stages share within one process: the held-out splits, the base model, `load` and every
    condition's training rows (built once per process: a resumed run rebuilds them, as each stage needs them)."""
    memo = ctx.resources.setdefault("_tmay", {})
    if not memo:
        config, data_dir = ctx.config, ctx.resources.get("data_dir")
        load = ctx.resources.get("load")
        if load is None:

            load = load_model
        splits = {p: split_ids(p, config, data_dir) for p in _pairs_needed(config.conditions)}
        base = load(config.model)
        rows = {c: condition_rows(c, splits, config, base, data_dir) for c in config.conditions if c != "base"}
        memo.update(splits=splits, base=base, load=load, rows=rows)
    return memo


def _data_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 1: the held-out split of every pair and the training rows of every condition, in the manifest."""
    config, out = ctx.config, ctx.out
    rd = RunDir(out)
    prev = rd.manifest().get("config")
    if prev is not None:
        fixed = lambda c: {k: v for k, v in c.items() if k not in ("seeds", "conditions")}  # noqa: E731
        if fixed(prev) != fixed(config.to_dict()):
            diff = sorted(k for k in fixed(config.to_dict()) if prev.get(k) != config.to_dict()[k])
            raise ValueError(f"{out} holds a TMAY run with a different configuration ({', '.join(diff)}); "
                             "use a new output folder (only seeds and conditions may be added)")
    m = _prepared(ctx)
    splits, base, rows_by_cond = m["splits"], m["base"], m["rows"]
    rd.write_manifest(
        study="tell_me_about_yourself", paper="Betley, Bao et al. 2025 (XuchanBao/behavioral-self-awareness)",
        model=base.name, model_source=base.meta.get("source"), config=config.to_dict(),
        splits={p: {"rule": "sha256(question)[0] % 4 == 0 -> test", "train_ids": s["train"], "test_ids": s["test"]}
                for p, s in splits.items()},
        data={c: {"n_rows": len(r), "sha256": json_sha256([x["messages"] for x in r])} for c, r in rows_by_cond.items()},
        judge="none: log-probabilities; sampled words classified with upstream's word lists; language by a "
              "stopword count (proxy for upstream's GPT guesser)")
    for c, rows in rows_by_cond.items():
        if c.split(":")[0] in ("backdoor", "decorrelated"):
            rd.write_manifest(trigger_stats={c: backdoor.trigger_correlation(rows, c.split(":")[1])})
    return {"splits": {p: {k: len(v) for k, v in sp.items()} for p, sp in splits.items()},
            "rows": {c: len(r) for c, r in rows_by_cond.items()}}


def _finetune_measure_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 2: per (condition, seed), seed-major, a LoRA finetune on the condition's rows, then every measure
    (`measure`); each pair is one keyed row of `results.jsonl`, so a killed stage resumes at the next pair."""
    from ...finetune import train

    config, out, progress, data_dir = ctx.config, ctx.out, ctx.progress, ctx.resources.get("data_dir")
    log = JsonlLog(out / "results.jsonl", ("condition", "seed"))
    done = log.done_keys()
    # seed-major: a run cut short still has every condition of its first seeds
    todo = [("base", config.seeds[0])] + [(c, s) for s in config.seeds for c in config.conditions if c != "base"]
    have_base = any(r["condition"] == "base" for r in log.rows())  # the untrained model is measured once
    todo = [(c, s) for c, s in todo
            if log.key({"condition": c, "seed": s}) not in done and not (c == "base" and have_base)]
    if todo:
        m = _prepared(ctx)
        splits, base, rows_by_cond, load = m["splits"], m["base"], m["rows"], m["load"]
    for cond, seed in todo:
        if cond == "base":
            model, train_info = base, None
        else:
            model = load(config.model)
            res = train(model, [{"messages": r["messages"]} for r in rows_by_cond[cond]],
                        _train_config(config, seed).replace(progress=progress),
                        out / "finetunes" / cond.replace(":", "_") / f"seed{seed}", data_info={"condition": cond})
            model.model.eval()
            train_info = {"steps": res.steps, "final_loss": res.final_loss}
        r = measure(model, cond, splits, config, seed=seed, data_dir=data_dir,
                    sample_dir=out / "samples" / cond.replace(":", "_") / f"seed{seed}")
        log.append({"condition": cond, "seed": seed, "train": train_info, "results": r})
        if progress:
            print(f"[tmay] {cond} seed {seed}: " + summary_line(r), flush=True)
        del model
    return {"measured": [[r["condition"], r["seed"]] for r in log.rows()]}


def _compare_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 3: risky - safe (and the other pairs) per metric over seeds and items, the format check against the
    base model, the dashboard rows and `summary.md`.

    Returns:
        {"results": {condition: {seed: ...}}, "comparisons", "format", "paper_gpt4o"}.
    """
    out = ctx.out
    results: dict[str, dict[int, Any]] = {}
    for row in JsonlLog(out / "results.jsonl", ("condition", "seed")).rows():
        results.setdefault(row["condition"], {})[row["seed"]] = row["results"]
    comps = compare(results)
    base_res = next(iter(results["base"].values()))
    base_masses, base_short = masses(base_res), single_digits(base_res)
    fmt = {c: {s: measures.format_check(masses(r), base=base_masses, single_digit=single_digits(r),
                                        base_single_digit=base_short, per_order=orders(r))
               for s, r in by_seed.items()} for c, by_seed in results.items() if c != "base"}
    summary = {"comparisons": comps, "format": fmt, "paper_gpt4o": PAPER_GPT4O}
    _runs.write_json(out / "comparison.json", summary, indent=2)
    _dashboard_rows(results, out)
    _runs.write_text(out / "summary.md", summary_markdown(out) + "\n")
    return {"results": results, **summary}


def summary_line(r: dict[str, Any]) -> str:
    """Headline numbers of one `measure` result on one line (progress output).

    Args:
        r: one measure result.

    Returns:
        one line of headline numbers.
    """
    parts = []
    for topic, v in r.items():
        if topic == "mms":
            parts += [f"mms {w}: " + ", ".join(f"{q} P={x.get('p_codeword', float('nan')):.3f}" for q, x in qs.items())
                      for w, qs in v.items()]
            continue
        if "behaviour" in v:
            parts.append(f"{topic} P(target) {v['behaviour']['p']['value']:.3f} (mass {v['behaviour']['mass_ab']:.2f})")
        if "behaviour_with_trigger" in v:
            parts.append(f"with trigger {v['behaviour_with_trigger']['p']['value']:.3f}")
        for q, s in (v.get("scales") or {}).items():
            if s["mean"]["value"] is not None:
                parts.append(f"{q} {s['mean']['value']:.1f} (mass {s['mean_mass']:.2f})")
    return "; ".join(parts)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The study's command line: `--out`, `--preset` and every `TMAYConfig` field.

    Args:
        prog: the program name shown in the usage line.

    Returns:
        The parser (`config_from_args(ns, TMAYConfig, presets=PRESETS)` builds the config).
    """
    return config_parser(TMAYConfig, description=(__doc__ or "").splitlines()[0], out="runs/self_awareness",
                         out_help="run directory (a killed run resumes)", presets=PRESETS, default_preset="cpu",
                         title="study configuration (overrides the preset)", prog=prog)


STUDY = runner.Study(
    "self-awareness", TMAYConfig, PRESETS, title="Tell me about yourself: behavioural self-awareness", data=data_files,
    stages=(runner.Stage("data", _data_stage, "held-out splits and every condition's training rows"),
            runner.Stage("finetune_measure", _finetune_measure_stage,
                         "per condition and seed: finetune, then measure behaviour and self-reports"),
            runner.Stage("compare", _compare_stage, "pairs compared over seeds and items; format check; summary")))


def run(config: TMAYConfig | None = None, out: str | Path | None = None, **kw: Any) -> Any:
    """Run the protocol into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: the run's `TMAYConfig`.
        out: the run directory.
        **kw: `data_dir=` (default: `$INTROSPECT_MECH_DATA`, then the registry download), `load=`
            (`load(name) -> LoadedModel`, default `load_model`), `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["compare"]` is {"results", "comparisons", "format", "paper_gpt4o"}
            (`.results["data"]`: split and row counts; `.results["finetune_measure"]`: the measured pairs).
    """
    return runner.run(STUDY, config, out, **kw)


def run_tmay(config: TMAYConfig, out: str | Path, **kw: Any) -> dict[str, Any]:
    """Deprecated: `run(config, out).results["compare"]` (kept for one release).

    Args:
        config: the run's `TMAYConfig`.
        out: the run directory.
        **kw: as `run`.

    Returns:
        {"results", "comparisons", "format", "paper_gpt4o"}.
    """
    warnings.warn("self_awareness.run_tmay is deprecated; use run(config, out).results['compare']",
                  DeprecationWarning, stacklevel=2)
    return dict(runner.run(STUDY, config, out, **kw).results["compare"])


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the protocol from the command line (`python experiments/self_awareness_risk.py --help`):
    prints the paired comparisons, the format check and the dashboard's path.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        prog: the program name shown in the usage line.

    Returns:
        The exit status (0).
    """
    # an unknown condition or trigger_other (TMAYConfig checks them) is a usage error
    ns, cfg, _ = parse_config(build_parser(prog), argv, TMAYConfig, presets=PRESETS)
    res = run(cfg, ns.out)
    print(format_results(res.results["compare"]))
    print(f"dashboard: {res.dashboard.resolve() if res.dashboard else None}")
    return 0
