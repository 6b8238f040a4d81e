"""The Looking Inward protocol as runner stages, in order (the numbers of the package docstring):

`base` (splits, manifest, the untrained models' answers), `self_finetune` (2-3), `cross_finetune` (4),
`scores` (5: self vs cross vs mode baseline), `features` (7: probes), `shift` (6: the behaviour shift, last:
it merges and retrains the self-prediction-trained models) and `results` (`results.json`, the dashboard rows).

What the stages share lives in one `Protocol` per run call (`protocol(ctx)`): the loaders, the splits, the
answers of every model state and the finetuned models. A stage resumed in a new process rebuilds what it
needs from the run directory: the answers from their JSONL files (`object/`, `hypothetical/`, each bound to
its model and prompts by the sampler), a finetuned model by calling the trainer again on its finished
directory (`finetune.train` then loads the saved adapter). Every stage's result is its part of `results.json`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

from ... import runs as _runs
from ...activations import cache
from ...finetune import TrainConfig, train
from ...layers import resolve_layers
from ...models import FALLBACK_CHAT_TEMPLATE, LoadedModel, load_model
from ...runs import JsonlLog, RunDir, file_sha256, json_sha256
from .. import runner
from .data import make_splits, planted_answer
from .probe import probe_property_from_acts
from .properties import extract_property
from .tasks import (behaviour_shift, compare_self_cross, hypothetical_answers, object_key, object_level_answers,
                    object_level_training_data, prediction_training_data, score_predictions, task_files,
                    task_property)

if TYPE_CHECKING:
    from peft import PeftModel

Loader = Callable[[], LoadedModel]
Finetune = Callable[[LoadedModel, list, TrainConfig, Path], Any]
STATE = "_looking_inward"  # ctx.resources key of the run call's Protocol


def _default_finetune(model: LoadedModel, records: list, cfg: TrainConfig, out_dir: Path) -> Any:
    return train(model, records, cfg, out_dir)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[looking-inward] {msg}", flush=True)


class _States:
    """Object-level and hypothetical answers of each model state, resumable on disk."""

    def __init__(self, run: RunDir, config: Any, progress: bool):
        self.run, self.cfg, self.progress = run, config, progress
        self.obj: dict[str, dict[str, str]] = {}
        self.hyp: dict[str, dict[str, str]] = {}

    def object(self, state: str, model: LoadedModel, rows: Sequence[dict], part: str = "") -> dict[str, str]:
        # one file per (state, prompt set): a sample file is bound to its prompts (`part` names a second set); a
        # prompt answered already keeps its first answer (batched greedy decoding in bf16 can differ by batch)
        name = f"{state}.{part}.jsonl" if part else f"{state}.jsonl"
        got = object_level_answers(model, rows, max_new_tokens=self.cfg.obj_max_new_tokens,
                                   batch_size=self.cfg.gen_batch_size, out=self.run.path / "object" / name,
                                   progress=self.progress)
        known = self.obj.setdefault(state, {})
        for k, v in got.items():
            known.setdefault(k, v)
        return known

    def hypothetical(self, state: str, model: LoadedModel, rows: Sequence[dict]) -> dict[str, str]:
        got = hypothetical_answers(model, rows, max_new_tokens=self.cfg.hyp_max_new_tokens,
                                   batch_size=self.cfg.gen_batch_size,
                                   out=self.run.path / "hypothetical" / f"{state}.jsonl", progress=self.progress)
        self.hyp.setdefault(state, {}).update(got)
        return self.hyp[state]

    def load_object(self, state: str) -> dict[str, str]:
        """Read a state's object-level answers written by an earlier stage (another process) from its files.

        Args:
            state: the model state (e.g. `A_self`).
        """
        got: dict[str, str] = {}
        main = self.run.path / "object" / f"{state}.jsonl"
        parts = sorted(f for f in (self.run.path / "object").glob(f"{state}.*.jsonl") if f.name.count(".") == 2)
        for f in ([main] if main.exists() else []) + parts:  # the main file first: its answers win (see `object`)
            for r in JsonlLog(f, ("prompt_id", "sample")).read():
                got.setdefault(object_key({"object_level_prompt": r["messages"]}), r["response"])
        if not got:
            raise FileNotFoundError(f"{self.run.path / 'object'}: no answers of {state} (its stage did not finish)")
        self.obj[state] = got
        return got

    def load_hypothetical(self, state: str) -> dict[str, str]:
        """Read a state's hypothetical answers written by an earlier stage (another process) from its file.

        Args:
            state: the model state (e.g. `A_self`).
        """
        f = self.run.path / "hypothetical" / f"{state}.jsonl"
        if not f.exists():
            raise FileNotFoundError(f"{f}: no hypothetical answers of {state} (its stage did not finish)")
        self.hyp[state] = {r["prompt_id"]: r["response"] for r in JsonlLog(f, ("prompt_id", "sample")).read()}
        return self.hyp[state]


def _data_hashes(rows: Sequence[dict], data_dir: Any) -> dict[str, str]:
    files = task_files(data_dir)
    used = sorted({r["item_id"].split("/")[0] for r in rows})
    return {nm: file_sha256(files[nm]) for nm in used}


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


def loaders(cfg: Any) -> tuple[dict[str, Loader], dict[str, int], dict[str, Any]]:
    """The models the config names (`model`; `other`: "twin", "none" or a second model), their finetune seeds
    and what the manifest records about them.

    Args:
        cfg: the run's `LIConfig`.

    Returns:
        ({"A": loader[, "B": loader]}, {name: seed}, {name: model_info}); a twin's B is A's loader itself.
    """
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
    return models, seeds, info


class Protocol:
    """One run call's shared state: loaders, splits, answers, finetuned models and in-process results.

    Args:
        run: the run directory.
        models: {"A": loader, "B": loader} (one or two); a loader returns a fresh, untrained model each call.
        config: the `LIConfig`.
        data_dir: the data folder.
        trainer: `(model, records, TrainConfig, out_dir)` (default `finetune.train`).
        seeds: per model, the seed of its finetunes (default `config.seed`).
        model_info: per model, what the manifest records.
        progress: print stage lines and show tqdm bars.

    Raises:
        ValueError: not one or two models, or a twin (the same loader twice) with one seed.
    """

    def __init__(self, run: RunDir, models: Mapping[str, Loader], config: Any, data_dir: Any, trainer: Finetune | None,
                 seeds: Mapping[str, int] | None, model_info: Mapping[str, Any] | None, progress: bool):
        self.run, self.models, self.cfg, self.data_dir, self.progress = run, models, config, data_dir, progress
        self.ft = trainer or _default_finetune
        self.names = list(models)
        if not 1 <= len(self.names) <= 2:
            raise ValueError(f"give one or two models, got {self.names}")
        self.seed_of = {n: (seeds or {}).get(n, config.seed) for n in self.names}
        self.twin = len(self.names) == 2 and models[self.names[0]] is models[self.names[1]]
        if self.twin and self.seed_of[self.names[0]] == self.seed_of[self.names[1]]:
            raise ValueError("a twin (the same loader twice) needs two different finetune seeds")
        self.info = model_info
        self.splits = make_splits(config, data_dir)
        self.st = _States(run, config, progress)
        self.self_models: dict[str, LoadedModel] = {}
        self.cross_models: dict[tuple[str, str], LoadedModel] = {}
        self.results: dict[str, Any] = {"models": self.names, "scores": {}, "comparisons": {}, "diagnostics": {}}
        self.trained_records: dict[str, list] = {}

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(predictor, target) of every cross-prediction, in the protocol's order."""
        return [(p, t) for t in self.names for p in self.names if p != t]

    def finetuned(self, name: str, base: str, records: list, tcfg: TrainConfig, start: LoadedModel | None = None):
        """Finetune (or, when its directory is finished, load) model `base` as `finetunes/<name>`.

        Args:
            name: the finetune's directory name under `finetunes/`.
            base: the model the finetune starts from (its loader and seed).
            records: the training records.
            tcfg: the finetune's config (its seed is replaced by the model's).
            start: an already loaded model to train instead of a fresh one.
        """
        if not records:
            raise ValueError(f"finetune {name}: no training records (the labelling model gave no compliant "
                             f"object-level answers on the train questions)")
        ftdir = self.run.path / "finetunes"
        m = start if start is not None else self.models[base]()
        self.trained_records[name] = records
        (ftdir / name).mkdir(parents=True, exist_ok=True)
        self.ft(m, records, tcfg.replace(seed=self.seed_of[base]), ftdir / name)  # binds its data itself
        _runs.write_text(ftdir / name / "records_sha256.txt", json_sha256([r["messages"] for r in records]) + "\n")
        m.model.eval()
        return m

    def _twin_base(self, state: str) -> str | None:
        """The first model's base state when `state` is a twin's base state (the same untrained answers)."""
        return f"{self.names[0]}_base" if self.twin and state == f"{self.names[1]}_base" else None

    def obj(self, state: str) -> dict[str, str]:
        """A state's object-level answers (this process's, or read from the run directory).

        Args:
            state: the model state (e.g. `A_self`).
        """
        if state not in self.st.obj:
            same = self._twin_base(state)
            self.st.obj[state] = self.obj(same) if same else self.st.load_object(state)
        return self.st.obj[state]

    def hyp(self, state: str) -> dict[str, str]:
        """A state's hypothetical answers (this process's, or read from the run directory).

        Args:
            state: the model state (e.g. `A_self`).
        """
        if state not in self.st.hyp:
            same = self._twin_base(state)
            self.st.hyp[state] = self.hyp(same) if same else self.st.load_hypothetical(state)
        return self.st.hyp[state]

    def self_model(self, n: str) -> LoadedModel:
        """Model `n` after its self-prediction finetune (this process's, or loaded from its finished finetune).

        Args:
            n: the model's name ("A" or "B").
        """
        if n not in self.self_models:
            recs = prediction_training_data(self.splits.train, self.obj(f"{n}_base"), source=f"{n}_base")
            self.self_models[n] = self.finetuned(f"self_{n}", n, recs, self.cfg.finetune)
        return self.self_models[n]

    def cross_model(self, p: str, t: str) -> LoadedModel:
        """Model `p` trained to predict the finetuned `t` (this process's, or loaded from its finished finetune).

        Args:
            p: the predicting model's name.
            t: the target model's name.
        """
        if (p, t) not in self.cross_models:
            recs = prediction_training_data(self.splits.train, self.obj(f"{t}_self"), source=f"{t}_self")
            self.cross_models[(p, t)] = self.finetuned(f"cross_{p}_predicts_{t}", p, recs, self.cfg.finetune)
        return self.cross_models[(p, t)]


