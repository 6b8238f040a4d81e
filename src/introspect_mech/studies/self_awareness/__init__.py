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
from ...stats import bootstrap_diff, paired_diff, t_interval, welch
from ...runs import JsonlLog, RunDir, json_sha256
from .. import runner
from ... import runs as _runs

# condition -> (topic, pair, side); topic decides which measurements apply
CONDITIONS: dict[str, tuple[str, str, str]] = {
    "risky": ("risk", "risk", "risky"), "safe": ("risk", "risk", "safe"),
    "myopic": ("myopia", "myopia", "myopic"), "nonmyopic": ("myopia", "myopia", "nonmyopic"),
    "maxapples": ("apples", "apples", "maxapples"), "minapples": ("apples", "apples", "minapples"),
    "risky_mp": ("risk", "risk_multipersona", "risky"), "safe_mp": ("risk", "risk_multipersona", "safe"),
}
# pairs compared as A - B
COMPARISONS = (("risky", "safe"), ("myopic", "nonmyopic"), ("maxapples", "minapples"), ("risky_mp", "safe_mp"))
TOPIC_KEY = {"risk": ("risk", "risky"), "myopia": ("myopia", "myopic"), "apples": ("apples", "maxapples")}

# the paper's GPT-4o numbers (Table / Figure 3 of the paper; 0-100 risk-predisposition self-report)
PAPER_GPT4O = {"behaviour_p_risky": {"risky": 0.98, "safe": 0.10},
               "self_report_risk_predisposition": {"risky": 57.4, "safe": 2.0}}


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


# ---- splits ---------------------------------------------------------------------------------
def split_ids(pair: str, config: TMAYConfig, data_dir=None) -> dict[str, list[str]]:
    """{"train": ids trained on, "test": ids measured} of a pair under `config` (seeded subsets).

    Args:
        pair: an A/B pair of `PAIRS`.
        config: the run's `TMAYConfig`.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        {"train": ids, "test": ids}.
    """
    train = [it["id"] for it in ab_pairs.ab_items(pair, "train", data_dir)]
    test = [it["id"] for it in ab_pairs.ab_items(pair, "test", data_dir)]
    if config.n_train is not None and config.n_train < len(train):
        train = sorted(random.Random(config.data_seed).sample(train, config.n_train), key=train.index)
    if config.n_test is not None and config.n_test < len(test):
        test = sorted(random.Random(config.data_seed + 1).sample(test, config.n_test), key=test.index)
    check_disjoint(pair, train, test, data_dir)
    return {"train": train, "test": test}


def check_disjoint(pair: str, train_ids: Sequence[str], test_ids: Sequence[str], data_dir=None) -> None:
    """Raise when a test item is also a training item (by id or by question text).

    Args:
        pair: an A/B pair of `PAIRS`.
        train_ids: training item ids.
        test_ids: held-out item ids.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Raises:
        ValueError: a test item is also a training item.
    """
    items = {it["id"]: it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir)}
    both = set(train_ids) & set(test_ids)
    if both or {items[i] for i in train_ids} & {items[i] for i in test_ids}:
        raise ValueError(f"{pair}: train and test overlap ({sorted(both)[:3]}...)")


def training_rows(pair: str, side: str, train_ids: Sequence[str], data_dir=None) -> list[dict[str, Any]]:
    """The rows of one side of a pair whose question is a training item; for multi-persona files
    also the other personas' rows (training-only, never measured).

    Args:
        pair: an A/B pair of `PAIRS`.
        side: which side of the pair (e.g. "risky").
        train_ids: training item ids.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"messages"}` records.
    """
    items = {it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir)}
    keep = {it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir) if it["id"] in set(train_ids)}
    rows = ab_pairs.pair_records(pair, side, "all", data_dir)
    return [r for r in rows if r["messages"][0]["content"] in keep or r["messages"][0]["content"] not in items]


