"""Run directories: manifest merging, credential scrubbing, JSONL resume after a torn write."""

import json

import pytest

from introspect_mech.data import DataError
from introspect_mech.runs import (
    JsonlLog,
    RunConfigError,
    RunDir,
    config_diff,
    scrub_text,
)


def test_manifest_merges_and_never_stores_keys(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_manifest(model={"name": "m"}, seed=1, judge={"model": "j", "api_key": "sk-secret", "api_key_env": "OPENAI_API_KEY"})
    m = run.write_manifest(model={"adapter": "a"}, data={"x": "sha"})
    assert m["model"] == {"name": "m", "adapter": "a"} and m["seed"] == 1 and m["data"] == {"x": "sha"}
    assert m["judge"]["api_key"] == "<redacted>" and m["judge"]["api_key_env"] == "OPENAI_API_KEY"
    assert "sk-secret" not in run.manifest_path.read_text()
    assert m["packages"]["torch"]


def test_jsonl_resume_skips_done_and_drops_torn_line(tmp_path):
    log = JsonlLog(tmp_path / "r.jsonl", key_fields=("q", "i"))
    log.append({"q": "a", "i": 0, "v": 1})
    log.append({"q": "a", "i": 1, "v": 2})
    with open(log.path, "a") as f:
        f.write('{"q": "a", "i": 2, "v"')  # killed mid-write
    log = JsonlLog(tmp_path / "r.jsonl", key_fields=("q", "i"))
    assert [r["i"] for r in log.read()] == [0, 1]
    todo = [{"q": "a", "i": i} for i in range(4)]
    for row in todo:
        if log.key(row) not in log.done_keys():
            log.append({**row, "v": 0})
    assert [r["i"] for r in log.read()] == [0, 1, 2, 3]


# ---- configuration binding ----------------------------------------------------------------------


def test_bind_resumes_same_config_and_refuses_another_naming_fields(tmp_path):
    run = RunDir(tmp_path / "r")
    cfg = {"model": {"name": "a", "weights_sha256": "x"}, "sampling": {"temperature": 1.0, "n": 2}, "seed": 0}
    h = run.bind("sample", cfg)
    run.log("samples.jsonl").append({"i": 0})
    assert run.bind("sample", json.loads(json.dumps(cfg))) == h  # same config: resume
    other = {**cfg, "model": {"name": "b", "weights_sha256": "y"}, "sampling": {"temperature": 0.0, "n": 2}}
    with pytest.raises(RunConfigError) as ei:
        run.bind("sample", other)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{run.manifest_path}: bindings.sample:")
    for f in ("model.name", "model.weights_sha256", "sampling.temperature"):
        assert f in msg
    assert "seed" not in msg.split("config:")[-1].split(";")[0]
    assert (run.path / "samples.jsonl").read_text() == '{"i": 0}\n'  # nothing touched
    events = [json.loads(x)["event"] for x in run.provenance_path.read_text().splitlines()]
    assert events == ["new", "resume"]


def test_bind_overwrite_starts_clean_and_provenance_is_append_only(tmp_path):
    run = RunDir(tmp_path / "r")
    run.bind("sample", {"seed": 0})
    run.write_manifest(model="a")
    run.log("samples.jsonl").append({"i": 0})
    (run.path / "sub").mkdir()
    (run.path / "sub" / "x").write_text("1")
    run.bind("sample", {"seed": 1}, overwrite=True)
    assert sorted(p.name for p in run.path.iterdir()) == ["manifest.json", "provenance.jsonl"]
    m = run.manifest()
    assert m["bindings"]["sample"]["config"] == {"seed": 1} and "model" not in m
    ev = [json.loads(x) for x in run.provenance_path.read_text().splitlines()]
    assert [e["event"] for e in ev] == ["new", "overwrite"] and ev[1]["previous_sha256"] == ev[0]["config_sha256"]


def test_overwrite_of_one_stage_keeps_the_others(tmp_path):
    run = RunDir(tmp_path / "r")
    run.bind("sample", {"seed": 0})
    run.log("samples.jsonl").append({"i": 0})
    run.bind("judge", {"judge": {"model": "j1"}})
    run.write_manifest(judge={"model": "j1"})
    run.log("judged.jsonl").append({"i": 0})
    with pytest.raises(RunConfigError, match=r"judge\.model"):
        run.bind("judge", {"judge": {"model": "j2"}})
    run.bind("judge", {"judge": {"model": "j2"}}, overwrite=True, outputs=["judged.jsonl"])
    assert (run.path / "samples.jsonl").exists() and not (run.path / "judged.jsonl").exists()
    assert run.write_manifest(judge={"model": "j2"})["judge"] == {"model": "j2"}


def test_manifest_cannot_rewrite_a_bound_field(tmp_path):
    run = RunDir(tmp_path / "r")
    run.bind("sample", {"model": {"name": "a"}, "seed": 0})
    run.write_manifest(model="a", seed=0, note="x")
    run.write_manifest(model="a", note="y")  # unbound fields may change; bound ones may be restated
    with pytest.raises(RunConfigError, match="refusing to rewrite"):
        run.write_manifest(model="b")
    assert run.manifest()["model"] == "a"


def test_config_diff_is_by_dotted_field():
    assert config_diff({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"b": 2, "c": [1]}, "e": 1}) == ["a.b", "d", "e"]
    assert config_diff({"t": (1, 2)}, {"t": [1, 2]}) == []