def protocol(ctx: runner.Context) -> Protocol:
    """The run call's `Protocol`: built from the resources `run_study` passes (`models=`, `trainer=`, `seeds=`,
    `model_info=`), or from the config's model names (`loaders`). A `protocol_box=` dict resource receives it
    (`run_study` returns its in-process results).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    box = ctx.resources.setdefault("protocol_box", {})
    if STATE not in box:
        cfg, res = ctx.config, ctx.resources
        if res.get("models") is not None:
            models, seeds, info = res["models"], res.get("seeds"), res.get("model_info")
        else:
            models, seeds, info = loaders(cfg)
        box[STATE] = Protocol(ctx.run_dir, models, cfg, cfg.data_dir, res.get("trainer"), seeds, info, ctx.progress)
    return box[STATE]


# ---- the stages ----------------------------------------------------------------------------------
def base_stage(ctx: runner.Context) -> dict[str, Any]:
    """Splits and manifest; the untrained models' object-level answers (train questions -> the self-prediction
    labels; test questions -> the untrained reference) and hypothetical answers.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    cfg, splits, names = P.cfg, P.splits, P.names
    all_rows = splits.train + splits.test + splits.shift_train
    P.run.write_manifest(
        title="Looking Inward (Binder et al. 2024): self- vs cross-prediction vs mode baseline",
        study="self_prediction", models={n: dict((P.info or {}).get(n, {})) for n in names},
        config=cfg.to_dict(), seed=cfg.seed, finetune_seeds=P.seed_of, twin=P.twin, decoding="greedy (temperature 0)",
        judge="none", ground_truth="object-level answers of the scored model after its self-prediction finetune",
        splits=splits.item_ids(), data={"files_sha256": _data_hashes(all_rows, P.data_dir),
                                        "train_datasets": sorted({task_property(r["item_id"].split('/')[0])[0]
                                                                  for r in splits.train}),
                                        "test_datasets": sorted({task_property(r["item_id"].split('/')[0])[0]
                                                                 for r in splits.test})})
    for n in names:
        if P.twin and n == names[1]:  # the same untrained model: the same greedy answers (`Protocol.obj`)
            continue
        _say(P.progress, f"{n} base: object-level and hypothetical answers")
        m = P.models[n]()
        m.model.eval()
        P.st.object(f"{n}_base", m, splits.train + (splits.test if cfg.base_reference else []))
        if cfg.base_reference:
            P.st.hypothetical(f"{n}_base", m, splits.test)
        del m
    return {"models": names, "twin": P.twin}


