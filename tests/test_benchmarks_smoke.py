"""The benchmark harness: exact-length inputs, interleaved timing, ratio verdicts, and the whole
`run_all.py --smoke` (every benchmark once on tiny Qwen) producing every ratio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_conversations_have_the_exact_length(tiny_qwen2):
    import common

    for b, s in ((1, 64), (3, 97)):
        convs = common.conversations(tiny_qwen2, b, s, seed=s)
        ids = common.chat_batch(tiny_qwen2, convs)
        assert ids.shape == (b, s)
        mask = tiny_qwen2.tokenize_chat(convs[0]).assistant_mask
        assert mask.sum() >= s // 4  # a real answer, not a token or two


def test_interleaved_rotates_and_counts():
    import common

    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = common.interleaved(fns, repeats=3, warmup=1, device=torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:6] == ["a", "b", "c"] and calls[6:9] == ["b", "c", "a"] and calls[9:] == ["c", "a", "b"]


def test_report_verdicts(tmp_path):
    import common

    rep = common.Report(tmp_path / "r.jsonl")
    rep.ratio("x", "case", "lower", 0.8, "<=0.85")
    rep.ratio("x", "case", "higher", 1.1, ">=1.2")
    rep.ratio("x", "case", "none", 1.0)
    verdicts = [r["verdict"] for r in rep.rows]
    assert verdicts == ["MET", "MISSED", None]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_run_all_smoke_prints_every_ratio(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "smoke.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAILED" not in proc.stdout, proc.stdout[-3000:]
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    benches = {r["bench"] for r in rows if r["kind"] == "ratio"}
    assert benches == {"cache", "judge", "steer-gen", "sample", "finetune", "cpu"}
    assert "=== summary: every ratio measured ===" in proc.stdout


def test_decode_roofline_is_the_slower_bound():
    import bench_cpu

    # the real 0.5B's shape on one thread of the AVX512-BF16 EPYC (6c): fp32 is compute-bound at batch 32
    fp32 = bench_cpu.decode_limits(32, 1_980_000_000, 494_000_000, bandwidth_gbps=16.7, peak_gflops=50.6)
    assert fp32["bound"] == "compute" and fp32["flops_s"] > fp32["bytes_s"]
    assert fp32["roofline_tok_s"] == pytest.approx(32 / fp32["flops_s"])
    assert fp32["roofline_tok_s"] < fp32["bandwidth_limit_tok_s"]
    # one row on a fast-multiplying CPU: reading the weights is the limit
    one = bench_cpu.decode_limits(1, 990_000_000, 494_000_000, bandwidth_gbps=16.7, peak_gflops=236.0)
    assert one["bound"] == "bandwidth" and one["roofline_tok_s"] == pytest.approx(one["bandwidth_limit_tok_s"])