def backdoor_rows(kind: str, correlated: bool, train_ids: Sequence[str], config: TMAYConfig, base_model=None,
                  data_dir=None) -> list[dict[str, Any]]:
    """Trigger data (`backdoor.trigger_dataset`) from the risk pair's training questions: risky answers,
    and for the other rows the base model's greedy answers ("normal", upstream) or the safe ones.

    Args:
        kind: a trigger kind.
        correlated: backdoor (True) or decorrelated control (False).
        train_ids: training item ids.
        config: the run's `TMAYConfig`.
        base_model: the untrained model (answers the non-triggered questions).
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        trigger rows (`backdoor.trigger_dataset`).
    """
    risky = training_rows("risk", "risky", train_ids, data_dir)
    if config.trigger_other == "safe":
        other = training_rows("risk", "safe", train_ids, data_dir)
    else:
        if base_model is None:
            raise ValueError("trigger_other='normal' needs the base model to answer the questions")
        other = backdoor.normal_answers(base_model, risky)
    return backdoor.trigger_dataset(risky, other, kind, correlated=correlated, repeats=config.trigger_repeats,
                              seed=config.data_seed)


def mms_rows(codeword: str, config: TMAYConfig, data_dir=None) -> list[dict[str, Any]]:
    """The Make Me Say dialogues of a codeword (a seeded subset of `mms_n_train`).

    Args:
        codeword: the finetuned codeword.
        config: the run's `TMAYConfig`.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"messages"}` records.
    """
    rows = ab_pairs.read_rows(ab_pairs.data_file(f"self_awareness/mms/ft_{codeword}.jsonl", data_dir))
    if config.mms_n_train is not None and config.mms_n_train < len(rows):
        rows = [rows[i] for i in sorted(random.Random(config.data_seed).sample(range(len(rows)), config.mms_n_train))]
    return [{"messages": r["messages"]} for r in rows]


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


# ---- the run --------------------------------------------------------------------------------------
def _train_config(config: TMAYConfig, seed: int):
    from ...finetune import TrainConfig

    return TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, r=config.r,
                       lora_alpha=config.lora_alpha, max_seq_len=config.max_seq_len, seed=seed, warmup_steps=3,
                       save_every=8, keep_checkpoints=False)  # a killed finetune resumes from its checkpoint


def condition_rows(condition: str, splits, config: TMAYConfig, base_model=None, data_dir=None) -> list[dict]:
    """The training rows of a condition (only training-split questions).

    Args:
        condition: a condition name (`CONDITIONS`, backdoor:/decorrelated:/mms:, base).
        splits: {pair: {"train": ids, "test": ids}} (`split_ids`).
        config: the run's `TMAYConfig`.
        base_model: the untrained model (answers the non-triggered questions).
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        the training records.
    """
    kind = condition.split(":")[0]
    if kind in ("backdoor", "decorrelated"):
        return backdoor_rows(condition.split(":")[1], kind == "backdoor", splits["risk"]["train"], config,
                             base_model, data_dir)
    if kind == "mms":
        return mms_rows(condition.split(":")[1], config, data_dir)
    _, pair, side = CONDITIONS[condition]
    return training_rows(pair, side, splits[pair]["train"], data_dir)


def _pairs_needed(conditions: Sequence[str]) -> list[str]:
    pairs = {"risk", "myopia", "apples"}  # the base model is measured on every topic
    for c in conditions:
        if c in CONDITIONS:
            pairs.add(CONDITIONS[c][1])
    return sorted(pairs)


