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

`run(PRESETS["cpu"].replace(other="none"), out)` runs the protocol on the models the config names, on the study
runner, as seven stages (`protocol.py`: `base`, `self_finetune`, `cross_finetune`, `scores`, `features`,
`shift`, `results`); `run_study(out, models={"A": loader, "B": loader}, config=...)` runs the same stages on
models given as loaders (tests plant behaviours through them). The run directory holds the manifest (models,
config, every split's item ids, data hashes, seeds, decoding), object / hypothetical answers per model state
(resumable JSONL), finetunes/<name>/ (resumable), `stages.jsonl`, and `results.json` plus the dashboard's
`self_prediction.jsonl`. `main(argv)` is the command line (`python experiments/self_prediction.py --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...cliargs import config_parser, parse_config
from ...finetune import TrainConfig
from .. import runner
from .data import (  # noqa: F401  (moved to data.py; the study and its callers use them here)
    Splits, _SWAP, _pick, data_files, make_splits, planted_answer, task_grid,
)
from .protocol import (  # noqa: F401  (the protocol's pieces, importable here as before)
    STATE, Finetune, Loader, _changed, _dashboard_rows, _strip_rows, base_stage, cross_finetune_stage,
    features_stage, loaders, results_stage, scores_stage, self_finetune_stage, shift_stage,
)
from .protocol import model_info as _model_info


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


STUDY = runner.Study(
    "self-prediction", LIConfig, PRESETS, title="Looking inward: introspective self-prediction", default_preset="cpu",
    data=data_files,
    stages=(runner.Stage("base", base_stage, "splits; the untrained models' object-level and hypothetical answers"),
            runner.Stage("self_finetune", self_finetune_stage,
                         "self-prediction finetunes on each model's own behaviour, its behaviour recomputed"),
            runner.Stage("cross_finetune", cross_finetune_stage,
                         "cross-prediction finetunes on the finetuned other model's behaviour"),
            runner.Stage("scores", scores_stage, "self vs cross vs mode baseline against the finetuned behaviour"),
            runner.Stage("features", features_stage, "probes on the hypothetical prompt (and controls)"),
            runner.Stage("shift", shift_stage, "behaviour-shift finetune: new behaviour or old?"),
            runner.Stage("results", results_stage, "results.json and the dashboard rows")),
    legacy=lambda r: r.results["results"], resources=("models", "trainer", "seeds", "model_info"),
    dashboard=True)


def run(config: LIConfig | str | os.PathLike | None = None, out: str | os.PathLike | LIConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['cpu']`).
        out: the run directory.
        **kw: `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult` with one result per stage; `.results["results"]` is what `results.json` holds. The
        deprecated call forms (`run(out, config)`, ...) return that value itself.
    """
    return runner.run(STUDY, config, out, **kw)


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
    """Run the Looking Inward protocol for one or two models given as loaders; rerun the same call to resume.

    The same stages as `run`, on the study runner (the run directory is bound to the config with
    `data_dir` as its data folder).

    Args:
        out: run directory.
        models: {"A": loader, "B": loader} (insertion order; one or two). A loader returns a fresh,
            untrained `LoadedModel` on every call (finetunes never share weights).
        model_info: per model name, what the manifest records (name/path, template, flags).
        config: sizes and settings (`PRESETS["cpu"]` by default).
        data_dir: data folder (default: the config's, else the project's data dir).
        finetune: `(model, records, TrainConfig, out_dir)` trainer (default `finetune.train`); tests
            pass a planted one.
        seeds: per model, the seed of the finetunes that model undergoes (default `config.seed`).
            Two names with the SAME loader object are a differently-seeded twin: one base model,
            whose untrained answers are computed once and shared.
        progress: print stage lines and show tqdm bars.

    Returns:
        The results written to `results.json`; the scores, diagnostics and shift of the stages run in this
        call carry their per-item `rows`, and `trained_records` the records of the finetunes trained here.
    """
    cfg = config or PRESETS["cpu"]
    if data_dir is not None:
        cfg = cfg.replace(data_dir=str(data_dir))
    box: dict[str, Any] = {}
    res = runner.run(STUDY, cfg, out, models=models, trainer=finetune, seeds=seeds, model_info=model_info,
                     progress=progress, protocol_box=box)
    results = dict(res.results["results"])
    P = box.get(STATE)
    if P is not None:
        for k, v in P.results.items():
            if k in results and v:
                results[k] = v
        results["trained_records"] = P.trained_records
    return results


model_info = _model_info  # what the manifest records about one model (`protocol.model_info`)


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
    p = config_parser(LIConfig, description=(__doc__ or "").splitlines()[0], out="runs/self_prediction",
                      presets=PRESETS, default_preset="cpu", exclude=("finetune", "shift_finetune"),
                      groups=[(FinetuneOverrides, "self-prediction finetune (overrides the preset's)")])
    p.add_argument("--redo", choices=[s.name for s in STUDY.stages], default=None,
                   help="run this recorded stage and the later ones again (after a fix to its code); each resumes "
                        "from its files")
    return p


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
    res = run(cfg, a.out, redo=a.redo).results["results"]
    for key, s in res["scores"].items():
        e, m = s["accuracy"], s["mode_baseline"]
        if e["value"] is not None:
            print(f"{key:28s} accuracy {e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] n={e['n']}  "
                  f"mode {m['value']:.3f}  (non-compliant hypotheticals {s['n_hypothetical_noncompliant']})")
    for key, c in res["comparisons"].items():
        d, dc = c["self_minus_cross"], c.get("self_minus_cross_by_cell") or {}
        if d.get("value") is not None:
            print(f"{key}: self - cross {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] on {c['n_common']} items"
                  + (f"; over {dc['n']} task x property cells [{dc['lo']:+.3f}, {dc['hi']:+.3f}]"
                     if dc.get("lo") is not None else ""))
    for n, sh in (res.get("shift") or {}).items():
        dc = sh.get("new_minus_old_by_cell") or {}
        print(f"shift {n}: {sh['n_changed']} changed items; matches new {sh['matches_new']['value']}, "
              f"old {sh['matches_old']['value']}"
              + (f"; new - old over {dc['n']} task x property cells {dc['value']:+.3f} [{dc['lo']:+.3f}, {dc['hi']:+.3f}]"
                 if dc.get("lo") is not None else ""))
    print(json.dumps({"results": f"{a.out}/results.json"}))
    return 0