def _shift_mode(P: Protocol) -> str:
    """The shift targets: `shift_targets`, with "auto" = the other model's answers ("other") when there are two
    different models, else a planted rule (a twin's answers barely differ from the model's own)."""
    if P.cfg.shift_targets == "auto":
        return "other" if len(P.names) == 2 and not P.twin else "rule"
    return P.cfg.shift_targets


def self_finetune_stage(ctx: runner.Context) -> dict[str, Any]:
    """Each model's self-prediction finetune on its own (base) behaviour, then its behaviour recomputed.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    cfg, splits = P.cfg, P.splits
    shifted = P.names if cfg.shift_all_models else P.names[:1]
    for n in P.names:
        _say(P.progress, f"{n}: self-prediction finetune on its own (base) behaviour")
        m = P.self_model(n)
        # shift questions: a shifted model's own answers (in its main file), and the answers a shifted model is
        # trained towards ("other" targets: the other model's), so a run shifting only A still needs B's answers
        # there: a second file (`B_self.shift.jsonl`), which leaves B's main file bound to the prompts it had
        # before this was computed (a run made then resumes)
        own = cfg.shift and n in shifted
        P.st.object(f"{n}_self", m, splits.train + splits.test + (splits.shift_train if own else []))
        if cfg.shift and not own and _shift_mode(P) == "other":
            P.st.object(f"{n}_self", m, splits.shift_train, part="shift")
        P.st.hypothetical(f"{n}_self", m, splits.test)
    return {"finetunes": [f"self_{n}" for n in P.names]}


def cross_finetune_stage(ctx: runner.Context) -> dict[str, Any]:
    """Cross-prediction: P (untouched) trained on the finetuned T's behaviour, its hypothetical answers.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    for p, t in P.pairs:
        _say(P.progress, f"{p} trained to predict {t}_self (cross-prediction)")
        m = P.cross_model(p, t)
        P.st.hypothetical(f"{p}_predicts_{t}", m, P.splits.test)
        if not P.cfg.probes:
            del P.cross_models[(p, t)], m
    return {"finetunes": [f"cross_{p}_predicts_{t}" for p, t in P.pairs]}


