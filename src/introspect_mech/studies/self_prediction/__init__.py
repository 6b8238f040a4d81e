"""Looking Inward (Binder et al. 2024, felixbinder/introspection_self_prediction): the protocol.

Steps, as in the paper and its public code (the deviations are listed in docs/self_prediction.md):

1. **Splits.** Tasks are the release's `{dataset}_{property}` files; the *datasets* under `train/`
   train, those under `test/` test (no dataset, hence no object-level prompt, is in both). Every
   property a dataset's files carry is used (the task x property grid). Items are questions: one
   seeded draw of question indices per dataset, shared by all its property files (the release's
   files of one dataset hold the same questions in the same order). Shift items are a disjoint
   draw from the shift datasets.
2. **Self-prediction finetune.** M1's greedy object-level answers on the train questions give the
   labels (property extracted from its own answer); M1 is finetuned on the hypothetical prompts ->
   those labels.
3. **Ground truth = the scored model after its finetune.** The object-level answers (greedy) of the
   finetuned M1 are recomputed on train and test questions; every self-prediction score of M1 is
   against them (the base model's answers are kept only as a labelled diagnostic).
4. **Cross-prediction.** M2 (untouched) is finetuned on the same hypothetical prompts with labels
   from the *finetuned* M1's object-level answers on the train questions, then scored on the test
   questions against the finetuned M1's answers. With two models both directions run
   (A predicts A vs B predicts A; B predicts B vs A predicts B).
5. **Mode baseline** per task x property: always answering the most common value of the target
   model's own answers in that cell.
6. **Behaviour shift.** The self-prediction-trained M1 (adapter merged) is finetuned again, on
   object-level prompts only, towards different answers on some test datasets (a disjoint set of
   shift questions); on held-out questions of those datasets, where its object-level property
   changed, do its hypothetical answers match the new behaviour or the old one?
7. **Features** (optional): linear probes at a few layers read the target model's object-level
   property from the activations at the last token of the *hypothetical* prompt, in the
   self-trained model, the base model and the cross model; controls: shuffled labels and the mode
   (majority-class) rate.

`run(out, PRESETS["cpu"].replace(other="none"))` loads the models the config names and calls
`run_study(out, models={"A": loader, "B": loader}, config=...)`, which writes a run directory:
manifest (models, config, every split's item ids, data hashes, seeds, decoding), object/
hypothetical answers per model state (resumable JSONL), finetunes/<name>/ (resumable), and
`results.json` plus the dashboard's `self_prediction.jsonl`. `main(argv)` is the command line
(`python experiments/self_prediction.py --help`).
"""

from __future__ import annotations

import argparse
import os
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

from ...cliargs import config_parser, parse_config
from ...evals.properties import extract_property
from ...evals.self_prediction import (behaviour_shift, compare_self_cross, hypothetical_answers, object_key,
                                     object_level_answers, object_level_training_data, prediction_training_data,
                                     score_predictions, task_files, task_property)
from ...finetune import TrainConfig, train
from ...models import LoadedModel
from ...runs import JsonlLog, RunDir, file_sha256, json_sha256
from .. import runner
from ... import runs as _runs
from ...activations import cache
from ...layers import resolve_layers
from ...models import FALLBACK_CHAT_TEMPLATE, load_model
from ...probes.self_prediction import probe_property_from_acts
from .data import (  # noqa: F401  (moved to data.py; the study and its callers use them here)
    Splits, _SWAP, _pick, data_files, make_splits, planted_answer, task_grid,
)

if TYPE_CHECKING:
    from peft import PeftModel

Loader = Callable[[], LoadedModel]
Finetune = Callable[[LoadedModel, list, TrainConfig, Path], Any]


