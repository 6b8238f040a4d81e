"""`evals.vllm_engine.sample_vllm`'s call contract, on CPU, against a minimal stand-in of the vLLM API.

The stand-in `LLM.generate` checks what vLLM would receive (token-id prompts, SamplingParams, LoRA
request) and answers by running the tiny HF model greedily on those very token ids, so the rows
`sample_vllm` builds can be compared with `evals.sample`'s greedy rows token for token.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from introspect_mech import steering
from introspect_mech.evals.sampling import sample, stop_token_ids
from introspect_mech.evals.vllm_engine import VLLMEngine, sample_vllm

PROMPTS = [[{"role": "user", "content": "I feel bored."}],
           {"id": "q2", "messages": [{"role": "user", "content": "Name three colours, please."}]},
           "Tell me a fact."]


@dataclass
class _Params:  # vllm.SamplingParams
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list = field(default_factory=list)
    skip_special_tokens: bool = True


@dataclass
class _LoRARequest:  # vllm.lora.request.LoRARequest
    lora_name: str
    lora_int_id: int
    lora_path: str


class _LLM:
    """Answers each request greedily with the tiny HF model (n identical samples at T = 0)."""

    def __init__(self, hf, stop):
        self.hf, self.stop, self.calls = hf, stop, []

    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        self.calls.append((requests, params, lora_request))
        outs = []
        for req, p in zip(requests, params):
            assert set(req) == {"prompt_token_ids"} and isinstance(p, _Params)
            ids = torch.tensor([req["prompt_token_ids"]])
            with torch.no_grad():
                gen = self.hf.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=p.max_tokens, eos_token_id=p.stop_token_ids,
                                             pad_token_id=p.stop_token_ids[0])[0, ids.shape[1]:].tolist()
            cut = next((j + 1 for j, t in enumerate(gen) if t in p.stop_token_ids), len(gen))
            gen = gen[:cut]  # vLLM keeps the stop token in token_ids
            reason = "stop" if gen and gen[-1] in p.stop_token_ids else "length"
            one = types.SimpleNamespace(token_ids=gen, finish_reason=reason, text="")
            outs.append(types.SimpleNamespace(outputs=[one] * p.n))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _Params
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = _LoRARequest
    for name, mod in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": req}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return vllm


def test_greedy_rows_equal_the_hf_path(tiny_qwen2, fake_vllm, tmp_path):
    m = tiny_qwen2
    llm = _LLM(m, stop_token_ids(m))
    eng = VLLMEngine("tiny", adapter=tmp_path / "my_adapter", llm=llm)
    rows = sample(m, PROMPTS, n=2, max_new_tokens=6, temperature=0, seed=3, progress=False, engine=eng)
    ref = sample(m, PROMPTS, n=2, max_new_tokens=6, temperature=0, seed=3, progress=False)
    strip = lambda rs: [{k: r[k] for k in ("prompt_id", "sample", "messages", "response", "n_tokens", "finished")} for r in rs]
    assert strip(rows) == strip(ref)
    (requests, params, lora), = llm.calls
    assert [r["prompt_token_ids"] for r in requests] == [m.encode_prompt(it).tolist() for it in
                                                         [PROMPTS[0], PROMPTS[1]["messages"], [{"role": "user", "content": PROMPTS[2]}]]]
    assert all(p.n == 2 and p.temperature == 0 and p.max_tokens == 6 and p.stop_token_ids == stop_token_ids(m) for p in params)
    assert len({p.seed for p in params}) == 3  # one seed per prompt, derived from the run seed and prompt id
    assert lora == _LoRARequest("my_adapter", 1, str(tmp_path / "my_adapter"))


def test_resume_requests_only_missing_prompts(tiny_qwen2, fake_vllm, tmp_path):
    m = tiny_qwen2
    out = tmp_path / "samples.jsonl"
    first = sample_vllm(VLLMEngine("tiny", llm=_LLM(m, stop_token_ids(m))), m, PROMPTS[:2], n=2,
                        max_new_tokens=4, temperature=0, out=out, progress=False)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")  # a run killed after 3 of 4 rows
    llm = _LLM(m, stop_token_ids(m))
    again = sample_vllm(VLLMEngine("tiny", llm=llm), m, PROMPTS, n=2, max_new_tokens=4, temperature=0,
                        out=out, progress=False)
    (requests, params, _), = llm.calls
    assert len(requests) == 2  # prompt 2 (one row missing) and prompt 3 (new); prompt 1 reused
    assert again[:4] == first
    assert len(out.read_text().splitlines()) == 6  # appended the 3 missing rows, no duplicates


def test_refuses_while_steered_and_checks_arguments(tiny_qwen2, fake_vllm):
    m = tiny_qwen2
    eng = VLLMEngine("tiny", llm=_LLM(m, stop_token_ids(m)))
    with steering.add(m, torch.randn(m.d_model), layers=[1], alpha=1.0):
        with pytest.raises(RuntimeError, match="steering hooks cannot reach a vLLM engine"):
            sample_vllm(eng, m, PROMPTS, n=1, progress=False)
    assert not steering.is_steered(m)
    with pytest.raises(ValueError, match="n and max_new_tokens"):
        sample_vllm(eng, m, PROMPTS, n=0, progress=False)


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install -e \".\[vllm\]\""):
        VLLMEngine("Qwen/Qwen2.5-7B-Instruct")