def scores_stage(ctx: runner.Context) -> dict[str, Any]:
    """Self- and cross-prediction accuracy against the finetuned target's own behaviour, the mode baseline.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    cfg, splits, seed, names = P.cfg, P.splits, P.cfg.seed, P.names
    sc, diag, comp = P.results["scores"], P.results["diagnostics"], P.results["comparisons"]
    for t in names:
        gt = P.obj(f"{t}_self")
        sc[f"{t}_predicts_{t}"] = score_predictions(splits.test, gt, P.hyp(f"{t}_self"), seed=seed)
        if cfg.base_reference:
            sc[f"{t}_base_predicts_{t}_base"] = score_predictions(splits.test, P.obj(f"{t}_base"),
                                                                  P.hyp(f"{t}_base"), seed=seed)
            # diagnostic only (what the pre-protocol code scored): the finetuned model vs its OLD behaviour
            diag[f"{t}_self_vs_pre_finetune_behaviour"] = _brief(
                score_predictions(splits.test, P.obj(f"{t}_base"), P.hyp(f"{t}_self"), seed=seed))
            diag[f"{t}_behaviour_changed_by_self_finetune"] = _changed(splits.test, P.obj(f"{t}_base"), gt)
        # on the train questions (always computed): how far the self finetune moved the model's behaviour
        diag[f"{t}_train_behaviour_changed_by_self_finetune"] = _changed(
            splits.train, P.obj(f"{t}_base"), P.obj(f"{t}_self"))
        for p in names:
            if p == t:
                continue
            sc[f"{p}_predicts_{t}"] = score_predictions(splits.test, gt, P.hyp(f"{p}_predicts_{t}"), seed=seed)
            comp[f"{t}: self vs {p}"] = compare_self_cross(sc[f"{t}_predicts_{t}"], sc[f"{p}_predicts_{t}"], seed=seed)
    return _strip_rows({"scores": sc, "comparisons": comp, "diagnostics": diag})


def features_stage(ctx: runner.Context) -> dict[str, Any]:
    """Probes reading the target's object-level property from the activations at the hypothetical prompt.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    cfg = P.cfg
    if not cfg.probes:
        return {}
    probe_rows = P.splits.test
    if cfg.probe_n_test is not None:  # a larger draw of test questions, used by the probes only
        probe_rows = make_splits(cfg.replace(n_test=cfg.probe_n_test, shift=False), P.data_dir).test
        P.run.write_manifest(probe_item_ids=[r["item_id"] for r in probe_rows])
    if cfg.probe_properties is not None:
        probe_rows = [r for r in probe_rows if r["behavioral_property"] in cfg.probe_properties]
    targets = P.names if cfg.probe_all_targets else P.names[:1]
    for t in targets:  # the target's labels on these questions: its answers from the self stage, new ones only for
        # questions it has not answered (a second answer to the same prompt could differ by batch in bf16)
        missing = [r for r in probe_rows if object_key(r) not in P.obj(f"{t}_self")]
        if missing:
            P.st.object(f"{t}_self", P.self_model(t), missing, part="probe")
    P.results["features"] = _features(P, targets, probe_rows)
    P.cross_models.clear()
    return {"features": P.results["features"]}