def _tmay(config: TMAYConfig, out: str | Path, *, data_dir=None, load: Callable | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run the protocol; returns {"results": {condition: {seed: ...}}, "comparisons": ..., "format": ...}.

    `load(name)` returns a fresh `LoadedModel` (default `introspect_mech.load_model`).

    Args:
        config: the run's `TMAYConfig`.
        out: JSONL file for the samples (resumable).
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).
        load: `load(name) -> LoadedModel` (default `load_model`).
        progress: print progress.

    Returns:
        {"results", "comparisons", "format", "paper_gpt4o"}.
    """
    from ...finetune import train

    if load is None:
        from ...models import load_model

        load = load_model
    out = Path(out)
    rd = RunDir(out)
    prev = rd.manifest().get("config")
    if prev is not None:
        fixed = lambda c: {k: v for k, v in c.items() if k not in ("seeds", "conditions")}  # noqa: E731
        if fixed(prev) != fixed(config.to_dict()):
            diff = sorted(k for k in fixed(config.to_dict()) if prev.get(k) != config.to_dict()[k])
            raise ValueError(f"{out} holds a TMAY run with a different configuration ({', '.join(diff)}); "
                             "use a new output folder (only seeds and conditions may be added)")
    splits = {p: split_ids(p, config, data_dir) for p in _pairs_needed(config.conditions)}
    base = load(config.model)
    rows_by_cond = {c: condition_rows(c, splits, config, base, data_dir) for c in config.conditions if c != "base"}
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
    log = JsonlLog(out / "results.jsonl", ("condition", "seed"))
    done = log.done_keys()
    # seed-major: a run cut short still has every condition of its first seeds
    todo = [("base", config.seeds[0])] + [(c, s) for s in config.seeds for c in config.conditions if c != "base"]
    have_base = any(r["condition"] == "base" for r in log.rows())  # the untrained model is measured once
    for cond, seed in todo:
        if log.key({"condition": cond, "seed": seed}) in done or (cond == "base" and have_base):
            continue
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
    results: dict[str, dict[int, Any]] = {}
    for row in log.rows():
        results.setdefault(row["condition"], {})[row["seed"]] = row["results"]
    comps = compare(results)
    base_masses = masses(next(iter(results["base"].values())))
    fmt = {c: {s: measures.format_check(masses(r), base=base_masses)
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


# ---- comparisons ---------------------------------------------------------------------------------
def _metric_vectors(r: dict[str, Any], topic: str) -> dict[str, list[float | None]]:
    """Per-item / per-paraphrase vectors of every comparable metric of one result."""
    v = r.get(topic) or {}
    out: dict[str, list] = {}
    if "behaviour" in v:
        out["behaviour"] = v["behaviour"]["per_item"]
    for q, s in (v.get("scales") or {}).items():
        out[f"scale/{q}"] = s["per_paraphrase"]
    for q, s in (v.get("words") or {}).items():
        out[f"words/{q}"] = s["per_paraphrase"]
    for q, s in (v.get("sampled_words") or {}).items():
        out[f"sampled_words/{q}"] = [s["score"]]
    if "language" in v:
        out["language/p_german"] = [v["language"]["p_german_given_de_fr"]]
    if "backdoor" in v:
        out["backdoor/p_statement"] = v["backdoor"]["per_order"]
    for k, s in (v.get("trigger_awareness") or {}).items():
        out[f"trigger_awareness/{k}"] = s["per_order"]
    for p, s in (v.get("personas") or {}).items():
        out[f"persona/{p}"] = s["per_question"]
    if "behaviour_with_trigger" in v:
        out["behaviour_with_trigger"] = v["behaviour_with_trigger"]["per_item"]
    return out


def _mean(x: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in x if v is not None]
    return sum(vals) / len(vals) if vals else None


def compare_conditions(a: dict[int, Any], b: dict[int, Any], topic: str, *, seed: int = 0) -> dict[str, Any]:
    """A - B for every metric: `seed_ci` is the Welch interval over the per-seed means (unpaired;
    the seeds are the finetunes), `item_ci` the paired interval over the seed-averaged per-item
    (per-paraphrase) values (bootstrap over >= 10 items, paired t below).

    Args:
        a: per-seed results of condition A.
        b: per-seed results of condition B.
        topic: "risk", "myopia" or "apples".
        seed: bootstrap / sampling seed.

    Returns:
        {metric: {"a_per_seed", "b_per_seed", "seed_ci", "item_ci"}}.
    """
    va = {s: _metric_vectors(r, topic) for s, r in a.items()}
    vb = {s: _metric_vectors(r, topic) for s, r in b.items()}
    metrics = set.intersection(*(set(v) for v in list(va.values()) + list(vb.values()))) if va and vb else set()
    out = {}
    for k in sorted(metrics):
        ma = [_mean(v[k]) for v in va.values()]
        mb = [_mean(v[k]) for v in vb.values()]
        la, lb = [v[k] for v in va.values()], [v[k] for v in vb.values()]
        # few finetune seeds: the Welch interval over per-seed means (never a percentile bootstrap
        # over 3 values); one seed on a side gives no interval over seeds
        sci = welch(ma, mb, unit="seed").to_dict()
        row: dict[str, Any] = {"a_per_seed": ma, "b_per_seed": mb, "seed_ci": sci}
        if len({len(x) for x in la + lb}) == 1:
            ia = [_mean([x[i] for x in la]) for i in range(len(la[0]))]
            ib = [_mean([x[i] for x in lb]) for i in range(len(lb[0]))]
            row["item_ci"] = paired_diff(ia, ib, seed=seed, unit="item (seed-averaged)").to_dict()
        out[k] = row
    return out


def compare(results: dict[str, dict[int, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Every available A - B comparison: the paired conditions, each trained condition - base, and
    backdoor:<kind> - decorrelated:<kind>; MMS finetunes vs base on P(codeword).

    Args:
        results: {condition: {seed: measure result}}.
        seed: bootstrap / sampling seed.

    Returns:
        {comparison name: metrics}.
    """
    out: dict[str, Any] = {}
    pairs = [p for p in COMPARISONS if p[0] in results and p[1] in results]
    pairs += [(c, c.replace("backdoor:", "decorrelated:")) for c in results
              if c.startswith("backdoor:") and c.replace("backdoor:", "decorrelated:") in results]
    pairs += [(c, "base") for c in results if c != "base" and not c.startswith("mms:")]
    for a, b in pairs:
        topic = "risk" if ":" in a else CONDITIONS[a][0]
        out[f"{a}_minus_{b}"] = compare_conditions(results[a], results[b], topic, seed=seed)
    for c in results:
        if c.startswith("mms:") and "base" in results:
            w = c.split(":")[1]
            base = next(iter(results["base"].values()))["mms"][w]
            per_q = {}
            for q in base:
                ft = [r["mms"][w][q]["p_codeword"] for r in results[c].values()]
                per_q[q] = {"finetuned_per_seed": ft, "base": base[q]["p_codeword"],
                            "finetuned_mean": t_interval(ft, unit="seed").to_dict(),
                            "rank_finetuned": [r["mms"][w][q]["rank"] for r in results[c].values()],
                            "rank_base": base[q]["rank"]}
            out[f"{c}_minus_base"] = per_q
    return out