@dataclass
class LIConfig:
    """Sizes and settings of one Looking Inward run (see `PRESETS`)."""

    model: str | None = None  # model A (None: the embedded SmolLM2-135M-Instruct)
    other: str = "twin"  # model B: twin (model A again, its finetunes seeded seed+1), none (one model), or a name/path
    device: str | None = None  # device of the models (None: the loader's choice)
    data_dir: str | None = None  # data folder (None: $INTROSPECT_MECH_DATA)
    n_train: int | None = 8  # questions per train dataset (None: all)
    n_test: int | None = 4  # questions per test dataset (None: all not used for the shift)
    n_shift: int = 8  # questions per shift dataset for the shift finetune (disjoint from n_test)
    train_datasets: tuple[str, ...] | None = None  # train datasets (None: every dataset under train/)
    test_datasets: tuple[str, ...] | None = None  # test datasets (None: every dataset under test/)
    properties: tuple[str, ...] | None = None  # properties scored (None: every property the data carry)
    shift_datasets: tuple[str, ...] = ("animals_long", "english_words_long")  # test datasets of the behaviour shift
    shift: bool = True  # run the behaviour-shift test
    shift_all_models: bool = True  # False: only the first model gets the shift finetune (CPU)
    base_reference: bool = True  # also score the untrained models' hypotheticals (a reference)
    probe_all_targets: bool = True  # False: probes only for the first model's behaviour (CPU)
    shift_targets: str = "auto"  # "other" (the other model's answers), "rule" (planted rewrite), "auto"
    # ("auto": "other" for two distinct models, "rule" for one model or a twin)
    probes: bool = True
    probe_layers: int | str | tuple[int, ...] = "quartiles"  # blocks to probe (a layer spec: "quartiles", 7 14 22, ...)
    probe_n_test: int | None = None  # probes on their own draw of this many test questions per dataset
    probe_properties: tuple[str, ...] | None = None  # properties the probes read (None: every test property)
    obj_max_new_tokens: int = 12  # tokens of an object-level answer (enough for the first three words / characters)
    hyp_max_new_tokens: int = 5  # tokens of a hypothetical answer
    gen_batch_size: int = 16  # prompts per generation batch
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=1, batch_size=8, warmup_steps=2))
    shift_finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4, epochs=2, batch_size=4,
                                                                          warmup_steps=1))
    seed: int = 0  # seed of the splits, the finetunes (model A) and the bootstrap

    def replace(self, **kw: Any) -> "LIConfig":
        """A copy with some fields changed.

        Args:
            **kw: field names and their new values.

        Returns:
            The new config (this one is unchanged).
        """
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """The protocol's settings as JSON values (the manifest's `config`; the models, device and data
        folder are recorded elsewhere, under `models`)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in RUN_FIELDS}
        d["finetune"] = self.finetune.to_dict()
        d["shift_finetune"] = self.shift_finetune.to_dict()
        return json.loads(json.dumps(d, default=list))


# fields that say where the models and the data come from (used by `run`; `run_study` takes loaders)
RUN_FIELDS = ("model", "other", "device", "data_dir")

PRESETS: dict[str, LIConfig] = {
    # 2-core CPU shared by ~9 parallel jobs (training ran at ~27 tokens/s), embedded SmolLM2-135M:
    # the full task x property grid with 3 questions per train dataset (72 training records) and 2
    # per test dataset (46 scored items per model); shift and probes for model A only; no
    # untrained-model reference. A mechanics-scale run: its CIs are wide by construction.
    "cpu": LIConfig(n_train=3, n_test=2, n_shift=4, shift_all_models=False, base_reference=False,
                    probe_all_targets=False,
                    finetune=TrainConfig(lr=5e-4, epochs=1, batch_size=4, warmup_steps=2),
                    shift_finetune=TrainConfig(lr=5e-4, epochs=2, batch_size=4, warmup_steps=1)),
    # Two genuinely different models on an idle 2-core CPU (about 2 h, docs/qwen_runbook.md): A = Qwen2.5-Coder-
    # 0.5B-Instruct, B = Qwen2.5-Coder-1.5B-Instruct (a third run puts SmolLM2-135M as B); 12 train questions
    # per train dataset, 10 test questions per test dataset (x its properties: >= 50 items per (model, kind)
    # cell across the test datasets), shift finetune and probes for model A only.
    "qwen-cpu": LIConfig(model="qwen2.5-coder-0.5b-instruct", other="qwen2.5-coder-1.5b-instruct", n_train=12,
                         n_test=10, n_shift=8, shift_all_models=False, base_reference=False, probe_all_targets=False,
                         finetune=TrainConfig(lr=2e-4, epochs=1, batch_size=8, warmup_steps=2),
                         shift_finetune=TrainConfig(lr=2e-4, epochs=2, batch_size=4, warmup_steps=1)),
    # A GPU with Qwen2.5-7B/Qwen3-8B-class models: this project's sizes, not the paper's exact counts
    # (the paper finetuned GPT-4o / GPT-4 / Llama-70B on many thousands of examples).
    "gpu": LIConfig(n_train=1000, n_test=500, n_shift=500, obj_max_new_tokens=48, gen_batch_size=64,
                    finetune=TrainConfig(lr=1e-4, epochs=1, batch_size=32, warmup_steps=10),
                    shift_finetune=TrainConfig(lr=1e-4, epochs=2, batch_size=16, warmup_steps=5)),
    # Mechanics only (tests): two questions per dataset.
    "tiny": LIConfig(n_train=2, n_test=2, n_shift=2, obj_max_new_tokens=6, hyp_max_new_tokens=3, gen_batch_size=8,
                     finetune=TrainConfig(lr=1e-3, epochs=1, batch_size=4, warmup_steps=0, progress=False),
                     shift_finetune=TrainConfig(lr=1e-3, epochs=1, batch_size=4, warmup_steps=0, progress=False)),
}


# ---- the protocol ------------------------------------------------------------------------------

def _default_finetune(model: LoadedModel, records: list, cfg: TrainConfig, out_dir: Path) -> Any:
    return train(model, records, cfg, out_dir)


class _States:
    """Object-level and hypothetical answers of each model state, resumable on disk."""

    def __init__(self, run: RunDir, config: LIConfig, progress: bool):
        self.run, self.cfg, self.progress = run, config, progress
        self.obj: dict[str, dict[str, str]] = {}
        self.hyp: dict[str, dict[str, str]] = {}

    def object(self, state: str, model: LoadedModel, rows: Sequence[dict], part: str = "") -> dict[str, str]:
        # one file per (state, prompt set): a sample file is bound to its prompts (`part` names a second set)
        name = f"{state}.{part}.jsonl" if part else f"{state}.jsonl"
        got = object_level_answers(model, rows, max_new_tokens=self.cfg.obj_max_new_tokens,
                                   batch_size=self.cfg.gen_batch_size, out=self.run.path / "object" / name,
                                   progress=self.progress)
        self.obj.setdefault(state, {}).update(got)
        return self.obj[state]

    def hypothetical(self, state: str, model: LoadedModel, rows: Sequence[dict]) -> dict[str, str]:
        got = hypothetical_answers(model, rows, max_new_tokens=self.cfg.hyp_max_new_tokens,
                                   batch_size=self.cfg.gen_batch_size,
                                   out=self.run.path / "hypothetical" / f"{state}.jsonl", progress=self.progress)
        self.hyp.setdefault(state, {}).update(got)
        return self.hyp[state]


def _data_hashes(rows: Sequence[dict], data_dir: Any) -> dict[str, str]:
    files = task_files(data_dir)
    used = sorted({r["item_id"].split("/")[0] for r in rows})
    return {nm: file_sha256(files[nm]) for nm in used}


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[looking-inward] {msg}", flush=True)


def run_study(
    out: str | Path,
    *,
    models: Mapping[str, Loader],
    model_info: Mapping[str, Any] | None = None,
    config: LIConfig | None = None,
    data_dir: Any = None,
    finetune: Finetune | None = None,
    seeds: Mapping[str, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the Looking Inward protocol for one or two models; rerun the same call to resume.

    Args:
        out: run directory.
        models: {"A": loader, "B": loader} (insertion order; one or two). A loader returns a fresh,
            untrained `LoadedModel` on every call (finetunes never share weights).
        model_info: per model name, what the manifest records (name/path, template, flags).
        config: sizes and settings (`PRESETS["cpu"]` by default).
        data_dir: data folder (default: the project's data dir).
        finetune: `(model, records, TrainConfig, out_dir)` trainer (default `finetune.train`); tests
            pass a planted one.
        seeds: per model, the seed of the finetunes that model undergoes (default `config.seed`).
            Two names with the SAME loader object are a differently-seeded twin: one base model,
            whose untrained answers are computed once and shared.
        progress: print stage lines and show tqdm bars.

    Returns:
        The results dict also written to `results.json`.
    """
    cfg = config or PRESETS["cpu"]
    ft = finetune or _default_finetune
    names = list(models)
    if not 1 <= len(names) <= 2:
        raise ValueError(f"give one or two models, got {names}")
    seed_of = {n: (seeds or {}).get(n, cfg.seed) for n in names}
    twin = len(names) == 2 and models[names[0]] is models[names[1]]
    if twin and seed_of[names[0]] == seed_of[names[1]]:
        raise ValueError("a twin (the same loader twice) needs two different finetune seeds")
    run = RunDir(out)
    splits = make_splits(cfg, data_dir)
    all_rows = splits.train + splits.test + splits.shift_train
    run.write_manifest(
        title="Looking Inward (Binder et al. 2024): self- vs cross-prediction vs mode baseline",
        study="self_prediction", models={n: dict((model_info or {}).get(n, {})) for n in names},
        config=cfg.to_dict(), seed=cfg.seed, finetune_seeds=seed_of, twin=twin, decoding="greedy (temperature 0)", judge="none",
        ground_truth="object-level answers of the scored model after its self-prediction finetune",
        splits=splits.item_ids(), data={"files_sha256": _data_hashes(all_rows, data_dir),
                                        "train_datasets": sorted({task_property(r["item_id"].split('/')[0])[0]
                                                                  for r in splits.train}),
                                        "test_datasets": sorted({task_property(r["item_id"].split('/')[0])[0]
                                                                 for r in splits.test})})
    st = _States(run, cfg, progress)
    ftdir = run.path / "finetunes"
    results: dict[str, Any] = {"models": names, "scores": {}, "comparisons": {}, "diagnostics": {}}
    trained_records: dict[str, list] = {}

    def finetuned(name: str, base: str, records: list, tcfg: TrainConfig, start: LoadedModel | None = None):
        if not records:
            raise ValueError(f"finetune {name}: no training records (the labelling model gave no compliant "
                             f"object-level answers on the train questions)")
        m = start if start is not None else models[base]()
        trained_records[name] = records
        (ftdir / name).mkdir(parents=True, exist_ok=True)
        ft(m, records, tcfg.replace(seed=seed_of[base]), ftdir / name)  # binds its data itself (before any write)
        _runs.write_text(ftdir / name / "records_sha256.txt", json_sha256([r["messages"] for r in records]) + "\n")
        m.model.eval()
        return m

    # 1. base models: object-level behaviour (train questions -> self-prediction labels; test questions
    #    -> the untrained model's own reference score) and untrained hypothetical answers
    for n in names:
        if twin and n == names[1]:  # the same untrained model: the same greedy answers
            st.obj[f"{n}_base"] = st.obj[f"{names[0]}_base"]
            if cfg.base_reference:
                st.hyp[f"{n}_base"] = st.hyp[f"{names[0]}_base"]
            continue
        _say(progress, f"{n} base: object-level and hypothetical answers")
        m = models[n]()
        m.model.eval()
        st.object(f"{n}_base", m, splits.train + (splits.test if cfg.base_reference else []))
        if cfg.base_reference:
            st.hypothetical(f"{n}_base", m, splits.test)
        del m
    # 2-3. self-prediction finetune of each model, then its own behaviour recomputed
    self_models: dict[str, LoadedModel] = {}
    for n in names:
        _say(progress, f"{n}: self-prediction finetune on its own (base) behaviour")
        recs = prediction_training_data(splits.train, st.obj[f"{n}_base"], source=f"{n}_base")
        m = finetuned(f"self_{n}", n, recs, cfg.finetune)
        shifted_here = cfg.shift and (cfg.shift_all_models or n == names[0])
        st.object(f"{n}_self", m, splits.train + splits.test + (splits.shift_train if shifted_here else []))
        st.hypothetical(f"{n}_self", m, splits.test)
        self_models[n] = m
    # 4. cross-prediction: P (untouched) trained on the finetuned T's behaviour
    cross_models: dict[tuple[str, str], LoadedModel] = {}
    for t in names:
        for p in names:
            if p == t:
                continue
            _say(progress, f"{p} trained to predict {t}_self (cross-prediction)")
            recs = prediction_training_data(splits.train, st.obj[f"{t}_self"], source=f"{t}_self")
            m = finetuned(f"cross_{p}_predicts_{t}", p, recs, cfg.finetune)
            st.hypothetical(f"{p}_predicts_{t}", m, splits.test)
            if cfg.probes:
                cross_models[(p, t)] = m
            else:
                del m
    # 5. scores (ground truth: the finetuned target's own behaviour)
    seed = cfg.seed
    sc = results["scores"]
    for t in names:
        gt = st.obj[f"{t}_self"]
        sc[f"{t}_predicts_{t}"] = score_predictions(splits.test, gt, st.hyp[f"{t}_self"], seed=seed)
        if cfg.base_reference:
            sc[f"{t}_base_predicts_{t}_base"] = score_predictions(splits.test, st.obj[f"{t}_base"],
                                                                  st.hyp[f"{t}_base"], seed=seed)
            # diagnostic only (what the pre-protocol code scored): the finetuned model vs its OLD behaviour
            results["diagnostics"][f"{t}_self_vs_pre_finetune_behaviour"] = _brief(
                score_predictions(splits.test, st.obj[f"{t}_base"], st.hyp[f"{t}_self"], seed=seed))
            results["diagnostics"][f"{t}_behaviour_changed_by_self_finetune"] = _changed(
                splits.test, st.obj[f"{t}_base"], gt)
        # on the train questions (always computed): how far the self finetune moved the model's behaviour
        results["diagnostics"][f"{t}_train_behaviour_changed_by_self_finetune"] = _changed(
            splits.train, st.obj[f"{t}_base"], st.obj[f"{t}_self"])
        for p in names:
            if p == t:
                continue
            sc[f"{p}_predicts_{t}"] = score_predictions(splits.test, gt, st.hyp[f"{p}_predicts_{t}"], seed=seed)
            results["comparisons"][f"{t}: self vs {p}"] = compare_self_cross(sc[f"{t}_predicts_{t}"],
                                                                             sc[f"{p}_predicts_{t}"], seed=seed)
    # 6. features: probes on the hypothetical prompt for the target's object-level property
    if cfg.probes:
        probe_rows = splits.test
        if cfg.probe_n_test is not None:  # a larger draw of test questions, used by the probes only
            probe_rows = make_splits(cfg.replace(n_test=cfg.probe_n_test, shift=False), data_dir).test
            run.write_manifest(probe_item_ids=[r["item_id"] for r in probe_rows])
        if cfg.probe_properties is not None:
            probe_rows = [r for r in probe_rows if r["behavioral_property"] in cfg.probe_properties]
        for t in (names if cfg.probe_all_targets else names[:1]):  # the target's labels on these questions
            st.object(f"{t}_self", self_models[t], probe_rows, part="probe")
        results["features"] = _features(names, models, self_models, cross_models, probe_rows, st, cfg, progress)
    cross_models.clear()
    # 7. behaviour shift (last: it merges and retrains the self-prediction-trained models)
    if cfg.shift:
        results["shift"] = {}
        for n in (names if cfg.shift_all_models else names[:1]):
            mode = cfg.shift_targets
            if mode == "auto":  # a twin's answers barely differ from the model's own: plant a rule instead
                mode = "other" if len(names) == 2 and not twin else "rule"
            if mode == "other" and len(names) < 2:
                raise ValueError("shift_targets='other' needs two models")
            if mode == "other":
                o = next(x for x in names if x != n)
                targets = {object_key(r): st.obj[f"{o}_self"][object_key(r)] for r in splits.shift_train}
            elif mode == "rule":
                targets = {object_key(r): planted_answer(st.obj[f"{n}_self"][object_key(r)]) for r in splits.shift_train}
            else:
                raise ValueError(f"shift_targets must be 'auto', 'other' or 'rule', got {cfg.shift_targets!r}")
            _say(progress, f"{n}_self: behaviour-shift finetune ({mode} targets)")
            m = self_models.pop(n)
            if m.has_adapter:  # the self-prediction-trained weights, merged; the shift trains a new adapter
                m.model = cast("PeftModel", m.model).merge_and_unload()  # has_adapter: a PeftModel
            recs = object_level_training_data(splits.shift_train, targets, source=f"shift:{mode}")
            m = finetuned(f"shift_{n}", n, recs, cfg.shift_finetune, start=m)
            st.object(f"{n}_shifted", m, splits.shift_eval)
            st.hypothetical(f"{n}_shifted", m, splits.shift_eval)
            r = behaviour_shift(splits.shift_eval, st.obj[f"{n}_self"], st.obj[f"{n}_shifted"],
                                st.hyp[f"{n}_shifted"], seed=seed)
            r["targets"] = mode
            # how many shift targets differ (in property) from the model's own pre-shift answers
            r["shift_targets_differ_from_own"] = _changed(splits.shift_train, st.obj[f"{n}_self"], targets)
            r["self_prediction_before_shift"] = _brief(score_predictions(splits.shift_eval, st.obj[f"{n}_self"],
                                                                         st.hyp[f"{n}_self"], seed=seed))
            results["shift"][n] = r
            del m
    _runs.write_json(run.path / "results.json", _strip_rows(results), indent=2)
    _dashboard_rows(run, results)
    run.write_manifest(finished=True, trained_records_sha256={k: json_sha256([r["messages"] for r in v])
                                                              for k, v in trained_records.items()})
    results["trained_records"] = trained_records
    return results


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k != "rows"}


