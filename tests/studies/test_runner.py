"""The study runner: binding (a changed config field refuses, naming it), stage-by-stage resume, kill between
stages, seeding, typed rows, the deprecated call form -- on a tiny random model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from introspect_mech.runs import RunConfigError
from introspect_mech.testing import tiny_qwen
from introspect_mech.studies import register_panels
from introspect_mech.viz.dashboard import panels
from introspect_mech.viz.rows import ROW_TYPES

sys.path.insert(0, str(Path(__file__).parent))
import tiny_study as T  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_qwen(tmp_path_factory.mktemp("tiny") / "m", n_layers=2, d_model=32, d_mlp=64, vocab_size=300))


def _executions(out: Path) -> list[str]:
    return (out / "executions.txt").read_text().split()


def test_rerun_skips_done_stages_and_returns_the_same(tiny, tmp_path):
    cfg = T.TinyConfig(model=tiny)
    first = T.run(cfg, tmp_path / "r", progress=False)
    assert first.skipped == [] and (tmp_path / "r" / "dashboard.html").is_file()
    again = T.run(cfg, tmp_path / "r", progress=False)
    assert again.skipped == ["draw", "probe"]
    assert _executions(tmp_path / "r") == ["draw", "probe"]
    assert again.results == first.results  # stored results stand in for the skipped stages
    assert [r["name"] for r in again.summary] == ["first draw", "sum of draws"]


def test_changed_config_field_is_refused_in_one_line_naming_it(tiny, tmp_path):
    T.run(T.TinyConfig(model=tiny), tmp_path / "r", progress=False)
    with pytest.raises(RunConfigError) as e:
        T.run(T.TinyConfig(model=tiny, n=4), tmp_path / "r", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "study_config.n (3 -> 4)" in msg
    assert _executions(tmp_path / "r") == ["draw", "probe"]  # refused before any work
    fresh = T.run(T.TinyConfig(model=tiny, n=4), tmp_path / "r", progress=False, overwrite=True)
    assert fresh.skipped == [] and len(fresh.results["draw"]["draws"]) == 4


def test_other_weights_under_the_same_config_are_refused(tiny, tmp_path):
    other = tiny_qwen(tmp_path / "other", n_layers=2, d_model=32, d_mlp=64, vocab_size=300, seed=1)
    T.run(T.TinyConfig(model=tiny), tmp_path / "r", progress=False)
    # the same config (the model path is the field) with other weights copied in: refused by the content binding
    cfg = T.TinyConfig(model=tiny)
    (tmp_path / "r" / "stages.jsonl").unlink()  # make the draw stage run again
    import shutil
    moved = tmp_path / "tiny_backup"
    shutil.copytree(tiny, moved)
    try:
        shutil.rmtree(tiny)
        shutil.copytree(other, tiny)
        with pytest.raises(RunConfigError, match=r"bindings\.model\.base.*weights_sha256"):
            T.run(cfg, tmp_path / "r", progress=False)
    finally:
        shutil.rmtree(tiny)
        shutil.copytree(moved, tiny)


def test_kill_between_stages_resumes_at_the_next_stage(tiny, tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "TINY_STUDY_DIE": "probe", "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}"}
    p = subprocess.run([sys.executable, "-m", "tiny_study", tiny, str(out)], env=env, capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert _executions(out) == ["draw", "probe"]
    res = T.run(T.TinyConfig(model=tiny), out, progress=False)
    assert res.skipped == ["draw"] and _executions(out) == ["draw", "probe", "probe"]
    uninterrupted = T.run(T.TinyConfig(model=tiny), tmp_path / "u", progress=False)
    assert res.results == uninterrupted.results  # the runner seeds each stage: a resumed stage draws the same


def test_redo_runs_the_named_stage_and_the_later_ones_again(tiny, tmp_path):
    cfg = T.TinyConfig(model=tiny)
    first = T.run(cfg, tmp_path / "r", progress=False)
    again = T.run(cfg, tmp_path / "r", progress=False, redo="probe")
    assert again.skipped == ["draw"] and _executions(tmp_path / "r") == ["draw", "probe", "probe"]
    assert again.results == first.results  # seeded: the redone stage gives the same here
    assert T.run(cfg, tmp_path / "r", progress=False).skipped == ["draw", "probe"]  # its new record stands
    T.run(cfg, tmp_path / "r", progress=False, redo="draw")
    assert _executions(tmp_path / "r") == ["draw", "probe", "probe", "draw", "probe"]
    with pytest.raises(ValueError, match="redo='nope'.*draw"):
        T.run(cfg, tmp_path / "r", progress=False, redo="nope")


def test_progress_and_summary_are_printed(tiny, tmp_path, capsys):
    T.run(T.TinyConfig(model=tiny), tmp_path / "r")
    text = capsys.readouterr().out
    assert "[1/2] draw: draw numbers" in text and "[2/2] probe" in text
    assert "summary:" in text and "sum of draws" in text and "dashboard:" in text
    T.run(T.TinyConfig(model=tiny), tmp_path / "r")
    assert "[1/2] draw: done in an earlier run, skipped" in capsys.readouterr().out


def test_deprecated_call_form_warns_and_returns_the_old_value(tiny, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"run\(out, config\)"):
        value = T.run(str(tmp_path / "r"), T.TinyConfig(model=tiny), progress=False)
    assert set(value) == {"total", "again"}
    with pytest.warns(DeprecationWarning, match="config fields as keywords"):
        T.run(T.TinyConfig(model=tiny), tmp_path / "r2", n=2, progress=False)
    with pytest.raises(TypeError, match="needs `out`"):
        T.run(T.TinyConfig(model=tiny))


def test_every_panel_has_a_typed_row_with_its_required_fields():
    register_panels()
    for p in panels():
        cls = p.row or ROW_TYPES[p.key]
        required = tuple(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        assert required == p.required, (p.key, required)
        assert cls.file() == p.file


def test_extra_fields_cannot_shadow_declared_ones():
    row = ROW_TYPES["summary"]("x", 1, extra={"value": 2})
    with pytest.raises(ValueError, match="'value' is a declared field"):
        row.as_row()


def test_judge_binding_names_the_judge_and_its_validation():
    from introspect_mech.evals.judge_spec import JudgeOptions
    from introspect_mech.studies.runner import judge_binding

    class Judge:
        def describe(self):
            return {"model": "scripted"}

    assert judge_binding(None) is None and judge_binding(JudgeOptions()) is None
    assert judge_binding(JudgeOptions(judge="hf:embedded")) == {"judge": "hf:embedded", "validation": None}
    assert judge_binding(Judge()) == {"judge": {"model": "scripted"}, "validation": None}  # no fingerprint
