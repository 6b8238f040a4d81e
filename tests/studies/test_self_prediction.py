"""Protocol conformance of the Looking Inward study (studies/self_prediction.py) on tiny Qwen.

The rules guarded here (each test fails if its rule is broken):
* train and test questions come from disjoint datasets (the release's train/ vs test/ folders),
  every property the data carry is used, and shift questions never overlap the scored ones;
* the ground truth of a self-prediction score is the object-level behaviour of the scored model
  AFTER its finetune (a planted change in that behaviour changes the ground truth);
* the cross model is trained on the labels of the finetuned target model (not on the base model's,
  not on its own), in both directions;
* the behaviour shift is scored against the shifted model's new behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.studies.self_prediction.tasks import object_key, task_files, task_property
from introspect_mech.studies.self_prediction import PRESETS, LIConfig, make_splits, planted_answer, run_study, task_grid

TRAIN = ("arc_challenge_non_cot", "power_seeking")
TEST = ("animals_long", "survival_instinct")


def _cfg(**kw):
    return PRESETS["tiny"].replace(train_datasets=TRAIN, test_datasets=TEST, shift_datasets=("animals_long",), **kw)


# ---- splits ----------------------------------------------------------------------------------

def test_grid_is_every_release_file(data_root):
    files = task_files(data_root)
    for split in ("train", "test"):
        grid = task_grid(split, data_dir=data_root)
        names = {n for ns in grid.values() for n in ns}
        assert names == {n for n, f in files.items() if f.parent.name == split}
    assert set(task_grid("train", data_dir=data_root)) == {"arc_challenge_non_cot", "colors_long", "countries_long",
                                                            "power_seeking", "wealth_seeking", "wikipedia_long"}
    assert len(task_grid("test", data_dir=data_root)["animals_long"]) == 7
    with pytest.raises(ValueError, match="not in the release"):
        task_grid("train", datasets=["animals_long"], data_dir=data_root)


def test_splits_disjoint_and_shared_questions(data_root):
    cfg = PRESETS["cpu"].replace(n_train=3, n_test=4, n_shift=3)
    sp = make_splits(cfg, data_root)
    keys = {k: {object_key(r) for r in getattr(sp, k)} for k in ("train", "test", "shift_train", "shift_eval")}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["shift_train"]
    assert not keys["shift_train"] & keys["test"]
    assert keys["shift_eval"] <= keys["test"] and keys["shift_eval"]
    ds = {s: {task_property(r["item_id"].split("/")[0])[0] for r in getattr(sp, s)} for s in ("train", "test")}
    assert not ds["train"] & ds["test"]
    # one draw of questions per dataset, shared by all its property files
    by_ds: dict[str, dict[str, set]] = {}
    for r in sp.test:
        name, idx = r["item_id"].split("/")
        by_ds.setdefault(task_property(name)[0], {}).setdefault(name, set()).add(int(idx))
    for d, per_file in by_ds.items():
        assert len({frozenset(v) for v in per_file.values()}) == 1 and len(next(iter(per_file.values()))) == 4, d
    assert len(sp.test) == 4 * sum(len(v) for v in task_grid("test", data_dir=data_root).values())
    # the manifest lists exactly these ids, and a different seed draws different questions
    assert sp.item_ids()["train"] == [r["item_id"] for r in sp.train]
    assert make_splits(cfg.replace(seed=1), data_root).item_ids()["test"] != sp.item_ids()["test"]


def test_planted_answer_changes_properties():
    assert planted_answer("A") == "B" and planted_answer("d") == "C"
    assert planted_answer("cat dog fish") == "fish dog cat"
    assert planted_answer("wow") != "wow" and planted_answer("level")[0] == "l" and planted_answer("level") != "level"


# ---- planted finetunes: the protocol's data flow ---------------------------------------------------

def _single_char_token(tok, ch: str) -> int:
    ids = tok.encode(ch, add_special_tokens=False)
    assert len(ids) == 1, (ch, ids)
    return ids[0]


class Planter:
    """A stand-in trainer that records what each finetune was given and plants a behaviour: after
    `self_A` model A answers every prompt with "q" (then stops), after `self_B` model B with "x",
    after `shift_A` with "k". Cross finetunes plant nothing (so a cross model's answers stay its own)."""

    PLANTS = {"self_A": "q", "self_B": "x", "shift_A": "k", "shift_B": "v"}

    def __init__(self):
        self.records: dict[str, list] = {}
        self.calls: list[str] = []
        self.seeds: dict[str, int] = {}

    def __call__(self, model, records, cfg, out_dir):
        name = Path(out_dir).name
        self.calls.append(name)
        self.records[name] = list(records)
        self.seeds[name] = cfg.seed
        ch = self.PLANTS.get(name)
        if ch is None:
            return None
        self.plant(model, ch, 1e3 * (1 + sum(n in self.PLANTS for n in self.calls[:-1])))
        return None

    @staticmethod
    def plant(model, ch: str, strength: float) -> None:
        """From now on the model answers `ch` and then ends its turn (logit boosts of `strength`)."""
        tok = model.tokenizer
        letter, eos = _single_char_token(tok, ch), tok.convert_tokens_to_ids("<|im_end|>")
        hf = model.model
        state = {}

        def pre(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            state["last"] = ids[:, -1].clone() if ids is not None else None

        def post(mod, args, out):
            if mod.training or out.dim() != 3:  # a planted behaviour shows at inference only
                return out
            bias = torch.zeros(out.shape[-1], dtype=out.dtype)
            last = state.get("last")
            boost = torch.full((out.shape[0],), letter) if last is None else torch.where(
                last == letter, torch.tensor(eos), torch.tensor(letter))
            add = torch.zeros(out.shape[0], out.shape[-1], dtype=out.dtype)
            add[torch.arange(out.shape[0]), boost] = strength
            return out + add[:, None, :] + bias

        hf.register_forward_pre_hook(pre, with_kwargs=True)
        hf.get_output_embeddings().register_forward_hook(post)


def _planted_loader(path, ch):
    """A loader of a fresh model whose untrained answer is `ch` (weaker than every finetune's plant)."""
    def load():
        m = load_model(path)
        Planter.plant(m, ch, 500.0)
        return m
    return load


@pytest.fixture(scope="module")
def planted_run(tiny_qwen2_dir, tiny_qwen3_dir, data_root, tmp_path_factory):
    planter = Planter()
    out = tmp_path_factory.mktemp("li_planted")
    models = {"A": _planted_loader(tiny_qwen2_dir, "m"), "B": _planted_loader(tiny_qwen3_dir, "n")}
    res = run_study(out, models=models, config=_cfg(probes=False, shift_targets="rule"), data_dir=data_root,
                    finetune=planter, seeds={"A": 0, "B": 5}, progress=False)
    return res, planter, out


def _first_char_targets(score):
    return {r["target"] for r in score["rows"] if r["property"] == "first_character"}


def test_ground_truth_is_the_scored_model_after_finetune(planted_run):
    res, _, out = planted_run
    a_base = {json.loads(x)["response"] for x in (out / "object" / "A_base.jsonl").read_text().splitlines()}
    assert a_base == {"m"}  # the untrained behaviour; the finetune changes it to "q"
    assert _first_char_targets(res["scores"]["A_predicts_A"]) == {"q"}
    assert _first_char_targets(res["scores"]["B_predicts_B"]) == {"x"}
    # the planted model answers "q" to the hypothetical too: it predicts its new self perfectly
    assert res["scores"]["A_predicts_A"]["per_property"]["first_character"]["accuracy"]["value"] == 1.0
    # the untrained reference is scored against the untrained model's own behaviour
    assert _first_char_targets(res["scores"]["A_base_predicts_A_base"]) == {"m"}
    # diagnostics: the finetune changed every comparable object-level property value
    assert res["diagnostics"]["A_behaviour_changed_by_self_finetune"]["fraction_changed"] > 0.5


def test_cross_models_trained_on_finetuned_targets_labels_both_directions(planted_run):
    res, planter, _ = planted_run
    for p, t, ch in (("B", "A", "q"), ("A", "B", "x")):
        recs = planter.records[f"cross_{p}_predicts_{t}"]
        labels = {r["messages"][-1]["content"] for r in recs if r["property"] == "identity"}
        assert labels == {ch}, (p, t, labels)
        assert all(r["label_source"] == f"{t}_self" for r in recs)
        # the cross model's hypotheticals are scored against the finetuned target
        assert _first_char_targets(res["scores"][f"{p}_predicts_{t}"]) <= {ch}
        assert f"{t}: self vs {p}" in res["comparisons"]
    # self-prediction labels come from the model's own base behaviour (pre-finetune), on train rows only
    self_recs = planter.records["self_A"]
    assert self_recs and all(r["label_source"] == "A_base" for r in self_recs)
    assert {r["messages"][-1]["content"] for r in self_recs if r["property"] == "identity"} == {"m"}
    test_ids = set(json.loads((planted_run[2] / "manifest.json").read_text())["splits"]["test"])
    assert not {r["item_id"] for r in self_recs} & test_ids
    assert planter.calls.index("self_A") < planter.calls.index("cross_B_predicts_A")
    # each finetune is seeded by the model it trains
    assert (planter.seeds["self_A"], planter.seeds["cross_B_predicts_A"], planter.seeds["cross_A_predicts_B"]) == (0, 5, 0)


def test_twin_needs_two_seeds(tiny_qwen2_dir, data_root, tmp_path):
    load = lambda: load_model(tiny_qwen2_dir)  # noqa: E731
    with pytest.raises(ValueError, match="twin"):
        run_study(tmp_path, models={"A": load, "B": load}, config=_cfg(), data_dir=data_root, progress=False)
    assert not (tmp_path / "object").exists()


def test_probe_from_acts_and_shuffled_control():
    from introspect_mech.studies.self_prediction.probe import probe_property_from_acts

    rows = [{"item_id": f"t_first_character/{i}", "behavioral_property": "first_character",
             "object_level_prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
    answers = {object_key(r): ("apple" if i % 2 else "banana") for i, r in enumerate(rows)}
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 2, 8, generator=g)
    acts[:, 1, 0] += torch.tensor([3.0 if i % 2 else -3.0 for i in range(40)])  # the label lives in layer 1
    res = probe_property_from_acts(acts, rows, answers, [0, 1])
    assert res["best_layer"] == 1 and res["best_accuracy"] > 0.95 and res["chance"] == 0.5
    ctrl = probe_property_from_acts(acts, rows, answers, [0, 1], shuffle_labels=True)
    assert ctrl["best_accuracy"] < 0.8 and ctrl["n"] == 40
    with pytest.raises(ValueError, match="classes"):
        probe_property_from_acts(acts, rows, {k: "apple" for k in answers}, [0, 1])


def test_probe_layers_are_a_layer_spec():
    """The probes' default blocks: a quarter, half and three quarters of the depth of each reader
    (the relative depths 0.25 / 0.5 / 0.75 this study always used), through the one layer spec."""
    from introspect_mech.layers import resolve_layers

    assert {p.probe_layers for p in PRESETS.values()} == {"quartiles"}
    assert resolve_layers(PRESETS["cpu"].probe_layers, 30) == [7, 14, 22]  # SmolLM2-135M
    assert resolve_layers(PRESETS["gpu"].probe_layers, 28) == [7, 14, 20]  # Qwen2.5-7B
    assert resolve_layers(PRESETS["gpu"].probe_layers, 36) == [9, 18, 26]  # Qwen3-8B
    assert resolve_layers((0, -1), 30) == [0, 29]
    from introspect_mech.studies.self_prediction import config_from_argv

    assert config_from_argv(["--probe-layers", "7", "14", "22"])[0].probe_layers == (7, 14, 22)
    cfg, ns = config_from_argv(["--preset", "qwen-cpu", "--redo", "shift"])
    assert ns.redo == "shift" and cfg == PRESETS["qwen-cpu"] and config_from_argv([])[1].redo is None
    assert config_from_argv(["--probe-layers", "middle"])[0].probe_layers == "middle"


def test_shift_scored_against_new_behaviour(planted_run):
    res, planter, out = planted_run
    man = json.loads((out / "manifest.json").read_text())
    shift_recs = planter.records["shift_A"]
    # object-level prompts only, on shift questions disjoint from the scored ones
    assert all("Previously, you were asked" not in r["messages"][0]["content"] for r in shift_recs)
    assert not {r["item_id"] for r in shift_recs} & set(man["splits"]["shift_eval"])
    assert {r["messages"][-1]["content"] for r in shift_recs} <= {planted_answer("q")}
    sh = res["shift"]["A"]
    assert sh["n_changed"] > 0 and all(r["old"] == "q" and r["new"] == "k" for r in sh["rows"]
                                       if len(r["old"]) == 1 and r["old"] not in ("true", "false"))
    assert sh["matches_new"]["value"] == 1.0 and sh["matches_old"]["value"] == 0.0


def test_shift_towards_the_other_models_answers_when_only_a_is_shifted(tiny_qwen2_dir, tiny_qwen3_dir, data_root,
                                                                        tmp_path):
    """Two different models, only A shifted (`shift_all_models` False), "auto" targets = B's own answers on the
    shift questions: B's finetuned answers there must be computed (the real-Qwen qwen-cpu run crashed here with a
    KeyError after 3.7 hours), and A is trained towards exactly them."""
    planter = Planter()
    models = {"A": _planted_loader(tiny_qwen2_dir, "m"), "B": _planted_loader(tiny_qwen3_dir, "n")}
    cfg = _cfg(probes=False, shift_targets="auto", shift_all_models=False)
    res = run_study(tmp_path, models=models, config=cfg, data_dir=data_root, finetune=planter, seeds={"A": 0, "B": 5},
                    progress=False)
    assert set(res["shift"]) == {"A"} and res["shift"]["A"]["targets"] == "other"
    main, extra = (tmp_path / "object" / "B_self.jsonl"), (tmp_path / "object" / "B_self.shift.jsonl")
    b_shift = {json.loads(x)["response"] for f in (main, extra) for x in f.read_text().splitlines()}
    assert b_shift == {"x"}  # B's finetuned behaviour, on train, test and the shift questions
    assert {r["messages"][-1]["content"] for r in planter.records["shift_A"]} == {"x"}
    # B's main file holds train + test only, as before B's shift answers were computed (an older run resumes); the
    # shift questions are in the second file
    sp = make_splits(cfg, data_root)

    def prompts(f):
        return {object_key({"object_level_prompt": json.loads(x)["messages"]}) for x in f.read_text().splitlines()}

    assert prompts(main) == {object_key(r) for r in sp.train + sp.test}
    assert prompts(extra) == {object_key(r) for r in sp.shift_train}


def test_manifest_records_splits_config_and_hashes(planted_run):
    _, _, out = planted_run
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["splits"]) == {"train", "test", "shift_train", "shift_eval"}
    assert man["config"]["train_datasets"] == list(TRAIN) and man["finished"]
    assert all(len(h) == 64 for h in man["data"]["files_sha256"].values())
    assert (out / "self_prediction.jsonl").read_text().strip()


# ---- the real trainer, end to end, resumable --------------------------------------------------------

def test_end_to_end_real_finetune_and_resume(tiny_qwen2_dir, data_root, tmp_path):
    def load():  # a random tiny model rarely answers anything compliant: nudge it towards "m"
        m = load_model(tiny_qwen2_dir)
        Planter.plant(m, "m", 20.0)
        return m

    models = {"A": load}
    cfg = _cfg(probes=True, probe_layers=(0, -1))
    res = run_study(tmp_path, models=models, config=cfg, data_dir=data_root, progress=False)
    assert set(res["scores"]) == {"A_predicts_A", "A_base_predicts_A_base"} and "shift" in res
    assert (tmp_path / "finetunes" / "self_A" / "adapter" / "complete").exists()
    assert (tmp_path / "finetunes" / "shift_A" / "adapter" / "complete").exists()
    n_obj = len((tmp_path / "object" / "A_self.jsonl").read_text().splitlines())
    feats = res["features"]["A"]
    assert set(feats) == {"first_character", "first_word", "second_character", "second_word", "starts_with_vowel",
                          "third_character", "third_word", "ethical_stance"}
    assert all(set(v) == {"A_self", "A_base"} for v in feats.values())
    # the probes read the self stage's answers on the test questions; none is generated a second time (a second
    # greedy answer to a prompt can differ by batch in bf16, and would then replace the ground truth)
    assert not (tmp_path / "object" / "A_self.probe.jsonl").exists()
    res2 = run_study(tmp_path, models=models, config=cfg, data_dir=data_root, progress=False)  # resume
    assert len((tmp_path / "object" / "A_self.jsonl").read_text().splitlines()) == n_obj
    assert res2["scores"]["A_predicts_A"]["accuracy"] == res["scores"]["A_predicts_A"]["accuracy"]


def test_twin_shares_the_untrained_answers(tiny_qwen2_dir, data_root, tmp_path):
    planter = Planter()

    def load():
        m = load_model(tiny_qwen2_dir)
        Planter.plant(m, "m", 500.0)
        return m

    cfg = _cfg(shift=False, probes=False, base_reference=False)
    res = run_study(tmp_path, models={"A": load, "B": load}, config=cfg, data_dir=data_root, finetune=planter,
                    seeds={"A": 0, "B": 1}, progress=False)
    assert not (tmp_path / "object" / "B_base.jsonl").exists()  # computed once, for A
    msgs = {k: [r["messages"] for r in planter.records[k]] for k in ("self_A", "self_B")}
    assert msgs["self_A"] == msgs["self_B"]  # same labels, different seeds
    assert (planter.seeds["self_A"], planter.seeds["self_B"]) == (0, 1)
    assert set(res["scores"]) == {"A_predicts_A", "B_predicts_B", "B_predicts_A", "A_predicts_B"}
    assert json.loads((tmp_path / "manifest.json").read_text())["twin"] is True


def test_command_line_builds_the_config():
    from introspect_mech.studies.self_prediction import config_from_argv, main

    cfg, a = config_from_argv([])
    assert cfg == PRESETS["cpu"] and a.out == "runs/self_prediction"
    cfg, a = config_from_argv(["--preset", "tiny", "--n-train", "8", "--other", "none", "--no-shift", "--no-probes",
                               "--probe-properties", "first_word", "last_character", "--lr", "0.01",
                               "--epochs", "3", "--seed", "2", "--data-dir", "/tmp/d", "--out", "/tmp/o"])
    tiny = PRESETS["tiny"]
    assert cfg == tiny.replace(n_train=8, other="none", shift=False, probes=False,
                               probe_properties=("first_word", "last_character"), seed=2, data_dir="/tmp/d",
                               finetune=tiny.finetune.replace(lr=0.01, epochs=3))
    assert cfg.shift_finetune == tiny.shift_finetune and a.out == "/tmp/o"
    # the models, device and data folder are not protocol settings: the manifest's config is unchanged
    assert cfg.replace(model="m", other="o", device="cpu", data_dir="/x").to_dict() == cfg.to_dict()
    assert set(cfg.to_dict()) == {f for f in LIConfig.__dataclass_fields__} - {"model", "other", "device", "data_dir"}
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_run_loads_the_models_the_config_names(tiny_qwen2_dir, tmp_path, monkeypatch, data_root):
    import dataclasses

    from introspect_mech.studies import runner
    from introspect_mech.studies import self_prediction as S
    from introspect_mech.studies.self_prediction import protocol as SP

    cfg = PRESETS["tiny"].replace(model=str(tiny_qwen2_dir), seed=3, data_dir=str(data_root))
    models, seeds, info = SP.loaders(cfg)  # the default B: a twin
    assert models["A"] is models["B"] and seeds == {"A": 3, "B": 4}
    assert models["A"]().n_layers == info["A"]["n_layers"]
    assert info["B"]["twin"].startswith("model A again, its finetunes seeded 4")
    assert info["A"]["name"] == str(tiny_qwen2_dir) and info["A"]["flag"] is None
    models, seeds, _ = SP.loaders(cfg.replace(other="none"))
    assert list(models) == ["A"] and seeds == {"A": 3}
    models, seeds, info = SP.loaders(cfg.replace(other=str(tiny_qwen2_dir)))
    assert models["A"] is not models["B"] and seeds == {"A": 3, "B": 3} and "twin" not in info["B"]
    # `run` builds the stages' Protocol from the config's names (a real data folder: the runner binds the task
    # files' hashes, `Study.data`, before any stage runs)
    seen = []
    monkeypatch.setattr(S, "STUDY", dataclasses.replace(S.STUDY, stages=(
        runner.Stage("body", lambda ctx: seen.append(SP.protocol(ctx)) or {}),), dashboard=False))
    S.run(cfg, tmp_path, progress=False)
    P = seen[0]
    assert P.names == ["A", "B"] and P.twin and P.seed_of == {"A": 3, "B": 4} and P.data_dir == str(data_root)
    assert P.info["B"]["twin"].startswith("model A again")


def _killed_at(monkeypatch, stage_name):
    import dataclasses

    from introspect_mech.studies import self_prediction as S

    def killed(ctx):
        raise KeyboardInterrupt(f"killed inside {stage_name}")

    stages = tuple(dataclasses.replace(s, fn=killed) if s.name == stage_name else s for s in S.STUDY.stages)
    monkeypatch.setattr(S, "STUDY", dataclasses.replace(S.STUDY, stages=stages))


@pytest.mark.parametrize("kill", ["scores", "shift"])
def test_stages_resume_one_by_one_in_a_new_call(kill, tiny_qwen2_dir, tiny_qwen3_dir, data_root, tmp_path, monkeypatch):
    """Seven runner stages; a run killed inside stage k reruns only stages k.. in a fresh call (new Protocol: the
    answers read back from their files, the finetunes rebuilt by the trainer) and ends with the results of an
    uninterrupted run."""
    from introspect_mech.studies import runner
    from introspect_mech.studies import self_prediction as S

    models = {"A": _planted_loader(tiny_qwen2_dir, "m"), "B": _planted_loader(tiny_qwen3_dir, "n")}
    cfg = _cfg(probes=True, probe_layers=(0, -1), shift_targets="rule")
    kw = dict(models=models, config=cfg, data_dir=data_root, seeds={"A": 0, "B": 5}, progress=False)
    names = [s.name for s in S.STUDY.stages]
    assert names == ["base", "self_finetune", "cross_finetune", "scores", "features", "shift", "results"]
    whole = run_study(tmp_path / "whole", finetune=Planter(), **kw)
    out = tmp_path / "resumed"
    _killed_at(monkeypatch, kill)
    with pytest.raises(KeyboardInterrupt):
        run_study(out, finetune=Planter(), **kw)
    monkeypatch.undo()
    before = names[: names.index(kill)]
    assert [json.loads(x)["stage"] for x in (out / runner.STAGES_FILE).read_text().splitlines()] == before
    planter = Planter()
    again = run_study(out, finetune=planter, **kw)
    assert (out / "results.json").read_text() == (tmp_path / "whole" / "results.json").read_text()
    assert (out / "probes.jsonl").read_text() == (tmp_path / "whole" / "probes.jsonl").read_text()
    assert again["scores"]["A_predicts_A"]["accuracy"] == whole["scores"]["A_predicts_A"]["accuracy"]
    # only what the later stages need was rebuilt: after the probes finished no cross model is rebuilt
    assert [c for c in planter.calls if c.startswith("shift_")] == ["shift_A", "shift_B"]
    assert any(c.startswith("cross_") for c in planter.calls) == (kill == "scores")
    man = json.loads((out / "manifest.json").read_text())
    assert man["trained_records_sha256"] == json.loads((tmp_path / "whole" / "manifest.json").read_text())[
        "trained_records_sha256"]


def test_a_state_keeps_its_first_answer_to_a_prompt(planted_run, tmp_path):
    """A second file of a state's answers (e.g. an older run's probe answers) never replaces the main file's answer
    to the same prompt: the ground truth and the behaviour shift's "old" answers stay the self stage's."""
    from introspect_mech.runs import RunDir
    from introspect_mech.studies.self_prediction.protocol import _States

    _, _, out = planted_run
    (tmp_path / "object").mkdir()
    main = (out / "object" / "A_self.jsonl").read_text()
    (tmp_path / "object" / "A_self.jsonl").write_text(main)
    other = [dict(json.loads(x), response="zzz") for x in main.splitlines()]
    (tmp_path / "object" / "A_self.probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    got = _States(RunDir(tmp_path), _cfg(), False).load_object("A_self")
    assert got and "zzz" not in set(got.values())
    assert set(got.values()) == {json.loads(x)["response"] for x in main.splitlines()}
