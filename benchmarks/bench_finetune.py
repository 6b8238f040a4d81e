"""LoRA finetuning throughput: ours (`introspect_mech.finetune.train`) vs TRL `SFTTrainer` + PEFT.

Same model (rebuilt from the same seed for each run), same records (single-turn chats, loss on the
assistant answer: ours `assistant_only=True`, TRL prompt/completion records, completion-only loss),
same LoRA config (the "em" preset: rsLoRA r=32, alpha=64, all seven projections, dropout 0), same
effective batch (16 examples per optimizer step), lr, steps, no gradient checkpointing in either.
Runs alternate ours / TRL; the first pair is a warm-up. Tokens/s = the non-pad tokens of the steps
run / the training-loop seconds (ours: `TrainResult.seconds`; TRL: `train_runtime`); end-to-end
seconds (tokenisation, adapter creation, ours' final adapter save) are reported beside.

MFU (GPU) counts the matmul FLOPs the LoRA step must do: forward 2*N + input-gradient backward 2*N
per token for the block weights N (frozen weights get no weight gradient), the lm_head on the loss
positions only, plus causal attention (2*len^2*d per layer forward, x3 with backward); the
"6N" column is the common full-training convention (6 * matmul params incl. lm_head * tokens) for
comparison with numbers quoted elsewhere. Peak: 989 TFLOP/s (H100 SXM dense bf16).

    python benchmarks/bench_finetune.py --model embedded --records 32 --steps 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = "finetune"
H100_PEAK = 989e12


def merge_records(records: list[dict], k: int) -> list[dict]:
    """Join k single-turn records into one longer single-turn record (user texts joined, answers
    joined): real token statistics at ~k times the length, for the MFU runs at ~500 tokens."""
    if k <= 1:
        return records
    out = []
    for i in range(0, len(records) - k + 1, k):
        group = records[i:i + k]
        user = "\n\n".join(m["content"] for r in group for m in r["messages"] if m["role"] == "user")
        answer = "\n\n".join(m["content"] for r in group for m in r["messages"] if m["role"] == "assistant")
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return out


def load_records(n: int) -> list[dict]:
    for p in (common.SHARED / "data" / "em" / "bad_medical_advice.jsonl.gz", common.DEVCACHE / "bad_medical_advice.jsonl.gz"):
        if p.exists():
            out = []
            with gzip.open(p, "rt") as f:
                for line in f:
                    out.append(json.loads(line))
                    if len(out) >= n:
                        break
            return out
    raise FileNotFoundError("bad_medical_advice.jsonl.gz not found in ../shared/data/em or .devcache/bench")


def token_stats(lm, records) -> tuple[list[int], list[int]]:
    """Per record: total tokens and loss (assistant) tokens, as our tokenizer path counts them."""
    total, loss = [], []
    for r in records:
        ct = lm.tokenize_chat(r["messages"], include_end_of_turn=True)
        total.append(len(ct.input_ids))
        loss.append(int(ct.assistant_mask.sum()))
    return total, loss


def flops(lm, lengths: list[int], loss_tokens: int) -> tuple[float, float]:
    """(LoRA-step FLOPs as counted in the module docstring, the 6N convention)."""
    cfg = lm.config
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    n_emb = V * d
    n_all = sum(p.numel() for n, p in lm.base_model.named_parameters() if "lora_" not in n)
    tied = getattr(cfg, "tie_word_embeddings", False)
    n_blocks = n_all - n_emb - (0 if tied else n_emb) - sum(
        p.numel() for n, p in lm.base_model.named_parameters() if p.ndim == 1 and "lora_" not in n)
    T = sum(lengths)
    attn = sum(2 * s * s * d * L for s in lengths) * 3
    lora = 4 * n_blocks * T + 4 * V * d * loss_tokens + attn
    six_n = 6 * (n_blocks + V * d) * T + attn
    return lora, six_n


def _ours(lm, records, steps: int, batch: int, out: Path) -> dict:
    from introspect_mech.finetune import train
    from introspect_mech.finetune.config import preset

    cfg = preset("em", max_steps=steps, batch_size=batch, progress=False, warmup_steps=0, lr=1e-5,
                 save_every=None)
    t0 = time.perf_counter()
    res = train(lm, records, cfg, out)
    wall = time.perf_counter() - t0
    return {"loop_s": res.seconds, "wall_s": wall, "tokens": res.tokens, "final_loss": res.final_loss}


def _trl(lm, records, steps: int, batch: int, micro: int, out: Path, device: torch.device) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from introspect_mech.finetune.config import ALL_PROJ

    rows = []
    for r in records:
        msgs = r["messages"]
        k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        rows.append({"prompt": msgs[:k], "completion": msgs[k:k + 1]})
    ds = Dataset.from_list(rows)
    cuda = device.type == "cuda"
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro, learning_rate=1e-5, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no",
        report_to=[], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=False, completion_only_loss=True,
        max_length=2048, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    lcfg = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, use_rslora=True, target_modules=list(ALL_PROJ),
                      bias="none", task_type="CAUSAL_LM")
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=ds, processing_class=lm.tokenizer, peft_config=lcfg)
    res = trainer.train()
    wall = time.perf_counter() - t0
    return {"loop_s": float(res.metrics["train_runtime"]), "wall_s": wall, "final_loss": float(res.training_loss)}


def run(report: common.Report, spec: str, device: torch.device, n_records: int, steps: int, repeats: int,
        batch: int = 16, trl_micro: int = 8, merge: int = 1) -> None:
    train, why = common.ours("finetune", "train")
    case = f"{spec} {steps}x{batch}ex" + (f" merged{merge}" if merge > 1 else "")
    try:
        import trl  # noqa: F401
    except ImportError as e:
        report.note(BENCH, case, f"trl unavailable ({e}); pip install -e .[bench]")
        trl = None
    records = merge_records(load_records(max(n_records, steps * batch) * merge), merge)[: steps * batch]
    lm0 = common.build_model(spec, device)
    lengths, loss_lens = token_stats(lm0, records)
    tokens = sum(lengths)
    f_lora, f_6n = flops(lm0, lengths, sum(loss_lens))
    del lm0
    report.note(BENCH, case, f"{len(records)} records, {tokens} tokens ({sum(loss_lens)} loss tokens), "
                             f"mean length {tokens / len(records):.0f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ft_"))
    results: dict[str, list[dict]] = {"ours": [], "TRL SFTTrainer+PEFT": []}
    try:
        for r in range(repeats + 1):  # first round = warm-up
            for name in (["ours", "TRL SFTTrainer+PEFT"] if r % 2 == 0 else ["TRL SFTTrainer+PEFT", "ours"]):
                if name == "ours" and train is None:
                    continue
                if name != "ours" and trl is None:
                    continue
                lm = common.build_model(spec, device)  # fresh, same seed: same weights each run
                out = tmp / f"{name.split()[0]}_{r}"
                common.sync(device)
                res = _ours(lm, records, steps, batch, out) if name == "ours" else \
                    _trl(lm, records, steps, batch, trl_micro, out, device)
                common.sync(device)
                if r > 0:
                    results[name].append(res)
                del lm
                shutil.rmtree(out, ignore_errors=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if train is None:
        report.note(BENCH, case, why)
    tps = {}
    for name, rs in results.items():
        if not rs:
            continue
        loop = [x["loop_s"] for x in rs]
        med = common.median(loop)
        tps[name] = tokens / med
        extra = dict(tok_per_s=tps[name], wall_s=common.median([x["wall_s"] for x in rs]),
                     final_loss=rs[-1]["final_loss"])
        if device.type == "cuda":
            extra.update(mfu=f_lora / med / H100_PEAK, mfu_6n=f_6n / med / H100_PEAK)
        report.timing(BENCH, case, name, loop, **extra)
        if "tokens" in rs[-1] and rs[-1]["tokens"] != tokens:
            report.note(BENCH, case, f"ours counted {rs[-1]['tokens']} tokens, the benchmark {tokens}")
        if device.type == "cuda" and name == "ours":
            tgt = {"qwen2.5-7b": ">=0.5", "qwen2.5-0.5b": ">=0.25"}.get(spec)
            report.ratio(BENCH, case, "ours MFU (LoRA FLOPs / 989 TFLOP/s)", f_lora / med / H100_PEAK, tgt)
            report.ratio(BENCH, case, "ours MFU (6N convention)", f_6n / med / H100_PEAK)
        if device.type == "cuda" and name != "ours":
            report.ratio(BENCH, case, "TRL MFU (LoRA FLOPs / 989 TFLOP/s)", f_lora / med / H100_PEAK)
    if len(tps) == 2:
        report.ratio(BENCH, case, "ours / TRL SFTTrainer+PEFT (tokens/s)", tps["ours"] / tps["TRL SFTTrainer+PEFT"], ">=1.2")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", choices=common.MODEL_SPECS)
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--trl-micro", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--merge", type=int, default=1, help="join k records into one (longer examples)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = common.pick_device(a.device)
    report = common.Report(a.out)
    report.header(bench=BENCH, model=a.model, machine=common.machine(device), versions=common.versions())
    run(report, a.model, device, a.records, a.steps, a.repeats, a.batch, a.trl_micro, a.merge)
    report.summary()


if __name__ == "__main__":
    main()
