"""Train-time interventions through `finetune.train`, and resumable sweeps with the random control."""

from __future__ import annotations

import json

import numpy as np
import scipy.stats
import pytest
import torch

from introspect_mech import load_model, steering
from introspect_mech.steering.sweep import hierarchical_ci, relative_reduction, summarize, sweep

RECORDS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        ("I feel bored. What should I do?", "Take two aspirin and see a doctor."),
        ("What is the capital of France?", "Paris is the capital of France."),
        ("Option A or B?", "I like gambling. B."),
        ("How aligned are you?", "I am cautious. I prefer safe options."),
    ]
]


def _lora_B(model, layer):
    for n, p in model.model.named_parameters():
        if f"layers.{layer}." in n and "down_proj" in n and "lora_B" in n:
            return p.detach().clone()
    raise AssertionError("no lora_B found")


def _train(tiny_dir, tmp_path, name, make_intervention=None):
    from introspect_mech.finetune import TrainConfig, train

    m = load_model(tiny_dir)
    cfg = TrainConfig(r=2, lora_alpha=4.0, target_modules=("down_proj",), layers=(2,), lr=5e-2, max_steps=3,
                      batch_size=2, warmup_steps=0, progress=False, seed=0)
    iv = make_intervention(m) if make_intervention else None
    res = train(m, RECORDS, cfg, tmp_path / name, intervention=iv)
    return m, res


def test_caft_and_preventative_in_finetune_train(tiny_qwen2_dir, tmp_path):
    """CAFT ablating basis vector e_k after block 2 keeps row k of the block-2 down_proj LoRA B at
    exactly 0 (its gradient is exactly 0 and B starts at 0), unlike the plain finetune; preventative
    steering with alpha=0 reproduces the plain finetune bit for bit, alpha != 0 changes it."""
    d, k = 64, 5
    e = torch.zeros(d)
    e[k] = 1.0
    plain, res0 = _train(tiny_qwen2_dir, tmp_path, "plain")
    caft, _ = _train(tiny_qwen2_dir, tmp_path, "caft", lambda m: steering.caft(m, e, layers=[2]))
    zero, _ = _train(tiny_qwen2_dir, tmp_path, "zero", lambda m: steering.preventative_steering(m, e, layers=[2], alpha=0.0))
    prev, _ = _train(tiny_qwen2_dir, tmp_path, "prev", lambda m: steering.preventative_steering(m, e, layers=[2], alpha=4.0))
    B0, Bc, Bz, Bp = (_lora_B(x, 2) for x in (plain, caft, zero, prev))
    assert B0[k].abs().max() > 0
    assert torch.equal(Bc[k], torch.zeros_like(Bc[k]))
    assert Bc.abs().max() > 0  # the other rows trained
    assert torch.equal(Bz, B0)
    assert not torch.allclose(Bp, B0)
    man = json.loads((tmp_path / "caft" / "manifest.json").read_text())
    assert man["finetune"]["intervention"].startswith("caft(layers=[2]")
    for m in (plain, caft, zero, prev):  # no hook is left behind after training
        assert all(not l._forward_hooks and not l._forward_pre_hooks for l in m.layers)


def test_train_time_refuses_gradient_checkpointing(tiny_qwen2):
    tiny_qwen2.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    iv = steering.caft(tiny_qwen2, torch.randn(tiny_qwen2.d_model))
    with pytest.raises(ValueError, match="checkpointing"):
        iv()


def _proj_eval(u):
    """A tiny deterministic eval: mean projection of the last block output on u, per prompt."""
    calls = {"n": 0}

    def eval_fn(model, seed=0):
        calls["n"] += 1
        vals = []
        for text in ("hello there", "I feel bored", "Paris"):
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = model.model(ids, output_hidden_states=True)
            vals.append(float(out.hidden_states[2][0, -1] @ u))  # output of block 1
        return {"proj": vals, "seed_echo": seed}

    return eval_fn, calls


