"""Every study runs on the one runner: `run(config, out)` binds the run directory, and a rerun with one
config field changed is refused in one line naming the field (the study's body is replaced by a stand-in
stage here: the binding happens before any stage runs, so no model is needed)."""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import shutil
from pathlib import Path

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


DATA_STUDIES = ("caft", "emergent_misalignment", "introspection", "main_job", "model_organisms", "organisms",
                "persona_features", "persona_vectors", "self_awareness", "self_prediction",
                "steering_proxy")  # the studies that declare `Study.data`


@pytest.mark.parametrize("module", sorted(set(STUDIES.values())))
def test_declared_data_files_exist(module, data_root):
    study = importlib.import_module(f"introspect_mech.studies.{module}").STUDY
    assert (study.data is not None) == (module in DATA_STUDIES), module
    if study.data is not None:
        files = study.data(study.default_config(), {"data_dir": data_root})
        assert files and all(Path(p).is_file() for p in files.values()), files


@pytest.mark.parametrize("module", DATA_STUDIES)
def test_a_changed_data_file_is_refused_by_name(module, tmp_path, monkeypatch, data_root):
    """The runner binds the content of every file `Study.data` declares: a rerun after one changed is refused
    in one line naming it (`data_sha256.<name>`), before any stage runs."""
    mod = importlib.import_module(f"introspect_mech.studies.{module}")
    study = mod.STUDY
    monkeypatch.setattr(mod, "STUDY", dataclasses.replace(study, stages=(runner.Stage("body", lambda ctx: {}),),
                                                          check=None, dashboard=False))
    data = tmp_path / "data"
    config = study.default_config()
    files = study.data(config, {"data_dir": data_root})
    kw: dict = {}
    if any(f.name == "data_dir" for f in dataclasses.fields(config)):
        config = dataclasses.replace(config, data_dir=str(data))
    else:
        kw["data_dir"] = data
    for p in files.values():  # a private copy of the declared files, at their place in the data folder
        if Path(p).resolve().is_relative_to(data_root.resolve()):
            rel = Path(p).resolve().relative_to(data_root.resolve())
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, data / rel)
    mine = {n: p for n, p in study.data(config, {"data_dir": data}).items() if Path(p).is_relative_to(data)}
    assert mine, files
    out = tmp_path / "run"
    mod.run(config, out, progress=False, **kw)
    assert mod.run(config, out, progress=False, **kw).skipped == ["body"]  # unchanged data: resumed
    name, path = sorted(mine.items())[0]
    with open(path, "ab") as f:  # the same rows, another content hash: a blank line, or an empty gzip member
        f.write(gzip.compress(b"") if str(path).endswith(".gz") else b"\n")
    with pytest.raises(RunConfigError) as e:
        mod.run(config, out, progress=False, **kw)
    assert "\n" not in str(e.value) and f"data_sha256.{name} (" in str(e.value), str(e.value)
