"""`train()`: the compact, resumable finetuning loop (plain torch; LoRA via peft or full weights)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.records import Record, validate_records
from ..models import LoadedModel, model_fingerprint
from ..runs import JsonlLog, RunDir, json_sha256
from . import adapters, distributed
from .batching import MicroBatch, collate, pack, step_groups, tokenize_records
from .config import TrainConfig
from .varlen import varlen_attention

Intervention = Callable[[], ContextManager[Any]]


@dataclass
class TrainResult:
    out_dir: Path
    weights_dir: Path  # out_dir/adapter (LoRA) or out_dir/model (full)
    steps: int
    losses: list[float]  # per optimizer step, over the whole run (resumed runs include earlier steps)
    final_loss: float
    tokens: int  # tokens processed by this call (not counting steps done before a resume)
    seconds: float  # training time of this call (excludes tokenisation and model loading)
    tokens_per_s: float
    resumed_from: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step` (HF conventions: 0 at step 0 when warming up).

    Args:
        step: optimizer step (0-based).
        total: total optimizer steps.
        warmup: warmup steps (linear from 0).
        schedule: "linear", "cosine" or "constant" after warmup.
        min_ratio: floor of the decay, as a fraction of the base lr.

    Returns:
        The factor in [0, 1].
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    f = max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return min_ratio + (1.0 - min_ratio) * f


def assistant_loss(loaded: LoadedModel, mb: MicroBatch, chunk_tokens: int | None = None) -> Float[Tensor, ""]:
    """Summed cross-entropy over the micro-batch's loss tokens; lm_head runs only on those positions.

    Args:
        loaded: the model being trained.
        mb: a packed micro-batch.
        chunk_tokens: if set, the lm_head + cross-entropy run over at most this many loss tokens at a
            time under activation checkpointing, so the `[tokens, vocab]` logits never exist whole
            (recomputed chunk by chunk in the backward pass; same loss and gradients).

    Returns:
        The summed loss (a scalar tensor).
    """
    base = loaded.base_model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    dev = loaded.device
    cu = mb.cu_seq_lens.to(dev)
    out = decoder(input_ids=mb.input_ids.to(dev), position_ids=mb.position_ids.to(dev), use_cache=False,
                  cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=mb.max_len, max_length_k=mb.max_len)
    hidden = out.last_hidden_state[0, mb.pred_index.to(dev)]
    head = base.get_output_embeddings()
    cap = getattr(getattr(base.config, "text_config", None) or base.config, "final_logit_softcapping", None)
    targets = mb.targets.to(dev)

    def ce(h: Tensor, t: Tensor) -> Tensor:
        logits = head(h).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits, t, reduction="sum")

    if not chunk_tokens or hidden.shape[0] <= chunk_tokens:
        return ce(hidden, targets)
    from torch.utils.checkpoint import checkpoint

    parts = [checkpoint(ce, hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens], use_reentrant=False)
             for s in range(0, hidden.shape[0], chunk_tokens)]
    return torch.stack(parts).sum()


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in (out / "checkpoints").glob("step_*")
                  if (p / "complete").exists() and (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in TrainConfig.RUNTIME_ONLY}


def train(
    model: LoadedModel,
    records: Sequence[Record],
    config: TrainConfig | None = None,
    out_dir: str | Path = "finetune_run",
    intervention: Intervention | None = None,
    *,
    data_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Finetune `model` on chat `records`; rerunning with the same `out_dir` resumes after a kill.

    After the call `model` carries the trained adapter (LoRA) or the trained weights (full).

    Args:
        model: the model to train (the base model for LoRA).
        records: chat records (`{"messages": [...]}`); loss on assistant tokens (and their
            end-of-turn token) unless `config.assistant_only=False`.
        config: a `TrainConfig` (default: `TrainConfig()`, the EM recipe).
        out_dir: the run directory (manifest, loss log, checkpoints, the adapter / weights).
        intervention: a zero-argument callable returning a context manager entered around every
            training forward (e.g. `steering.caft(...)` / `steering.preventative_steering(...)`).
        data_info: stored in the manifest beside the hash of the records actually trained on (e.g.
            dataset name and registry sha256).

    Returns:
        A `TrainResult` (losses, steps, the saved weights' path).
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    records = validate_records(records, source="train(records)")
    if config.n_examples is not None and config.n_examples < len(records):
        pick = sorted(random.Random(config.seed).sample(range(len(records)), config.n_examples))
        records = [records[i] for i in pick]
    data_hash = json_sha256([r["messages"] for r in records])
    run = RunDir(out)
    prev = run.manifest().get("finetune")
    if prev:
        if _comparable(prev["config"]) != _comparable(config.to_dict()) or prev["data_sha256"] != data_hash:
            raise ValueError(f"{out} holds a finetune with a different config or data; use a new out_dir")
    weights_dir = out / ("adapter" if config.method == "lora" else "model")

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    examples, tok_stats = tokenize_records(model, records, max_seq_len=config.max_seq_len,
                                   assistant_only=config.assistant_only, system_prompt=config.system_prompt,
                                   progress=config.progress)
    if not examples:
        raise ValueError("no training examples with loss tokens")
    groups = step_groups(len(examples), config.batch_size, config.seed, config.epochs)
    total = len(groups) if config.max_steps is None else min(len(groups), config.max_steps)
    warmup = int(config.warmup_ratio * total) if config.warmup_ratio > 0 else config.warmup_steps
    params = adapters.prepare(model, config)
    n_trainable = sum(p.numel() for _, p in params)
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, config.schedule, config.min_lr_ratio))

    if distributed.is_main():
        manifest = run.write_manifest(
            stage="finetune", model=model.name, model_source=model.meta.get("source"),
            base_fingerprint=model_fingerprint(model.model), seed=config.seed,
            finetune={"config": config.to_dict(), "data_sha256": data_hash, "n_records": len(records),
                      "tokenization": tok_stats, "total_steps": total, "warmup_steps": warmup,
                      "data": data_info or {}, "trainable_params": n_trainable, "intervention": getattr(intervention, "__name__", None)
                      if intervention else None},
        )
    distributed.barrier()
    if not distributed.is_main():
        manifest = run.manifest()
    log = JsonlLog(out / "train_log.jsonl")
    start, resumed = 0, None
    finished = manifest.get("finetune", {}).get("finished") and (weights_dir / "complete").exists()
    ckpt = _latest_checkpoint(out)
    if finished:
        ckpt = weights_dir
    if ckpt is not None:
        from safetensors.torch import load_file

        adapters.load_trainable_state(params, load_file(str(ckpt / "trainable.safetensors")))
        if finished:  # nothing left to train: only the weights are needed
            start = resumed = total
        else:
            st = torch.load(ckpt / "trainer_state.pt", weights_only=False)
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            _set_rng_state(st["rng"])
            start = resumed = st["step"]
    rows = [r for r in log.read() if r["step"] <= start]
    if distributed.is_main():
        log.path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # drop steps after the checkpoint
    distributed.barrier()
    losses = [r["loss"] for r in rows]

    device = model.device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=f"finetune {model.name}", unit="step", disable=not config.progress)
    model.model.train()
    tokens, t_train = 0, 0.0
    attn = varlen_attention(model.model)
    attn.__enter__()
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            step_exs = [examples[i] for i in groups[step]]
            n_loss = sum(e.n_loss for e in step_exs)  # the global count: every rank divides by it
            exs = distributed.shard(step_exs)  # this rank's share (all of them in one process)
            step_tokens, loss_sum = 0, 0.0
            for bin_ in pack(exs, config.micro_batch_tokens):
                mb = collate([exs[i] for i in bin_])
                with autocast, (intervention() if intervention else contextlib.nullcontext()):
                    loss = assistant_loss(model, mb, config.loss_chunk_tokens)
                (loss / n_loss).backward()
                loss_sum += loss.item()
                step_tokens += mb.n_tokens
            distributed.all_reduce_grads_([p for _, p in params])
            loss_sum, step_tokens = distributed.all_reduce_float(loss_sum), int(distributed.all_reduce_float(step_tokens))
            gnorm = (torch.nn.utils.clip_grad_norm_([p for _, p in params], config.max_grad_norm).item()
                     if config.max_grad_norm else None)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            tokens += step_tokens
            t_train += dt
            losses.append(loss_sum / n_loss)
            done = step + 1
            if (done % config.log_every == 0 or done == total) and distributed.is_main():
                log.append({"step": done, "epoch": round(done / (len(groups) / config.epochs), 4),
                            "loss": losses[-1], "lr": lr, "grad_norm": gnorm, "tokens": step_tokens,
                            "loss_tokens": n_loss, "tokens_per_s": step_tokens / dt,
                            "avg_tokens_per_s": tokens / t_train, "time": round(t_train, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / t_train:.0f}")
            if (config.save_every and done % config.save_every == 0) or done == total:
                if distributed.is_main():
                    _save_checkpoint(model, config, params, opt, sched, out, done)
                distributed.barrier()
    except BaseException:
        # interrupted (Ctrl-C, error): give a LoRA run's model back as the base, so calling train()
        # again with the same LoadedModel resumes from the last checkpoint
        if config.method == "lora" and model.has_adapter:
            model.model = model.model.unload()
        raise
    finally:
        attn.__exit__(None, None, None)
        bar.close()
        model.model.eval()
    last = _latest_checkpoint(out)
    if not finished and distributed.is_main():
        _finalize(model, last, weights_dir, config)
    distributed.barrier()
    tps = tokens / t_train if t_train else 0.0
    result = TrainResult(out_dir=out, weights_dir=weights_dir, steps=total, losses=losses,
                         final_loss=losses[-1] if losses else float("nan"), tokens=tokens, seconds=t_train,
                         tokens_per_s=tps, resumed_from=resumed, stats=tok_stats)
    if distributed.is_main():
        run.write_manifest(finetune={"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "final_loss": result.final_loss,
                                     "weights_dir": str(weights_dir), "tokens_per_s_last_call": tps,
                                     "train_seconds_last_call": t_train, "resumed_from": resumed})
    return result


def _save_checkpoint(model, config, params, opt, sched, out: Path, step: int) -> Path:
    from safetensors.torch import save_file

    dest = out / "checkpoints" / f"step_{step:04d}"
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(adapters.trainable_state(params), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(), "step": step},
               tmp / "trainer_state.pt")
    if config.method == "lora":
        adapters.save_weights(model, config, tmp / "adapter")
    (tmp / "complete").write_text(str(step))
    tmp.rename(dest)
    for old in (out / "checkpoints").glob("step_*"):
        if old == dest:
            continue
        if not config.keep_checkpoints:
            shutil.rmtree(old)
            continue
        # only the newest checkpoint is needed to resume; older ones keep their weights for analysis
        (old / "trainer_state.pt").unlink(missing_ok=True)
        if config.method == "lora":
            (old / "trainable.safetensors").unlink(missing_ok=True)
    return dest


def _finalize(model: LoadedModel, ckpt: Path, weights_dir: Path, config: TrainConfig) -> None:
    """Publish the final checkpoint as out_dir/adapter (or out_dir/model for full finetuning)."""
    if weights_dir.exists():
        shutil.rmtree(weights_dir)
    if config.method == "lora":
        shutil.copytree(ckpt / "adapter", weights_dir)
    else:
        adapters.save_weights(model, config, weights_dir)
    shutil.copy2(ckpt / "trainable.safetensors", weights_dir / "trainable.safetensors")
    (weights_dir / "complete").write_text(ckpt.name)