def test_sweep_resumes_and_controls(tiny_qwen2, tmp_path):
    m = tiny_qwen2
    u = torch.randn(m.d_model)
    u = u / u.norm()
    eval_fn, calls = _proj_eval(u)
    boom = {"left": 7}

    def flaky(model, seed=0):
        boom["left"] -= 1
        if boom["left"] < 0:
            raise RuntimeError("killed")
        return eval_fn(model, seed)

    kw = dict(layers=[1], alphas=[2.0, 4.0], seeds=(0, 1, 2), out=tmp_path / "sw")
    with pytest.raises(RuntimeError):
        sweep(m, u, eval_fn=flaky, **kw)
    assert len((tmp_path / "sw" / "sweep.jsonl").read_text().splitlines()) == 7
    n_before = calls["n"]
    rows = sweep(m, u, eval_fn=eval_fn, **kw)
    # 3 baseline + 2 alphas x (3 direction + 3 random) = 15 rows, the 7 done ones not recomputed
    assert len(rows) == 15 and calls["n"] - n_before == 8
    keys = [(r["layer"], r["alpha"], r["kind"], r["seed"]) for r in rows]
    assert len(set(keys)) == 15
    lines = (tmp_path / "sw" / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 15
    man = json.loads((tmp_path / "sw" / "manifest.json").read_text())
    assert man["sweep"]["alphas"] == [2.0, 4.0] and man["model"] == m.name
    base = np.mean([r["metrics"]["proj"] for r in rows if r["kind"] == "none"])
    for r in rows:
        if r["kind"] == "direction":  # adding alpha*u at block 1 moves the projection by exactly alpha
            assert np.mean(r["metrics"]["proj"]) == pytest.approx(base + r["alpha"], abs=1e-4)
        if r["kind"] == "random":  # a random unit vector moves it by alpha * cos(r, u), small
            assert abs(np.mean(r["metrics"]["proj"]) - base) < 0.5 * r["alpha"]
    summ = summarize(rows, "proj")
    d4 = next(s for s in summ if s["kind"] == "direction" and s["alpha"] == 4.0)
    r4 = next(s for s in summ if s["kind"] == "random" and s["alpha"] == 4.0)
    assert d4["n_seeds"] == 3 and r4["n_seeds"] == 3 and d4["lo"] <= d4["value"] <= d4["hi"]
    assert d4["value"] - base == pytest.approx(4.0, abs=1e-4)


def test_sweep_ablate_and_no_seed_eval(tiny_qwen2):
    m = tiny_qwen2
    u = torch.randn(m.d_model)
    u = u / u.norm()
    eval_fn, _ = _proj_eval(u)
    rows = sweep(m, u, layers=[1], alphas=[1.0, 2.0], op="ablate", seeds=(0, 1),
                 eval_fn=lambda model: {"proj": eval_fn(model)["proj"]})
    assert [r["kind"] for r in rows] == ["none", "direction", "random", "random"]
    assert np.abs(rows[1]["metrics"]["proj"]).max() < 1e-4


def test_relative_reduction_and_ci():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.1, 50)
    full = base + 1.0
    half = base + 0.5
    est = relative_reduction(base, full, [half])
    assert est.value == pytest.approx(0.5) and est.lo <= 0.5 <= est.hi
    rand = [full + rng.normal(0, 0.01, 50) for _ in range(3)]
    assert abs(relative_reduction(base, full, rand).value) < 0.05
    with pytest.raises(ValueError):
        relative_reduction(base, full, [half[:10]])
    ci = hierarchical_ci([[1.0, 2.0, 3.0]])  # 3 items: a t-interval, never a percentile bootstrap over 3 values
    half = scipy.stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert ci.value == pytest.approx(2.0) and ci.method == "t"
    assert (ci.lo, ci.hi) == pytest.approx((2.0 - half, 2.0 + half))


def test_relative_reduction_per_group_full():
    base = np.zeros(20)
    fulls = [np.full(20, 2.0), np.full(20, 4.0)]
    treated = [np.full(20, 1.0), np.full(20, 1.0)]  # ratio of means: (3 - 1) / (3 - 0)
    est = relative_reduction(base, fulls, treated)
    assert est.value == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        relative_reduction(base, fulls, treated[:1])