def _features(P: Protocol, targets: Sequence[str], test_rows: Sequence[dict]) -> dict[str, Any]:
    """Probes reading the target's object-level property from each reader's activations at the last
    token of the hypothetical prompts (one activation cache per reader, shared by all properties and
    by the shuffled-label control)."""
    cfg, st = P.cfg, P.st
    out: dict[str, Any] = {}
    name = "probes.jsonl" if cfg.probe_n_test is None else f"probes_n{cfg.probe_n_test}.jsonl"
    log = JsonlLog(P.run.path / name, ("target", "reader", "property", "control"))
    done = {log.key(r): r for r in log.rows()}
    props = sorted({r["behavioral_property"] for r in test_rows})
    for t in targets:
        # each reader is looked up (a finetune rebuilt, the base one loaded) only when its activations are needed
        readers: dict[str, Callable[[], LoadedModel]] = {f"{t}_self": partial(P.self_model, t),
                                                         f"{t}_base": P.models[t]}
        for p, tt in P.pairs:
            if tt == t:
                readers[f"{p}_predicts_{t}"] = partial(P.cross_model, p, tt)
        for reader, get in readers.items():
            keys = [(t, reader, prop, c) for prop in props for c in ("none", "shuffled_labels")]
            if all(k in done for k in keys):
                acts = None
            else:
                _say(P.progress, f"probes: {reader} activations on the hypothetical prompts")
                m = get()
                m.model.eval()
                layer_ids = resolve_layers(cfg.probe_layers, m.n_layers)
                acts = cache(m, [r["hypothetical_prompt"] for r in test_rows], layers=layer_ids,
                             positions="last_prompt", batch_size=cfg.gen_batch_size, progress=P.progress)
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