def _strip_rows(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_rows(v) for k, v in x.items() if k not in ("rows", "trained_records")}
    return x


def _changed(rows: Sequence[dict], old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    """How many rows' object-level property differs between two sets of answers."""
    n = ch = 0
    for r in rows:
        prop, opt = r["behavioral_property"], r.get("option_matching_ethical_stance")
        a = extract_property(old.get(object_key(r)), prop, opt)
        b = extract_property(new.get(object_key(r)), prop, opt)
        if a is None or b is None:
            continue
        n += 1
        ch += a != b
    return {"n_compared": n, "n_changed": ch, "fraction_changed": ch / n if n else None}


def _dashboard_rows(run: RunDir, results: dict[str, Any]) -> None:
    rows = []
    for key, s in results["scores"].items():
        e, mb = s["accuracy"], s["mode_baseline"]
        if e["value"] is None:
            continue
        rows.append({"task": "all test tasks", "kind": key, "accuracy": e["value"], "ci_lo": e["lo"],
                     "ci_hi": e["hi"], "n": e["n"], "mode_baseline": mb["value"]})
    _runs.write_jsonl(run.path / "self_prediction.jsonl", rows)


def _features(names, models, self_models, cross_models, test_rows, st: _States, cfg: LIConfig,
              progress: bool) -> dict[str, Any]:
    """Probes reading the target's object-level property from each reader's activations at the last
    token of the hypothetical prompts (one activation cache per reader, shared by all properties and
    by the shuffled-label control)."""

    out: dict[str, Any] = {}
    name = "probes.jsonl" if cfg.probe_n_test is None else f"probes_n{cfg.probe_n_test}.jsonl"
    log = JsonlLog(st.run.path / name, ("target", "reader", "property", "control"))
    done = {log.key(r): r for r in log.rows()}
    props = sorted({r["behavioral_property"] for r in test_rows})
    for t in (names if cfg.probe_all_targets else names[:1]):
        # each reader is looked up (the base one loaded) only when its activations are needed
        readers: dict[str, Callable[[], LoadedModel]] = {f"{t}_self": partial(self_models.__getitem__, t),
                                                         f"{t}_base": models[t]}
        for p, tt in cross_models:
            if tt == t:
                readers[f"{p}_predicts_{t}"] = partial(cross_models.__getitem__, (p, tt))
        for reader, get in readers.items():
            keys = [(t, reader, prop, c) for prop in props for c in ("none", "shuffled_labels")]
            if all(k in done for k in keys):
                acts = None
            else:
                _say(progress, f"probes: {reader} activations on the hypothetical prompts")
                m = get()
                m.model.eval()
                layer_ids = resolve_layers(cfg.probe_layers, m.n_layers)
                acts = cache(m, [r["hypothetical_prompt"] for r in test_rows], layers=layer_ids,
                             positions="last_prompt", batch_size=cfg.gen_batch_size, progress=progress)
                del m
            for (tt, rd, prop, control) in keys:
                key = (tt, rd, prop, control)
                if key not in done:
                    idx = [i for i, r in enumerate(test_rows) if r["behavioral_property"] == prop]
                    assert acts is not None  # cached above unless every key of this reader is done
                    try:
                        res = probe_property_from_acts(acts[idx], [test_rows[i] for i in idx], st.obj[f"{t}_self"],
                                                       layer_ids, shuffle_labels=control == "shuffled_labels",
                                                       seed=cfg.seed)
                        row = {"target": t, "reader": rd, "property": prop, "control": control, **res}
                    except ValueError as e:
                        row = {"target": t, "reader": rd, "property": prop, "control": control, "skipped": str(e)}
                    log.append(row)
                    done[key] = row
                out.setdefault(t, {}).setdefault(prop, {}).setdefault(rd, {})[control] = done[key]
    return out


# ---- the run from a config, and the command line ------------------------------------------------------

def model_info(name: str | None, loaded: LoadedModel) -> dict[str, Any]:
    """What the manifest records about one model: name, size, and whether its chat template is the
    fallback one (a base model: flagged, cross-prediction is then confounded by format).

    Args:
        name: the model's name / path as given (None = the embedded SmolLM2-135M-Instruct).
        loaded: the loaded model.

    Returns:
        {"name", "n_layers", "d_model", "chat_template", "flag" (a warning, or None)}.
    """

    fallback = loaded.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    return {"name": name or "smollm2-135m-instruct", "n_layers": loaded.n_layers, "d_model": loaded.d_model,
            "chat_template": "fallback (base model: no template of its own)" if fallback else "model's own",
            "flag": "BASE model with the fallback template: cross-prediction is confounded by format" if fallback else None}


def _self_prediction(out: str | Path, config: LIConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the protocol on the models `config` names (`model`; `other`: "twin", "none" or a second
    model); rerun the same call to resume.

    Args:
        out: run directory.
        config: every option (default `PRESETS["cpu"]`).
        progress: print stage lines and show tqdm bars.

    Returns:
        The results of `run_study` (also written to `out/results.json`).
    """

    cfg = config or PRESETS["cpu"]

    def loader(name: str | None) -> Loader:
        return lambda: load_model(name, device=cfg.device)

    load_a = loader(cfg.model)
    models, seeds, info = {"A": load_a}, {"A": cfg.seed}, {"A": model_info(cfg.model, load_a())}
    if cfg.other == "twin":
        models["B"], seeds["B"] = load_a, cfg.seed + 1
        info["B"] = {**info["A"], "twin": f"model A again, its finetunes seeded {cfg.seed + 1}: a control with the "
                                          "same base weights, not a second model"}
    elif cfg.other != "none":
        models["B"], seeds["B"] = loader(cfg.other), cfg.seed
        info["B"] = model_info(cfg.other, models["B"]())
    return run_study(out, models=models, model_info=info, config=cfg, data_dir=cfg.data_dir, seeds=seeds,
                     progress=progress)


def _stage(ctx: runner.Context) -> Any:
    return _self_prediction(ctx.out, ctx.config, progress=ctx.progress)


STUDY = runner.Study(
    "self-prediction", LIConfig, PRESETS, title='Looking inward: introspective self-prediction', default_preset='cpu',
    data=data_files,
    stages=(runner.Stage("self_prediction", _stage, 'object-level answers, self-prediction finetunes, hypothetical answers, scores (models A and B)'),),
    dashboard=True)


def run(config: LIConfig | str | os.PathLike | None = None, out: str | os.PathLike | LIConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['cpu']`).
        out: the run directory.
        **kw: `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["self_prediction"]` is the results of `run_study` (also written to `out/results.json`). The deprecated call forms
        (`run(out, config)`, ...) return that value itself.
    """
    return runner.run(STUDY, config, out, **kw)


@dataclass
class FinetuneOverrides:
    """Fields of the self-prediction finetune (`LIConfig.finetune`) settable on the command line."""

    lr: float | None = None  # learning rate of the self-prediction finetune (None: the preset's)
    epochs: int | None = None  # epochs of the self-prediction finetune (None: the preset's)

    def apply(self, config: LIConfig) -> LIConfig:
        """`config` with the fields set here replaced in its `finetune`.

        Args:
            config: the config to change.

        Returns:
            A copy whose `finetune` has the non-None fields of this object (`config` itself when none is set).
        """
        ov = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return config.replace(finetune=config.finetune.replace(**ov)) if ov else config


def build_parser() -> argparse.ArgumentParser:
    """The command line: `--preset`, one option per `LIConfig` field, `--lr` / `--epochs` of the
    self-prediction finetune, and `--out`."""
    return config_parser(LIConfig, description=(__doc__ or "").splitlines()[0], out="runs/self_prediction",
                         presets=PRESETS, default_preset="cpu", exclude=("finetune", "shift_finetune"),
                         groups=[(FinetuneOverrides, "self-prediction finetune (overrides the preset's)")])


def config_from_argv(argv: Sequence[str] | None = None) -> tuple[LIConfig, argparse.Namespace]:
    """The config the command line asks for (the preset, then the options given) and the parsed namespace.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        (config, namespace); the namespace carries `out`.

    Raises:
        SystemExit: invalid arguments or `--help` (argparse).
    """
    a, cfg, (finetune,) = parse_config(build_parser(), argv, LIConfig, presets=PRESETS,
                                       exclude=("finetune", "shift_finetune"), groups=[FinetuneOverrides], usage_errors=False)
    return finetune.apply(cfg), a


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the study and print the scores, comparisons and shift results.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """
    cfg, a = config_from_argv(argv)
    res = run(cfg, a.out).results["self_prediction"]
    for key, s in res["scores"].items():
        e, m = s["accuracy"], s["mode_baseline"]
        if e["value"] is not None:
            print(f"{key:28s} accuracy {e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] n={e['n']}  "
                  f"mode {m['value']:.3f}  (non-compliant hypotheticals {s['n_hypothetical_noncompliant']})")
    for key, c in res["comparisons"].items():
        d = c["self_minus_cross"]
        if d.get("value") is not None:
            print(f"{key}: self - cross {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] on {c['n_common']} items")
    for n, sh in (res.get("shift") or {}).items():
        print(f"shift {n}: {sh['n_changed']} changed items; matches new {sh['matches_new']['value']}, "
              f"old {sh['matches_old']['value']}")
    print(json.dumps({"results": f"{a.out}/results.json"}))
    return 0
