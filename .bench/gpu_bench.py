"""GPU timing: activations.cache (all blocks, response_mean) vs a raw HF forward, random Qwen2.5-0.5B-shaped model."""
import json, os, sys, time, tempfile
sys.path.insert(0, "src")
import torch
from introspect_mech.testing import tiny_qwen
from introspect_mech import load_model
from introspect_mech.activations import cache, tokenize, _run_batch

path = tiny_qwen(tempfile.mkdtemp(), arch="qwen2", n_layers=24, d_model=896, n_heads=14, n_kv_heads=2, d_mlp=4864, vocab_size=512)
m = load_model(path, device="cuda", dtype=torch.bfloat16)
# the real Qwen vocab is 151936: pad the lm_head/embeddings to that size so the raw forward pays for it
m.model.resize_token_embeddings(151936)
text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 12
convs = [[{"role": "user", "content": "Tell me something."}, {"role": "assistant", "content": text}] for _ in range(32)]
items = tokenize(m, convs, "response_mean")
ids = torch.stack([t.input_ids for t in items]).cuda()
att = torch.ones_like(ids)
res = {"seq_len": ids.shape[1], "batch": ids.shape[0], "device": torch.cuda.get_device_name()}
def timeit(f, n=20):
    for _ in range(3): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): f()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
with torch.inference_mode():
    res["raw_forward_s"] = timeit(lambda: m.model(input_ids=ids, attention_mask=att, use_cache=False).logits)
    res["raw_forward_hidden_states_s"] = timeit(lambda: m.model(input_ids=ids, attention_mask=att, use_cache=False, output_hidden_states=True).logits)
L = list(range(m.n_layers))
for pos in ("response_mean", "response_last", "all"):
    it = tokenize(m, convs, pos)
    res[f"cache_batch_{pos}_s"] = timeit(lambda: _run_batch(m, it, L, pos, torch.bfloat16))
res["cache_end_to_end_response_mean_s"] = timeit(lambda: cache(m, convs, positions="response_mean", batch_size=32, progress=False), n=5)
for k in list(res):
    if k.startswith("cache_"): res[k.replace("_s", "_ratio")] = res[k] / res["raw_forward_s"]
print(json.dumps(res, indent=1))
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_bench.json"), "w"), indent=1)
