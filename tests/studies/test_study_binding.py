"""Every study runs on the one runner: `run(config, out)` binds the run directory, and a rerun with one
config field changed is refused in one line naming the field (the study's body is replaced by a stand-in
stage here: the binding happens before any stage runs, so no model is needed)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from introspect_mech.cli import STUDIES
from introspect_mech.runs import RunConfigError
from introspect_mech.studies import runner


def _changed_field(study: runner.Study, config):
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name not in study.unbound and type(v) is int and not isinstance(v, bool):
            return f.name, v + 1
    raise AssertionError(f"{study.name}: no int field to change")


@pytest.mark.parametrize("module", sorted(set(STUDIES.values())))
def test_every_study_refuses_a_changed_config_field(module, tmp_path, monkeypatch):
    mod = importlib.import_module(f"introspect_mech.studies.{module}")
    study = mod.STUDY
    assert study.name == next(k for k, v in STUDIES.items() if v == module)
    ran: list[str] = []

    def stand_in(ctx: runner.Context) -> dict:
        ran.append(ctx.study.name)
        (ctx.out / "rows.jsonl").write_text("{}\n")
        return {"ok": True}

    monkeypatch.setattr(mod, "STUDY", dataclasses.replace(study, stages=(runner.Stage("body", stand_in),),
                                                          check=None, dashboard=False))
    config = study.default_config()
    res = mod.run(config, tmp_path, progress=False)
    assert isinstance(res, runner.RunResult) and res.results == {"body": {"ok": True}}
    assert mod.run(config, tmp_path, progress=False).skipped == ["body"] and len(ran) == 1
    name, value = _changed_field(study, config)
    with pytest.raises(RunConfigError) as e:
        mod.run(dataclasses.replace(config, **{name: value}), tmp_path, progress=False)
    assert "\n" not in str(e.value) and f"study_config.{name} (" in str(e.value) and len(ran) == 1