# ---- secrets by value ------------------------------------------------------------------------------
def test_secrets_scrubbed_by_value(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdef0123456789")
    run = RunDir(tmp_path / "r")
    m = run.write_manifest(
        judge={"api_key_env": "sk-proj-ABCDEF0123456789abcdef",  # a key pasted where the NAME goes
               "base_url": "https://user:hunter2pass@example.com/v1?api-key=SECRETQ123&x=1",
               "note": "uses tok-abcdef0123456789 inline"},
        other_env="OPENAI_API_KEY")
    text = run.manifest_path.read_text()
    for secret in ("sk-proj-ABCDEF0123456789abcdef", "hunter2pass", "user:", "SECRETQ123", "tok-abcdef0123456789"):
        assert secret not in text
    assert m["judge"]["base_url"] == "https://<redacted>@example.com/v1?api-key=<redacted>&x=1"
    assert m["other_env"] == "OPENAI_API_KEY"  # a variable name is kept
    log = run.log("rows.jsonl")
    log.append({"response": "the token is tok-abcdef0123456789"})  # results are data: never scrubbed
    assert log.read() == [{"response": "the token is tok-abcdef0123456789"}]
    assert scrub_text("http://a.b/c?token=zzz&q=1") == "http://a.b/c?token=<redacted>&q=1"


# ---- corrupt files ---------------------------------------------------------------------------------
def test_corrupt_middle_line_names_file_and_line(tmp_path):
    p = tmp_path / "samples.jsonl"
    p.write_text('{"a": 1}\n{"a": 2, oops}\n{"a": 3}\n')
    with pytest.raises(DataError) as ei:
        JsonlLog(p).read()
    assert ei.value.line == 2 and str(ei.value).startswith(f"{p}:2: json:") and "column 10" in str(ei.value)
    p.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r":2: line: not UTF-8"):
        JsonlLog(p).read()


def test_corrupt_manifest_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"manifest.json:2: manifest: invalid JSON"):
        RunDir(tmp_path).manifest()


def test_key_shaped_words_in_argv_never_reach_provenance(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["introspect-mech", "judge", "--api-key-env", "sk-proj-ABCDEFGHIJ0123456789"])
    run = RunDir(tmp_path / "r")
    run.bind("judge", {"x": 1})
    text = run.provenance_path.read_text()
    assert "sk-proj-ABCDEFGHIJ0123456789" not in text and "<redacted>" in text


def test_token_fields_of_results_are_data_not_secrets(tmp_path):
    """Vocabulary-token fields in result rows are kept; credential fields in manifests are redacted."""
    from introspect_mech.runs import JsonlLog, RunDir

    log = JsonlLog(tmp_path / "r.jsonl")
    row = {"token": " Paris", "top_token": "cat", "tokens": ["a", "b"], "n_tokens": 3}
    log.append(row)
    assert list(log.rows()) == [row]
    run = RunDir(tmp_path / "run")
    m = run.write_manifest(judge={"hf_token": "abc123secretvalue", "api_key": "xyz", "token": "fine"})
    assert m["judge"]["hf_token"] == m["judge"]["api_key"] == "<redacted>" and m["judge"]["token"] == "fine"