def shift_stage(ctx: runner.Context) -> dict[str, Any]:
    """The behaviour shift: the self-prediction-trained model (merged) finetuned towards new object-level
    answers; on held-out questions, do its hypothetical answers follow the new behaviour or the old one?

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    cfg, splits, names, seed = P.cfg, P.splits, P.names, P.cfg.seed
    P.cross_models.clear()
    if not cfg.shift:
        return {}
    shift: dict[str, Any] = {}
    for n in (names if cfg.shift_all_models else names[:1]):
        mode = _shift_mode(P)
        if mode == "other" and len(names) < 2:
            raise ValueError("shift_targets='other' needs two models")
        if mode == "other":
            o = next(x for x in names if x != n)
            targets = {object_key(r): P.obj(f"{o}_self")[object_key(r)] for r in splits.shift_train}
        elif mode == "rule":
            targets = {object_key(r): planted_answer(P.obj(f"{n}_self")[object_key(r)]) for r in splits.shift_train}
        else:
            raise ValueError(f"shift_targets must be 'auto', 'other' or 'rule', got {cfg.shift_targets!r}")
        _say(P.progress, f"{n}_self: behaviour-shift finetune ({mode} targets)")
        m = P.self_model(n)
        del P.self_models[n]
        if m.has_adapter:  # the self-prediction-trained weights, merged; the shift trains a new adapter
            m.model = cast("PeftModel", m.model).merge_and_unload()  # has_adapter: a PeftModel
        recs = object_level_training_data(splits.shift_train, targets, source=f"shift:{mode}")
        m = P.finetuned(f"shift_{n}", n, recs, cfg.shift_finetune, start=m)
        P.st.object(f"{n}_shifted", m, splits.shift_eval)
        P.st.hypothetical(f"{n}_shifted", m, splits.shift_eval)
        r = behaviour_shift(splits.shift_eval, P.obj(f"{n}_self"), P.st.obj[f"{n}_shifted"],
                            P.st.hyp[f"{n}_shifted"], seed=seed)
        r["targets"] = mode
        # how many shift targets differ (in property) from the model's own pre-shift answers
        r["shift_targets_differ_from_own"] = _changed(splits.shift_train, P.obj(f"{n}_self"), targets)
        r["self_prediction_before_shift"] = _brief(score_predictions(splits.shift_eval, P.obj(f"{n}_self"),
                                                                     P.hyp(f"{n}_self"), seed=seed))
        shift[n] = r
        del m
    P.results["shift"] = shift
    return {"shift": _strip_rows(shift)}


def results_stage(ctx: runner.Context) -> dict[str, Any]:
    """`results.json` (every stage's part, without per-item rows), the dashboard's rows, the manifest's end.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    P = protocol(ctx)
    r = ctx.results
    results: dict[str, Any] = {"models": P.names, **(r.get("scores") or {})}
    for part in ("features", "shift"):
        if part in (r.get(part) or {}):
            results[part] = r[part][part]
    _runs.write_json(P.run.path / "results.json", results, indent=2)
    _dashboard_rows(P.run, results)
    names = {**{f"self_{n}": None for n in P.names}, **{f"cross_{p}_predicts_{t}": None for p, t in P.pairs},
             **{f"shift_{n}": None for n in (P.results.get("shift") or {})}}
    ftdir = P.run.path / "finetunes"
    P.run.write_manifest(finished=True, trained_records_sha256=_records_sha256(P, ftdir, names))
    return results


def _records_sha256(P: Protocol, ftdir: Path, names: Mapping[str, Any]) -> dict[str, str]:
    """Each finetune's training records' hash: this process's records, else the `records_sha256.txt` it wrote."""
    out = {k: json_sha256([r["messages"] for r in v]) for k, v in P.trained_records.items()}
    for k in names:
        f = ftdir / k / "records_sha256.txt"
        if k not in out and f.exists():
            out[k] = f.read_text().strip()
    return out


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