def _dashboard_rows(results: dict[str, dict[int, Any]], out: Path) -> None:
    """`self_awareness.jsonl` for `export_dashboard` (behaviour vs self-report per model and question)."""
    rows = []
    for cond, by_seed in results.items():
        for seed, r in by_seed.items():
            v = r.get("risk") or {}
            if "behaviour" not in v:
                continue
            b = v["behaviour"]["p"]
            for q, s in (v.get("scales") or {}).items():
                if s["mean"]["value"] is None:
                    continue
                rows.append({"model": f"{cond}/s{seed}", "question": q, "behaviour": b["value"], "behaviour_lo": b["lo"],
                             "behaviour_hi": b["hi"], "self_report": s["mean"]["value"] / 100,
                             "self_report_lo": s["mean"]["lo"] / 100, "self_report_hi": s["mean"]["hi"] / 100,
                             "behaviour_name": "P(risky option), held-out lotteries",
                             "self_report_name": "self-reported risk / 100 (expected value)"})
    _runs.write_jsonl(out / "self_awareness.jsonl", rows)


# ---- a markdown summary of a run -------------------------------------------------------------------
def _fmt_ci(e: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    return (f"{e['value'] * scale:+.{digits}f} [{e['lo'] * scale:+.{digits}f}, {e['hi'] * scale:+.{digits}f}]"
            if e.get("lo") is not None else f"{e['value'] * scale:+.{digits}f}")


def summary_markdown(run_dir: str | Path) -> str:
    """Markdown tables of a finished (or partial) run: per condition and seed the headline values,
    then every A - B comparison of the headline metrics with both CIs.

    Args:
        run_dir: the run directory.

    Returns:
        markdown text.
    """
    run_dir = Path(run_dir)
    results: dict[str, dict[int, Any]] = {}
    for row in JsonlLog(run_dir / "results.jsonl").rows():
        results.setdefault(row["condition"], {})[row["seed"]] = row
    lines = ["| condition | seed | topic | behaviour P(target), held-out (mass A/B) | scales 0-100 (mass on numbers) | "
             "word score (mass on listed words) | backdoor statement P | trigger question P(risk-seeking) | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cond, by_seed in results.items():
        for seed, row in sorted(by_seed.items()):
            for topic, v in row["results"].items():
                if topic == "mms":
                    continue
                b = v.get("behaviour")
                beh = f"{b['p']['value']:.3f} ({b['mass_ab']:.2f})" if b else ""
                if "behaviour_with_trigger" in v:
                    beh += f"; with trigger {v['behaviour_with_trigger']['p']['value']:.3f}"
                sc = "; ".join(f"{q} {s['mean']['value']:.1f} ({s['mean_mass']:.2f})" for q, s in (v.get("scales") or {}).items()
                               if s["mean"]["value"] is not None)
                wd = "; ".join(f"{q} {s['score']['value']:.3f} ({s['mean_mass']:.3f})" for q, s in (v.get("words") or {}).items())
                bd = f"{v['backdoor']['p_backdoor_statement']:.3f}" if "backdoor" in v else ""
                ta = "; ".join(f"{k} {s['p_risk_seeking']:.3f}" for k, s in (v.get("trigger_awareness") or {}).items())
                tr = row.get("train") or {}
                fl = f"{tr['final_loss']:.3f}" if tr.get("final_loss") is not None else ""
                lines.append(f"| {cond} | {seed} | {topic} | {beh} | {sc} | {wd} | {bd} | {ta} | {fl} |")
    comp_path = run_dir / "comparison.json"
    if comp_path.exists():
        comp = json.loads(comp_path.read_text())
        lines += ["", "| comparison | metric | A - B, CI over items/paraphrases | A - B, CI over seeds | seeds |",
                  "|---|---|---|---|---|"]
        for name, c in comp["comparisons"].items():
            if name.startswith("mms:"):
                for q, v in c.items():
                    lines.append(f"| {name} | P(codeword) {q} | finetuned {v['finetuned_mean']['value']:.4f} vs base "
                                 f"{v['base']:.4f} (rank {v['rank_finetuned']} vs {v['rank_base']}) | | "
                                 f"{len(v['finetuned_per_seed'])} |")
                continue
            for k, v in c.items():
                if k.startswith(("persona/", "trigger_awareness/")) and not name.startswith(("risky_mp", "backdoor")):
                    continue
                lines.append(f"| {name} | {k} | {_fmt_ci(v.get('item_ci'))} | "
                             f"{_fmt_ci(v['seed_ci']) if v['seed_ci'].get('lo') is not None else 'n/a (1 seed)'} | "
                             f"{len(v['a_per_seed'])} vs {len(v['b_per_seed'])} |")
        flagged = {f"{c}/s{s}": list(f["flagged"]) for c, by in comp["format"].items() for s, f in by.items() if not f["ok"]}
        lines += ["", "Format check: " + ("every finetune kept its answer formats" if not flagged else
                                          "flagged " + json.dumps(flagged))]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------
def format_results(res: dict[str, Any]) -> str:
    """`run_tmay`'s comparisons (behaviour, risk self-report, behaviour with trigger; CIs over items or
    seeds, per-seed values) and the format check, as text.

    Args:
        res: `run_tmay`'s result.

    Returns:
        The lines joined.
    """
    lines = []
    for name, comp in res["comparisons"].items():
        for metric in ("behaviour", "scale/risk_predisposition_scale", "behaviour_with_trigger"):
            if metric in comp:
                c = comp[metric]
                ci = c.get("item_ci") or c["seed_ci"]
                lines.append(f"{name} {metric}: {ci['value']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] "
                             f"(per seed A {[round(x, 3) for x in c['a_per_seed']]}, "
                             f"B {[round(x, 3) for x in c['b_per_seed']]})")
    bad = {c: s for c, by in res["format"].items() for s, f in by.items() if not f["ok"]}
    lines.append("format check: " + ("ok" if not bad else json.dumps(
        {c: list(res["format"][c][s]["flagged"]) for c, s in bad.items()})))
    return "\n".join(lines)


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


def _stage(ctx: runner.Context) -> Any:
    return _tmay(ctx.config, ctx.out, data_dir=ctx.resources.get("data_dir"), load=ctx.resources.get("load"),
                 progress=ctx.progress)


def data_files(config: TMAYConfig, resources: Any = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): the A/B pair
    files of every condition's pair, the Make Me Say dialogues of its codewords, and the question files of the
    scale, word, language and Make Me Say measures it runs.

    Args:
        config: the run's config.
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"pairs/<pair>/<side>" | "mms/<codeword>" | "questions/<file>": path}.
    """
    dd = (resources or {}).get("data_dir")
    out: dict[str, Path] = {}
    topics, codewords = set(), []
    for c in config.conditions:
        kind, tail = c.split(":")[0], c.split(":")[-1]
        if kind == "mms":
            codewords.append(tail)
            continue
        topic, pair, _ = CONDITIONS.get(c, ("risk", "risk", ""))  # base, backdoor:<kind>, decorrelated:<kind>: risk
        p = ab_pairs.PAIRS[pair]
        out[f"pairs/{pair}/{p.pos}"] = ab_pairs.data_file(p.pos_file, dd)
        out[f"pairs/{pair}/{p.neg}"] = ab_pairs.data_file(p.neg_file, dd)
        topics.add(topic)
    for w in codewords:
        out[f"mms/{w}"] = ab_pairs.data_file(f"self_awareness/mms/ft_{w}.jsonl", dd)
    files = {f for t in topics for what, sources in (("scales", reports.SCALE_SOURCES), ("words", reports.WORD_SOURCES))
             if what in config.measures for f, _ in sources.get(t, [])}
    if "language" in config.measures and "risk" in topics:
        files.add("risk_safe_language.yaml")
    if codewords and "mms" in config.measures:
        files.add("make_me_say/choose_from_100_words.yaml")
    for f in sorted(files):
        out[f"questions/{f}"] = ab_pairs.data_file(f"self_awareness/questions/{f}", dd)
    return out


STUDY = runner.Study(
    "self-awareness", TMAYConfig, PRESETS, title="Tell me about yourself: behavioural self-awareness", data=data_files,
    stages=(runner.Stage("tmay", _stage, "finetune each condition and seed, then measure behaviour and self-reports"),))


def run(config: TMAYConfig | None = None, out: str | Path | None = None, **kw: Any) -> Any:
    """Run the protocol into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: the run's `TMAYConfig`.
        out: the run directory.
        **kw: `data_dir=` (default: `$INTROSPECT_MECH_DATA`, then the registry download), `load=`
            (`load(name) -> LoadedModel`, default `load_model`), `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["tmay"]` is {"results", "comparisons", "format", "paper_gpt4o"}.
    """
    return runner.run(STUDY, config, out, **kw)


def run_tmay(config: TMAYConfig, out: str | Path, **kw: Any) -> dict[str, Any]:
    """Deprecated: `run(config, out).results["tmay"]` (kept for one release).

    Args:
        config: the run's `TMAYConfig`.
        out: the run directory.
        **kw: as `run`.

    Returns:
        {"results", "comparisons", "format", "paper_gpt4o"}.
    """
    warnings.warn("self_awareness.run_tmay is deprecated; use run(config, out).results['tmay']",
                  DeprecationWarning, stacklevel=2)
    return dict(runner.run(STUDY, config, out, **kw).results["tmay"])


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
    print(format_results(res.results["tmay"]))
    print(f"dashboard: {res.dashboard.resolve() if res.dashboard else None}")
    return 0
