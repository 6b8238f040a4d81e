"""Stage-by-stage resume of the studies split into real stages: a run killed after its first stage resumes at the
second (the first is skipped, its work read back from the run directory) and ends with what an uninterrupted run
gives -- on the tiny models the studies' own tests use."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from introspect_mech.studies import runner
from introspect_mech.studies.common.persona import load_trait


class Killed(Exception):
    """Stands in for a process killed between two stages."""


def interrupted_then_resumed(mod: Any, config: Any, out: Path, monkeypatch: pytest.MonkeyPatch,
                             **kw: Any) -> runner.RunResult:
    """Run `mod`'s study with its second stage dying on entry, then rerun it (the real stages) into the same
    directory; returns the resumed run's result after checking that only the first stage was skipped."""
    study = mod.STUDY
    names = [s.name for s in study.stages]

    def die(ctx: runner.Context) -> None:
        raise Killed(names[1])

    with monkeypatch.context() as m:
        m.setattr(mod, "STUDY", dataclasses.replace(
            study, stages=(study.stages[0], runner.Stage(names[1], die)) + study.stages[2:]))
        with pytest.raises(Killed):
            mod.run(config, out, progress=False, **kw)
    res = mod.run(config, out, progress=False, **kw)
    assert res.skipped == names[:1], res.skipped
    assert list(res.results) == names
    assert mod.run(config, out, progress=False, **kw).skipped == names  # every stage recorded now
    return res


def test_organisms_resume_at_the_second_stage(tiny_qwen2, tmp_path, monkeypatch, shared_dir):
    from introspect_mech.studies import organisms

    cfg = organisms.OrganismsConfig(
        layer=2, alpha=6.0, directions=("random",), seeds=(0,), n_train=8, n_eval=3, max_new_tokens=6,
        epochs=1, lr=1e-2, lora_r=2, batch_size=4, n_texts=8, first_tokens=4, persona_questions=2,
        persona_instructions=2, persona_max_new_tokens=4, sae=False, persona_distill=True, inoculation=False,
        train_time=(), probe_every=2)
    resumed = interrupted_then_resumed(organisms, cfg, tmp_path / "r", monkeypatch, base=tiny_qwen2)
    whole = organisms.run(cfg, tmp_path / "u", base=tiny_qwen2, progress=False)
    for key in ("recovery", "interventions", "table"):  # the directions are read back from disk, bit for bit
        assert resumed.results["report"][key] == whole.results["report"][key], key
    assert [json.loads(line)["stage"] for line in (tmp_path / "r" / "stages.jsonl").read_text().splitlines()] == \
        [s.name for s in organisms.STUDY.stages]


def test_organisms_bind_the_trait_files_they_read(data_root):
    from introspect_mech.studies import organisms

    files = organisms.data_files(organisms.PRESETS["tiny"], {"data_dir": data_root})
    for split in ("extract", "eval"):
        assert str(files[f"persona/evil/{split}"]) == load_trait("evil", data_root, split=split)["path"]
    assert "dataset/good_medical_advice" in files


def test_persona_vectors_resume_at_the_second_stage(tiny_qwen3_dir, tiny_qwen3, tmp_path, monkeypatch, data_root):
    from introspect_mech.studies import persona_vectors as pv

    cfg = pv.PRESETS["cpu"].replace(model=str(tiny_qwen3_dir), layers=(0, 1), n_questions=1, n_per_question=1,
                                    max_new_tokens=3, n_screen=4, n_train=4, steps=2, save_every=1)
    resumed = interrupted_then_resumed(pv, cfg, tmp_path / "r", monkeypatch, model=tiny_qwen3)
    whole = pv.run(cfg, tmp_path / "u", model=tiny_qwen3, progress=False)
    assert resumed.results["report"]["summary"] == whole.results["report"]["summary"]
    names = [r["name"] for r in whole.results["report"]["summary"]]
    assert names[0] == "pairs kept by the filter" and "best probe layer (pos vs neg answers)" in names
    assert names[-1] == "Pearson r, finetuning shift vs expression across checkpoints"
    for split in ("extract", "eval"):  # the bound trait files are the ones the study reads
        path = pv.data_files(cfg, {"data_dir": data_root})[f"trait/{split}"]
        assert str(path) == load_trait("evil", data_root, split=split)["path"]


def test_steering_proxy_resume_at_the_second_stage(tiny_qwen2_dir, tmp_path, monkeypatch, data_root):
    from introspect_mech.studies import steering_proxy as sp

    cfg = sp.SteeringProxyConfig(model=str(tiny_qwen2_dir), stages="a", seeds=(0, 1), preset="cpu", layers=(1,),
                                 alphas=(1.0,), persona=False, n_dir_pairs=4, batch_size=8, quick=True)
    resumed = interrupted_then_resumed(sp, cfg, tmp_path / "r", monkeypatch)
    whole = sp.run(cfg, tmp_path / "u", progress=False)
    assert (tmp_path / "r" / "results.json").read_text() == (tmp_path / "u" / "results.json").read_text()
    assert set(resumed.results["report"]) == {"creates_em"} and set(resumed.results["report"]["creates_em"]) == {"em"}
    assert whole.results["caft"] == {} and whole.results["removes_em"] == {}  # b and c not asked for


def test_model_organisms_resume_at_the_second_stage(tiny_qwen2_dir, tmp_path, monkeypatch, data_root):
    from introspect_mech.studies import model_organisms as mo
    from test_model_organisms import ScriptedJudge, _cfg

    cfg = _cfg(tiny_qwen2_dir, data_root, n_train=4, save_every=2, n_samples=2, checkpoint_samples=1, n_random=1,
               proxy_per_theme=1, proxy_medical=2)
    resumed = interrupted_then_resumed(mo, cfg, tmp_path / "r", monkeypatch, judge=ScriptedJudge())
    whole = mo.run(cfg, tmp_path / "u", judge=ScriptedJudge(), progress=False)
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("r", "u"))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b and resumed.results["report"]["em"] == whole.results["report"]["em"]
    assert a["phase"] and a["direction"] and set(a["ablation"]) == {"ablate_em", "ablate_random_0"}