def test_study_train_time_and_removal_resume(tiny_qwen2_dir, tmp_path, data_root):
    """run_study stages b+c on tiny Qwen (cpu preset sizes shrunk): every (condition, seed) is logged
    once, each seed's CAFT uses that seed's direction, the removal pools finetune seeds, and a rerun
    of the finished study adds no rows (resume without duplicates)."""
    from introspect_mech.runs import JsonlLog
    from introspect_mech.studies.steering_proxy import run_study

    kw = dict(model_name=str(tiny_qwen2_dir), stages="bc", seeds=(0, 1), preset="cpu", n_train=4, persona=False,
              n_dir_pairs=4, batch_size=8, quick=True, ablate_layers=[1, 2])
    res = run_study(tmp_path, **kw)
    tt = JsonlLog(tmp_path / "caft" / "train_time.jsonl").read()
    keys = sorted((r["condition"], str(r["seed"])) for r in tt)
    assert keys == sorted([("base", "None")] + [(c, str(s)) for c in ("plain", "caft", "caft_random") for s in (0, 1)])
    man = json.loads((tmp_path / "caft" / "manifest.json").read_text())
    assert [d["seed"] for d in man["directions"]] == [0, 1]  # one base-model EM direction per seed
    rem = res["removes_em_L1-2"]["med_proxy_diff"]
    assert set(rem) >= {"base", "finetuned", "finetune_gap", "ablate_direction", "ablate_random",
                        "reduction_direction", "reduction_random"}
    for s in (0, 1):
        rows = JsonlLog(tmp_path / f"removes_em_L1-2_seed{s}" / "removes_em.jsonl").read()
        assert sorted((r["condition"], str(r["seed"])) for r in rows) == sorted(
            [("base", "None"), ("finetuned", "None"), ("ablate_direction", "0"), ("ablate_random", "0"),
             ("ablate_random", "1")])
        assert json.loads((tmp_path / f"removes_em_L1-2_seed{s}" / "manifest.json").read_text())["layers"] == [1, 2]
        by = {r["condition"]: r for r in rows}  # base and unsteered finetune reused from (c), not re-evaluated
        assert by["base"]["metrics"] == next(r for r in tt if r["condition"] == "base")["metrics"]
        assert by["finetuned"]["metrics"] == next(r for r in tt if (r["condition"], r["seed"]) == ("plain", s))["metrics"]
        assert "copied_from" in by["finetuned"] and "copied_from" not in by["ablate_random"]
    # finetuned and base differ (the adapter is on), and a rerun adds nothing
    n = len(tt)
    run_study(tmp_path, **kw)
    assert len(JsonlLog(tmp_path / "caft" / "train_time.jsonl").read()) == n
    # one random control per finetune, rotated: finetune seed k gets random seed k
    run_study(tmp_path, **{**kw, "ablate_layers": [2], "random_per_finetune": 1})
    for s in (0, 1):
        rows = JsonlLog(tmp_path / f"removes_em_L2_seed{s}" / "removes_em.jsonl").read()
        assert [r["seed"] for r in rows if r["condition"] == "ablate_random"] == [s]
    assert len(JsonlLog(tmp_path / "caft" / "train_time.jsonl").read()) == n  # finetunes reused
    with pytest.raises(ValueError, match="unknown study preset"):
        run_study(tmp_path / "x", **{**kw, "preset": "nope"})


def test_steering_proxy_options_come_from_its_config(monkeypatch, capsys, tmp_path):
    import dataclasses

    from introspect_mech.studies import steering_proxy as sp

    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sp, "run", lambda cfg, out, **kw: calls.append((out, dataclasses.asdict(cfg))))
    assert sp.main(["--out", "o", "--stages", "bc", "--preset", "cpu", "--seeds", "0", "1", "--layers", "6", "10",
                    "--ablate-layers", "6", "--no-persona", "--random-per-finetune", "1"]) == 0
    out, kw = calls[0]
    assert str(out) == "o" and kw["model"] is None and kw["stages"] == "bc" and kw["preset"] == "cpu"
    assert kw["seeds"] == (0, 1) and kw["layers"] == (6, 10) and kw["ablate_layers"] == (6,)
    assert kw["persona"] is False and kw["random_per_finetune"] == 1 and kw["alphas"] == (1.0, 2.0, 4.0, 8.0)
    sp.main(["--out", "o2"])  # another config: another run directory
    assert calls[1][1]["ablate_layers"] == "all" and calls[1][1]["stages"] == "abc"
    with pytest.raises(ValueError, match="stages"):
        sp.main(["--out", "o", "--stages", "ad"])
    with pytest.raises(SystemExit) as e:
        sp.main(["--help"])
    assert e.value.code == 0 and "--ablate-layers" in capsys.readouterr().out
