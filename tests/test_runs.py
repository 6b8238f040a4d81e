"""Run directories: manifest merging, credential scrubbing, JSONL resume after a torn write."""

from introspect_mech.runs import JsonlLog, RunDir


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
