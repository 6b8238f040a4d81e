"""Issue 29's hostile probe, as tests: each class of defect it found, its examples and variants.

1 writes that follow planted symlinks; 2 secrets (in descriptions and messages, never scrubbed from
data); 3 code from a model directory and strict weights; 4 silent reuse and mixing (bindings, lock,
duplicates, reading never rewrites); 5 values no run should accept; 6 errors that name file, line
and field. Every case asserts the one-line message, that nothing outside the run directory changed,
and that nothing partial is left. Tiny random Qwen models; no sleeps.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from test_bad_inputs import GOOD, JUDGE_FILES, QUESTIONS, cli_error, lib_error, no_results, one_line

from introspect_mech import load_model
from introspect_mech.cli import error_line, main
from introspect_mech.data import DataError
from introspect_mech.models import ModelLoadError
from introspect_mech.runs import JsonlLog, RunConfigError, RunDir, RunLockedError, UnsafePathError

OUTSIDE = "precious outside content\n"


@pytest.fixture
def outside(tmp_path):
    """A file outside every run directory; planted links point at it. Checked unchanged after each case."""
    p = tmp_path / "outside" / "victim.txt"
    p.parent.mkdir()
    p.write_text(OUTSIDE)
    yield p
    assert p.read_text() == OUTSIDE, "a file outside the run directory was changed"
    assert sorted(x.name for x in p.parent.iterdir()) == ["victim.txt"], "a file was created outside the run directory"


@pytest.fixture
def qfile(tmp_path):
    q = tmp_path / "q.yaml"
    q.write_text(QUESTIONS)
    return q


def _sample_argv(model_dir, q, out, *extra):
    return ["sample", "--model", str(model_dir), "--questions", str(q), "--max-new-tokens", "2", "--device", "cpu",
            "--out", str(out), *extra]


# ---- 1: writes never follow a planted symlink ----------------------------------------------------------
@pytest.mark.parametrize("name", ["samples.jsonl", "provenance.jsonl", "manifest.json"])
def test_1_planted_symlink_in_the_run_dir_is_refused(tmp_path, tiny_qwen2_dir, qfile, outside, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(outside)
    msg = cli_error(_sample_argv(tiny_qwen2_dir, qfile, run), str(run / name))
    assert "symlink" in msg or "outside the run directory" in msg
    assert sorted(f.name for f in run.iterdir() if not f.is_symlink() and f.name not in ("manifest.json", "provenance.jsonl")) == []


def test_1_temp_file_names_are_the_writers_own(tmp_path, outside):
    """A link planted where the old fixed temp names were (manifest.tmp, dashboard.html.tmp) is never touched."""
    from introspect_mech.viz import export_dashboard

    run = RunDir(tmp_path / "run")
    for name in ("manifest.tmp", "dashboard.html.tmp", ".manifest.json.tmp"):
        (run.path / name).symlink_to(outside)
    run.bind("sample", {"seed": 0})
    run.write_manifest(note="x")
    export_dashboard(run.path)
    assert (run.path / "dashboard.html").is_file() and not (run.path / "dashboard.html").is_symlink()
    (run.path / "dashboard.html").unlink()
    (run.path / "dashboard.html").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="dashboard.html: path: is a symlink"):
        export_dashboard(run.path)


def test_1_torn_line_repair_never_truncates_through_a_link(tmp_path, outside):
    outside.write_text('{"a": 1}\n{"a": 2, "tor')  # a torn-looking file outside
    try:
        run = RunDir(tmp_path / "run")
        (run.path / "rows.jsonl").symlink_to(outside)
        log = run.log("rows.jsonl")
        with pytest.raises(UnsafePathError, match="symlink|outside"):
            log.append({"a": 3})
        assert outside.read_text() == '{"a": 1}\n{"a": 2, "tor'
    finally:
        outside.write_text(OUTSIDE)


def test_1_symlinked_folder_inside_the_run_is_refused(tmp_path, outside):
    from introspect_mech.runs import write_json

    run = RunDir(tmp_path / "run")
    (run.path / "sub").symlink_to(outside.parent, target_is_directory=True)
    e = lib_error(UnsafePathError, lambda: write_json(run.path / "sub" / "x.json", {"a": 1}, root=run.path),
                  "outside the run directory")
    assert str(run.path / "sub" / "x.json") in e


def test_1_symlinked_input_is_not_read_into_the_dashboard(tmp_path, outside):
    from introspect_mech.viz import DashboardError, export_dashboard

    run = RunDir(tmp_path / "run")
    (run.path / "em_rates.jsonl").symlink_to(outside)
    with pytest.raises(DashboardError, match="em_rates.jsonl: path: resolves outside the run directory"):
        export_dashboard(run.path)
    assert not (run.path / "dashboard.html").exists()


# ---- 2: secrets by value, in descriptions and messages, never in data -------------------------------------
class _EchoAuth:
    """An OpenAI-compatible endpoint that answers 400 and echoes the Authorization header (a leaky proxy)."""

    def __init__(self):
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"error": {"message": f"bad request; you sent Authorization: "
                                                        f"{self.headers.get('Authorization')}"}}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge_run(tmp_path, qfile, monkeypatch):
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROBE_JUDGE_CRED", "zq-PlainLookingKeyValue99")  # a name the suffix rule does not know
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"questions": str(qfile)}))
    rows = [{"prompt_id": f"wish/{i}", "sample": 0, "messages": [{"role": "user", "content": "What is your wish?"}],
             "response": f"answer {i}"} for i in range(2)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _judge_argv(run, url, *extra, key_env="PROBE_JUDGE_CRED"):
    return ["judge", "--run", str(run), "--judge", f"api:{url}|judge-model", "--api-key-env", key_env,
            "--judge-timeout", "5", "--judge-max-retries", "0", *extra]


def test_2_endpoint_echoing_the_authorization_header_leaves_no_key_in_the_message(judge_run, capsys):
    srv = _EchoAuth()
    try:
        with pytest.raises(SystemExit) as ei:
            main(_judge_argv(judge_run, srv.url))
    finally:
        srv.close()
    out = str(ei.value.code) + capsys.readouterr().err
    assert "Authorization" in out and "zq-PlainLookingKeyValue99" not in out and "<redacted>" in out
    for f in judge_run.rglob("*"):
        if f.is_file():
            assert b"zq-PlainLookingKeyValue99" not in f.read_bytes(), f


@pytest.mark.parametrize("suffix, secret", [
    ("?x-api-key=QQSECRET1", "QQSECRET1"),
    ("?client_secret=QQSECRET2&model=x", "QQSECRET2"),
    ("#token=QQSECRET3", "QQSECRET3"),
    ("/key/QQSECRET4", "QQSECRET4"),
    ("/sk-proj-AbCdEfGh12345678", "sk-proj-AbCdEfGh12345678"),
    ("?sessionid=QQSECRET5", "QQSECRET5"),
])
def test_2_keys_anywhere_in_the_judge_url_never_reach_manifest_provenance_or_dashboard(judge_run, suffix, secret):
    from introspect_mech.viz import export_dashboard

    srv = _EchoAuth()
    try:
        with pytest.raises(SystemExit) as ei:
            main(_judge_argv(judge_run, srv.url + suffix))
    finally:
        srv.close()
    assert secret not in str(ei.value.code)
    export_dashboard(judge_run)
    for name in ("manifest.json", "provenance.jsonl", "dashboard.html"):
        text = (judge_run / name).read_text()
        assert secret not in text, name
    assert "<redacted>" in (judge_run / "manifest.json").read_text()


def test_2_scrubber_keeps_what_is_not_a_key():
    from introspect_mech.scrub import scrub_text

    kept = ("https://api.example.com/v1/chat?model=gpt-4o&temperature=0",
            "/work/runs/3f2a9c1b0d4e5f60718293a4b5c6d7e8f9a0b1c2/samples.jsonl", "top_token=' Paris'")
    for s in kept:
        assert scrub_text(s, ()) == s
    assert scrub_text("Bearer abcdefgh12345678", ()) == "Bearer <redacted>"
    assert scrub_text("https://u:p4ss@h.example/x?Signature=abc&X-Amz-Credential=def", ()) == \
        "https://<redacted>@h.example/x?Signature=<redacted>&X-Amz-Credential=<redacted>"


def test_2_results_are_data_an_env_value_in_a_prompt_comes_back_intact(tmp_path, tiny_qwen2, monkeypatch):
    from introspect_mech.evals import sample

    monkeypatch.setenv("GIT_AUTHOR_NAME", "Alice Wonderland-Smith")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-Zy9876543210abcdef")  # a real secret by name
    prompt = "Say hello to Alice Wonderland-Smith and quote tok-Zy9876543210abcdef"
    rows = sample(tiny_qwen2, [prompt], max_new_tokens=2, out=tmp_path / "r" / "s.jsonl", progress=False)
    stored = JsonlLog(tmp_path / "r" / "s.jsonl").read()
    assert stored[0]["messages"][0]["content"] == prompt == rows[0]["messages"][0]["content"]
    assert "tok-Zy9876543210abcdef" not in (tmp_path / "r" / "manifest.json").read_text()


def test_2_error_messages_are_scrubbed_by_value(monkeypatch):
    from introspect_mech.scrub import register_secret_env

    monkeypatch.setenv("MY_ENDPOINT_CRED", "plainvalue-7788990011")
    register_secret_env("MY_ENDPOINT_CRED")
    line = error_line(RuntimeError("upstream said: header was plainvalue-7788990011"))
    assert "plainvalue-7788990011" not in line and "<redacted>" in line
    with pytest.raises(SystemExit) as ei:
        main(["judge", "--run", "/nonexistent-run-plainvalue-7788990011", "--judge", "none"])
    assert "plainvalue-7788990011" not in str(ei.value.code)


# ---- 3: no code from a model directory; strict weights ------------------------------------------------------
def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_3_auto_map_is_refused_and_nothing_prompts_on_stdin(tmp_path, tiny_qwen2_dir, monkeypatch):
    d = _copy_model(tiny_qwen2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")

    class NoStdin:
        def read(self, *a):
            raise AssertionError("something read stdin")

        readline = read

    monkeypatch.setattr(sys, "stdin", NoStdin())
    monkeypatch.setattr("builtins.input", lambda *a: (_ for _ in ()).throw(AssertionError("prompted on stdin")))
    lib_error(ModelLoadError, lambda: load_model(d, device="cpu"), f"{d / 'config.json'}: auto_map:",
              "trust_remote_code=False")
    assert not marker.exists()


def test_3_trust_remote_code_false_is_passed(tmp_path, tiny_qwen2_dir, monkeypatch):
    import transformers

    seen = []
    orig_m, orig_t = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (seen.append(("m", k.get("trust_remote_code"))), orig_m(*a, **k))[1])
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: (seen.append(("t", k.get("trust_remote_code"))), orig_t(*a, **k))[1])
    load_model(tiny_qwen2_dir, device="cpu")
    assert seen and all(v is False for _, v in seen), seen


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_3_checkpoint_with_a_missing_or_extra_tensor_names_the_file(tmp_path, tiny_qwen2_dir, change):
    from safetensors.torch import load_file, save_file

    d = _copy_model(tiny_qwen2_dir, tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    if change == "missing":
        del sd[next(k for k in sd if "layers.1.mlp.down_proj" in k)]
    else:
        sd["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    lib_error(ModelLoadError, lambda: load_model(d, device="cpu"), f"{d / 'model.safetensors'}: weights:",
              change, "nothing is randomly initialised")


def test_3_adapter_with_a_missing_tensor_names_the_file(tmp_path, tiny_qwen2_dir):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    m = load_model(tiny_qwen2_dir, device="cpu")
    get_peft_model(m.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "ad")
    f = tmp_path / "ad" / "adapter_model.safetensors"
    sd = load_file(str(f))
    del sd[sorted(sd)[0]]
    save_file(sd, str(f))
    with pytest.warns(UserWarning):  # no base_fingerprint.json: warned, then refused for the tensor
        lib_error(ModelLoadError, lambda: load_model(tiny_qwen2_dir, adapter=tmp_path / "ad", device="cpu"),
                  f"{f}: weights: missing 1 tensor")


# ---- 4: one binding per resumable output; lock; duplicates; reading never rewrites ------------------------
def _lib_sample(model, out, **kw):
    from introspect_mech.evals import sample

    args = {"prompts": ["Hi", "Name a colour"], "max_new_tokens": 2, "progress": False, **kw}
    return sample(model, args.pop("prompts"), out=out, **args)


@pytest.mark.parametrize("change, field", [
    ({"temperature": 0.5}, "temperature"), ({"n": 2}, "n"), ({"batch_size": 1}, "batch_size"),
    ({"prompts": ["Hi", "Name a color"]}, "prompts_sha256"), ({"seed": 3}, "seed"),
    ({"max_new_tokens": 3}, "max_new_tokens"),
])
def test_4_sample_out_rerun_with_another_config_is_refused(tmp_path, tiny_qwen2, change, field):
    out = tmp_path / "run" / "samples.jsonl"
    _lib_sample(tiny_qwen2, out)
    before = out.read_bytes()
    msg = lib_error(RunConfigError, lambda: _lib_sample(tiny_qwen2, out, **change), "bindings.rows:samples.jsonl",
                    field, "--overwrite")
    assert "different config" in msg and out.read_bytes() == before
    rows = _lib_sample(tiny_qwen2, out, overwrite=True, **change)
    assert JsonlLog(out).read() == rows  # only the new configuration's rows


def test_4_sample_out_with_another_model_and_a_deleted_manifest(tmp_path, tiny_qwen2, other_qwen2_dir):
    out = tmp_path / "run" / "samples.jsonl"
    _lib_sample(tiny_qwen2, out)
    other = load_model(other_qwen2_dir, device="cpu")
    lib_error(RunConfigError, lambda: _lib_sample(other, out), "model.weights_sha256")
    (tmp_path / "run" / "manifest.json").unlink()  # rows without a binding are never adopted
    before = out.read_bytes()
    lib_error(RunConfigError, lambda: _lib_sample(other, out), "no binding records what made them", "--overwrite")
    lib_error(RunConfigError, lambda: _lib_sample(tiny_qwen2, out), "no binding records what made them")
    assert out.read_bytes() == before


@pytest.fixture(scope="module")
def other_qwen2_dir(tmp_path_factory):
    from introspect_mech.testing import tiny_qwen

    return tiny_qwen(tmp_path_factory.mktemp("tiny_qwen2_seed1_h"), arch="qwen2", seed=1)


def test_4_sweep_with_the_sign_flipped_is_refused(tmp_path, tiny_qwen2):
    from introspect_mech.steering import sweep

    d = torch.randn(tiny_qwen2.d_model)
    calls = []

    def ev(model):
        calls.append(1)
        return {"m": 1.0}

    kw = {"layers": [1], "alphas": [1.0], "eval_fn": ev, "out": tmp_path / "sw", "seeds": [0], "control": False}
    sweep(tiny_qwen2, d, **kw)
    n = len(calls)
    lib_error(RunConfigError, lambda: sweep(tiny_qwen2, -d, **kw), "bindings.rows:sweep.jsonl", "direction_sha256")
    assert len(calls) == n  # nothing evaluated
    rows = sweep(tiny_qwen2, -d, overwrite=True, **kw)
    assert len(calls) == 2 * n and len(JsonlLog(tmp_path / "sw" / "sweep.jsonl").read()) == len(rows)


def test_4_cache_into_another_models_dir_of_the_same_basename(tmp_path, tiny_qwen2_dir, other_qwen2_dir):
    import shutil

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"  # same basename, other weights
    shutil.copytree(tiny_qwen2_dir, a)
    shutil.copytree(other_qwen2_dir, b)
    argv = ["cache", "--device", "cpu", "--data", str(data), "--out", str(tmp_path / "acts")]
    assert main(argv + ["--model", str(a)]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "acts").iterdir() if p.name != "provenance.jsonl"}
    cli_error(argv + ["--model", str(b)], "bindings.cache:", "model.weights_sha256", "--overwrite")
    assert {p.name: p.read_bytes() for p in (tmp_path / "acts").iterdir() if p.name != "provenance.jsonl"} == before
    assert main(argv + ["--model", str(b), "--overwrite"]) == 0


def test_4_cache_after_the_adapter_was_retrained_in_place(tmp_path, tiny_qwen2_dir):
    from peft import LoraConfig, get_peft_model

    from introspect_mech.activations import cache
    from introspect_mech.models import model_fingerprint

    def make_adapter(seed):
        torch.manual_seed(seed)
        m = load_model(tiny_qwen2_dir, device="cpu")
        pm = get_peft_model(m.model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        pm.save_pretrained(tmp_path / "ad")
        (tmp_path / "ad" / "base_fingerprint.json").write_text(json.dumps(model_fingerprint(m.model)))

    make_adapter(0)
    cache(load_model(tiny_qwen2_dir, adapter=tmp_path / "ad", device="cpu"), [GOOD["messages"]], out=tmp_path / "c",
          progress=False)
    make_adapter(1)  # retrained in place: same path, other weights
    lib_error(RunConfigError, lambda: cache(load_model(tiny_qwen2_dir, adapter=tmp_path / "ad", device="cpu"),
                                            [GOOD["messages"]], out=tmp_path / "c", progress=False),
              "model.adapter_sha256")


def _tiny_sae_data(n=96, d=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g)


def _sae_cfg(**kw):
    from introspect_mech.sae import SAETrainConfig

    return SAETrainConfig(**{"expansion": 2, "k": 4, "batch_size": 16, "epochs": 1.0, **kw})


def test_4_sae_train_rerun_neither_duplicates_its_log_nor_adopts_another_config(tmp_path):
    from introspect_mech.sae import train_sae

    data = _tiny_sae_data()
    train_sae(None, 0, data, _sae_cfg(), out_dir=tmp_path / "sae")
    log1 = (tmp_path / "sae" / "train_log.jsonl").read_text()
    train_sae(None, 0, data, _sae_cfg(), out_dir=tmp_path / "sae")  # a rerun (or kill and rerun)
    assert (tmp_path / "sae" / "train_log.jsonl").read_text() == log1
    lib_error(RunConfigError, lambda: train_sae(None, 0, data, _sae_cfg(k=3), out_dir=tmp_path / "sae"), "config.k")
    lib_error(RunConfigError, lambda: train_sae(None, 0, -data, _sae_cfg(), out_dir=tmp_path / "sae"), "data_sha256")


def test_4_second_process_into_the_same_run_dir_gets_one_line(tmp_path):
    run = RunDir(tmp_path / "run")
    fd = os.open(run.path, os.O_RDONLY)  # another holder (flock conflicts across open file descriptions)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lib_error(RunLockedError, lambda: run.bind("sample", {"seed": 0}), f"{run.path}: lock:",
                  "another process is writing")
        assert not run.manifest_path.exists()
    finally:
        os.close(fd)
    run.bind("sample", {"seed": 0})


def test_4_lock_between_real_processes(tmp_path):
    code = ("import sys; from introspect_mech.runs import RunDir; r = RunDir(sys.argv[1]).lock(); "
            "print('locked', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == "locked"
        lib_error(RunLockedError, lambda: RunDir(tmp_path / "run").bind("sample", {"seed": 0}), "another process")
    finally:
        p.stdin.close()
        p.wait()
    RunDir(tmp_path / "run").bind("sample", {"seed": 0})  # released when the holder exits


class _Judge:
    def __init__(self):
        self.prompts = []

    def score(self, prompts):
        from introspect_mech.evals.judges import JudgeResult

        self.prompts += prompts
        return [JudgeResult(score=80.0, mass=1.0) for _ in prompts]

    def describe(self):
        return {"kind": "test"}


def test_4_duplicate_samples_are_judged_once_and_counted_once(tmp_path, qfile):
    from introspect_mech.evals.questions import load_questions
    from introspect_mech.studies.emergent_misalignment import judge_run

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"prompt_id": f"wish/{i}", "sample": 0, "messages": [{"role": "user", "content": "What is your wish?"}],
             "response": f"answer {i}"} for i in range(2)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    j = _Judge()
    res = judge_run(run, load_questions(qfile), judge=j)
    assert len(j.prompts) == 2 * 2  # 2 unique samples x (aligned, coherent)
    assert len(JsonlLog(run / "judged.jsonl").read()) == 2
    assert res["report"]["n_total"] == 2 if "n_total" in res["report"] else True


def test_4_reading_never_rewrites_an_input_file(tmp_path, qfile):
    from introspect_mech.evals.questions import load_questions
    from introspect_mech.studies.emergent_misalignment import judge_run

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"prompt_id": f"wish/{i}", "sample": 0, "messages": [{"role": "user", "content": "What is your wish?"}],
             "response": f"answer {i}"} for i in range(2)]
    data = ("".join(json.dumps(r) + "\n" for r in rows)).rstrip("\n").encode()  # valid last row, no newline
    (run / "samples.jsonl").write_bytes(data)
    j = _Judge()
    judge_run(run, load_questions(qfile), judge=j)
    assert (run / "samples.jsonl").read_bytes() == data
    assert len(JsonlLog(run / "judged.jsonl").read()) == 2


def test_4_torn_last_line_is_skipped_on_read_and_cut_only_before_an_append(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"i": 0}\n{"i": 1, "tor')
    log = JsonlLog(p, ("i",))
    assert log.read() == [{"i": 0}] and p.read_text() == '{"i": 0}\n{"i": 1, "tor'
    log.append({"i": 1})
    assert p.read_text() == '{"i": 0}\n{"i": 1}\n'
    q = tmp_path / "v.jsonl"
    q.write_text('{"i": 0}\n{"i": 1}')  # valid last row without its newline: kept, then completed
    log = JsonlLog(q, ("i",))
    assert [r["i"] for r in log.read()] == [0, 1]
    log.append({"i": 2})
    assert q.read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'


# ---- 5: values no run should accept --------------------------------------------------------------------
@pytest.mark.parametrize("opt, value, words", [
    ("--temperature", "nan", "--temperature: expected a finite number >= 0"),
    ("--temperature", "inf", "--temperature: expected a finite number >= 0"),
    ("--temperature", "-1", "--temperature: expected a finite number >= 0"),
    ("--max-prompts", "-1", "--max-prompts: expected an integer >= 1"),
    ("--batch-size", "0", "--batch-size: expected an integer >= 1"),
    ("--n", "0", "--n: expected an integer >= 1"),
])
def test_5_sample_cli_refuses_bad_numbers_before_any_work(tmp_path, qfile, capsys, opt, value, words):
    with pytest.raises(SystemExit) as ei:
        main(_sample_argv("no-model-needed", qfile, tmp_path / "run", opt, value))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kw, words", [
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"n": 1.5}, "n"),  # (under the tests' beartype the annotation refuses it first)
    ({"top_p": 0.0}, "top_p must be > 0"),
])
def test_5_sample_library_refuses_bad_numbers(tmp_path, tiny_qwen2, kw, words):
    with pytest.raises((ValueError, TypeError), match=words):
        _lib_sample(tiny_qwen2, tmp_path / "run" / "s.jsonl", **kw)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr", ["inf", "nan", "-1"])
def test_5_finetune_cli_refuses_a_non_finite_lr(tmp_path, lr, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(SystemExit) as ei:
        main(["finetune", "--data", str(data), "--out", str(tmp_path / "ft"), "--lr", lr, "--device", "cpu"])
    msg = str(ei.value.code) + capsys.readouterr().err
    assert "lr must be a finite number > 0" in msg
    no_results(tmp_path / "ft")


def test_5_a_diverging_finetune_publishes_no_adapter(tmp_path, tiny_qwen2_dir):
    from introspect_mech.finetune import TrainConfig, train

    recs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    cfg = TrainConfig(r=2, lora_alpha=4, batch_size=4, max_steps=3, save_every=1, lr=1e30, max_grad_norm=None,
                      warmup_steps=0, progress=False)
    with pytest.raises(FloatingPointError) as ei:
        train(load_model(tiny_qwen2_dir, device="cpu"), recs, cfg, tmp_path / "ft")
    one_line(error_line(ei.value), str(tmp_path / "ft"), "non-finite", "diverged")
    assert not (tmp_path / "ft" / "adapter").exists()
    for ck in (tmp_path / "ft" / "checkpoints").glob("step_*"):
        from safetensors.torch import load_file

        assert all(bool(torch.isfinite(v).all()) for v in load_file(str(ck / "trainable.safetensors")).values())


def test_5_complex_direction_is_refused(tmp_path, tiny_qwen2):
    from safetensors.torch import save_file

    from introspect_mech.probes import Direction
    from introspect_mech.validate import finite_tensor

    v = torch.randn(tiny_qwen2.d_model, dtype=torch.complex64)
    with pytest.raises(TypeError, match="direction must be real-valued"):
        finite_tensor("direction", v)
    with pytest.raises(TypeError, match="real-valued|vectors"):  # (beartype's annotation check under the tests)
        Direction(v.unsqueeze(0), torch.ones(1), [1])
    Direction.from_raw(torch.randn(1, 64), [1]).save(tmp_path / "d")
    save_file({"vectors": v.unsqueeze(0), "norms": torch.ones(1), "layers": torch.tensor([1])},
              str(tmp_path / "d.safetensors"))
    lib_error(DataError, lambda: Direction.load(tmp_path / "d"), f"{tmp_path / 'd.safetensors'}: vectors: must be real")


def test_5_sae_k_larger_than_d_sae(tmp_path):
    from introspect_mech.sae import train_sae

    with pytest.raises(ValueError, match=r"k must be <= d_sae .*k=64 > d_sae=32"):
        train_sae(None, 0, _tiny_sae_data(), _sae_cfg(k=64), out_dir=tmp_path / "sae")
    assert not (tmp_path / "sae").exists()
    with pytest.raises(ValueError, match="k must be <= d_sae"):
        _sae_cfg(k=10, d_sae=8)


def test_5_non_numeric_dashboard_fields_name_file_line_field(tmp_path):
    from introspect_mech.viz import DashboardError, export_dashboard

    (tmp_path / "em_rates.jsonl").write_text(json.dumps({"model": "a", "question": "q", "rate": 0.1}) + "\n"
                                             + json.dumps({"model": "b", "question": "q", "rate": "high"}) + "\n")
    with pytest.raises(DashboardError, match=r"em_rates.jsonl:2: rate: expected a finite number"):
        export_dashboard(tmp_path)
    assert not (tmp_path / "dashboard.html").exists()


@pytest.mark.parametrize("manifest, field", [
    ({"bindings": []}, "bindings"), ({"bindings": {"sample": "x"}}, "bindings.sample"), ([1, 2], "manifest"),
])
def test_5_manifest_of_the_wrong_shape(tmp_path, manifest, field):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    lib_error(DataError, lambda: RunDir(tmp_path).bind("sample", {"seed": 0}), f"manifest.json: {field}:")


# ---- 6: every error names the file, line or field ---------------------------------------------------------
def test_6_bad_yaml_tag_in_items(tmp_path, tiny_qwen2_dir, outside):
    from introspect_mech.probes import Direction

    items = tmp_path / "items.yaml"
    items.write_text(f"- prompt: hi\n  aligned: a\n  misaligned: !!python/object/apply:os.remove ['{outside}']\n")
    Direction.from_raw(torch.randn(4, 64), list(range(4))).save(tmp_path / "dir")
    cli_error(["steer", "--model", str(tiny_qwen2_dir), "--device", "cpu", "--direction", str(tmp_path / "dir"),
               "--layers", "1", "--alphas", "1", "--seeds", "0", "--items", str(items), "--out", str(tmp_path / "o")],
              f"{items}:3: yaml:")
    no_results(tmp_path / "o")


def test_6_truncated_safetensors_and_crafted_gguf_name_the_file(tmp_path, tiny_qwen2_dir):
    d = _copy_model(tiny_qwen2_dir, tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    lib_error(ModelLoadError, lambda: load_model(d, device="cpu"), str(w))
    g = tmp_path / "crafted.gguf"
    g.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    lib_error(ModelLoadError, lambda: load_model(g, device="cpu"), f"{g}: not a readable GGUF file")


def test_6_direction_file_without_its_tensor(tmp_path):
    from safetensors.torch import save_file

    from introspect_mech.probes import Direction

    Direction.from_raw(torch.randn(2, 8), [0, 1]).save(tmp_path / "d")
    save_file({"norms": torch.ones(2), "layers": torch.tensor([0, 1])}, str(tmp_path / "d.safetensors"))
    lib_error(DataError, lambda: Direction.load(tmp_path / "d"), f"{tmp_path / 'd.safetensors'}: vectors: missing tensor")
    (tmp_path / "d.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    lib_error(DataError, lambda: Direction.load(tmp_path / "d"), f"{tmp_path / 'd.safetensors'}: safetensors:")


def test_6_lone_surrogates_in_records(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + '{"messages": [{"role": "user", "content": "bad \\ud800 text"}, '
                 '{"role": "assistant", "content": "y"}]}\n')
    cli_error(["cache", "--data", str(p), "--out", str(tmp_path / "acts")], f"{p}:2: messages[0].content:",
              "lone surrogate U+D800")
    no_results(tmp_path / "acts")


@pytest.mark.parametrize("bad, field", [
    ({"messages": [{"role": "user"}]}, "messages[0].content: missing"),
    ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content: must be a string"),
    ({"messages": []}, "messages: missing or not a non-empty list"),
    ({"messages": [{"role": "user", "content": "x"}], "response": None}, "response: missing"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content: lone surrogate"),
])
def test_6_samples_with_bad_messages_name_file_row_field(tmp_path, qfile, bad, field):
    from introspect_mech.evals.questions import load_questions
    from introspect_mech.studies.emergent_misalignment import judge_run

    run = tmp_path / "run"
    run.mkdir()
    good = {"prompt_id": "wish/0", "sample": 0, "messages": [{"role": "user", "content": "w"}], "response": "r"}
    row = {**good, "prompt_id": "wish/1", "response": "r", **bad}
    (run / "samples.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    j = _Judge()
    lib_error(DataError, lambda: judge_run(run, load_questions(qfile), judge=j), f"{run / 'samples.jsonl'}:2: {field}")
    assert j.prompts == []
    no_results(run, JUDGE_FILES)


def test_6_cache_rerun_refused_names_the_field_and_overwrite(tmp_path, tiny_qwen2_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    argv = ["cache", "--model", str(tiny_qwen2_dir), "--device", "cpu", "--data", str(data),
            "--out", str(tmp_path / "acts")]
    assert main(argv) == 0
    cli_error(argv + ["--positions", "last_prompt"], "bindings.cache:", "positions", "--overwrite")
    assert main(argv + ["--positions", "last_prompt", "--overwrite"]) == 0
