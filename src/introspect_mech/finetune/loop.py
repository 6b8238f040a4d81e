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
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence, cast

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.records import DataError, Record, validate_records
from ..models import LoadedModel, max_positions, model_fingerprint
from ..runs import JsonlLog, RunConfigError, RunDir, json_sha256, write_jsonl
from . import adapters, distributed
from .batching import MicroBatch, collate, pack, step_groups, tokenize_records
from .config import TrainConfig
from .varlen import varlen_attention
from ..models import default_dtype
from ..runs import save_tensors, staged_dir, write_text

if TYPE_CHECKING:
    from peft import PeftModel

Intervention = Callable[[], ContextManager[Any]]


@dataclass
class TrainResult:
    """What `train` returns: where the weights are, the loss curve and throughput."""

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


def autocast_bf16(config: TrainConfig, model: LoadedModel) -> bool:
    """Whether the training forward runs under bfloat16 autocast (see `TrainConfig.bf16`).

    Args:
        config: the training configuration (`bf16` True / False / None = by device).
        model: the model being trained.

    Returns:
        True for bf16 autocast (CUDA or CPU).
    """
    device = model.device
    if device.type not in ("cuda", "cpu"):
        return False
    if config.bf16 is not None:
        return config.bf16

    return device.type == "cuda" or model.dtype == torch.bfloat16 or default_dtype("cpu") == torch.bfloat16


STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """RNG state as (tensors, JSON): torch / CUDA generator bytes, and Python's Mersenne state."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    version, state, gauss = random.getstate()
    return tensors, {"python": [version, list(state), gauss]}


def _set_rng_state(tensors: dict[str, Tensor], js: dict[str, Any]) -> None:
    version, state, gauss = js["python"]
    random.setstate((version, tuple(state), gauss))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.split(".")[-1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_trainer_state(dest: Path, opt: torch.optim.Optimizer, sched: Any, step: int) -> None:
    """Optimizer, scheduler and RNG state as safetensors (tensors) + JSON (the rest); no pickle.

    Args:
        dest: checkpoint folder; writes `trainer_state.safetensors` and `trainer_state.json`.
        opt: the optimizer.
        sched: the LR scheduler (its `state_dict()` must be JSON-serialisable, as LambdaLR's is).
        step: optimizer steps done.
    """

    osd = opt.state_dict()
    tensors, rng_js = _rng_state()
    state_js: dict[str, dict[str, Any]] = {}
    for pid, st in osd["state"].items():
        state_js[str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                state_js[str(pid)][k] = v
    js = {"format": "introspect_mech.trainer_state/1", "step": step, "param_groups": osd["param_groups"],
          "optimizer_state": state_js, "scheduler": sched.state_dict(), "rng": rng_js}
    save_tensors(dest / STATE_TENSORS, tensors, root=dest)
    write_text(dest / STATE_JSON, json.dumps(js), root=dest)


def load_trainer_state(src: Path, opt: torch.optim.Optimizer, sched: Any) -> int:
    """Restore what `save_trainer_state` wrote (safetensors + JSON only: nothing is unpickled).

    Args:
        src: the checkpoint folder holding `trainer_state.safetensors` and `trainer_state.json`.
        opt: the optimizer to load into (the same parameter groups as when saved).
        sched: the LR scheduler to load into.

    Returns:
        The step the state was saved at.

    Raises:
        DataError: the files are missing, corrupt or do not fit this optimizer.
    """
    from safetensors.torch import load_file

    try:
        js = json.loads((src / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(src / STATE_TENSORS))
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one DataError
        raise DataError(str(src), None, "trainer_state", f"unreadable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}); delete the checkpoint folder to redo it") from None
    state: dict[int, dict[str, Any]] = {}
    for pid, extra in js["optimizer_state"].items():
        state[int(pid)] = dict(extra)
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    groups = js["param_groups"]
    for g in groups:  # JSON turned tuples into lists
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
        sched.load_state_dict(js["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise DataError(str(src / STATE_JSON), None, "optimizer", f"does not fit this run's optimizer ({e})") from None
    _set_rng_state(tensors, js["rng"])
    return int(js["step"])


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    legacy = [p for p in ckpts if (p / "trainer_state.pt").exists() and not (p / STATE_JSON).exists()]
    if legacy:
        import warnings

        warnings.warn(f"{legacy[-1]}: ignoring a pickled trainer_state.pt (pickles from run directories are never "
                      "loaded); resuming from the last safetensors checkpoint instead", UserWarning, stacklevel=3)
    done = [p for p in ckpts if (p / "complete").exists() and (p / STATE_JSON).exists()
            and (p / STATE_TENSORS).exists()]
    return done[-1] if done else None


def _comparable(cfg: dict) -> dict:
    """The result-determining part of a config dict: runtime-only fields dropped, and fields at their
    default value dropped too, so adding a new field (with a default) to TrainConfig does not make
    every existing run directory refuse to resume."""
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in cfg.items() if k not in TrainConfig.RUNTIME_ONLY and (k not in defaults or v != defaults[k])}


def train(
    model: LoadedModel,
    records: Sequence[Record],
    config: TrainConfig | None = None,
    out_dir: str | Path = "finetune_run",
    intervention: Intervention | None = None,
    *,
    data_info: dict[str, Any] | None = None,
    overwrite: bool = False,
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
        overwrite: when `out_dir` holds a run of another configuration, delete it and start
            clean (otherwise `RunConfigError`).

    The run directory is bound to the configuration (model name and weights fingerprint, adapter,
    TrainConfig, data hash): a rerun with any of them changed raises `RunConfigError` naming the
    fields. `config.max_seq_len` may not exceed the model's context length (`DataError`); examples
    longer than it are truncated and counted (`tokenization.truncated` in the manifest).

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
    n_pos = max_positions(model)
    if n_pos is not None and config.max_seq_len > n_pos:
        raise DataError("TrainConfig", None, "max_seq_len",
                        f"{config.max_seq_len} exceeds the context length of {model.name} ({n_pos} positions, "
                        f"max_position_embeddings); set max_seq_len <= {n_pos} (longer examples are then truncated "
                        "and counted in the manifest)")
    run = RunDir(out)
    prev: dict[str, Any] = run.manifest().get("finetune") or {}
    legacy = bool(prev) and run.bound("finetune") is None and not overwrite  # a run directory from before binding
    if legacy and (_comparable(prev["config"]) != _comparable(config.to_dict()) or prev["data_sha256"] != data_hash):
        raise RunConfigError(str(run.manifest_path), None, "finetune",
                             f"{out} holds a finetune with a different config or data; use a new out_dir")
    fingerprint = model_fingerprint(model.model)
    binding = {  # the intervention is a callable: recorded in the manifest, not bound (name it in data_info)
        "model": {"name": model.name, "adapter": model.meta.get("adapter"), **fingerprint},
        "config": _comparable(config.to_dict()), "data_sha256": data_hash, "data": data_info or {},
    }
    run.check_binding("finetune", binding, overwrite=overwrite)  # every rank refuses alike, before any write
    distributed.barrier()
    if distributed.is_main():
        run.bind("finetune", binding, overwrite=overwrite)
    distributed.barrier()
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

    use_bf16 = autocast_bf16(config, model)
    if distributed.is_main():
        manifest = run.write_manifest(
            stage="finetune", model=model.name, model_source=model.meta.get("source"),
            base_fingerprint=fingerprint, seed=config.seed,
            finetune={"config": config.to_dict(), "data_sha256": data_hash, "n_records": len(records),
                      "tokenization": {**tok_stats, "max_seq_len": config.max_seq_len, "model_max_positions": n_pos},
                      "total_steps": total, "warmup_steps": warmup, "autocast_bf16": use_bf16,
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
            start = resumed = load_trainer_state(ckpt, opt, sched)
    rows = [r for r in log.read() if r["step"] <= start]
    if distributed.is_main():
        write_jsonl(log.path, rows, root=out)  # drop steps after the checkpoint
    distributed.barrier()
    losses = [r["loss"] for r in rows]

    device = model.device
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext())
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
            for bin_ in pack(exs, config.micro_batch_budget(device.type)):
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
            if not math.isfinite(losses[-1]):  # diverged: never checkpoint or publish NaN weights
                raise FloatingPointError(f"{out}: step {done}: loss is {losses[-1]} (non-finite): the run diverged "
                                         f"(lr {config.lr:g}); nothing from this step is saved")
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
            model.model = cast("PeftModel", model.model).unload()  # has_adapter: a PeftModel
        raise
    finally:
        attn.__exit__(None, None, None)
        bar.close()
        model.model.eval()
    last = _latest_checkpoint(out)
    if not finished and distributed.is_main():
        if last is None:  # the loop saves a complete checkpoint at its last step
            raise RuntimeError(f"{out}: no complete checkpoint to publish")
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

    state = adapters.trainable_state(params)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a NaN adapter is never saved, let alone published as complete
        raise FloatingPointError(f"{out}: step {step}: non-finite parameters ({len(bad)} tensor(s), first {bad[0]!r}): "
                                 f"the run diverged (lr {config.lr:g}); nothing from this step is saved")
    dest = out / "checkpoints" / f"step_{step:04d}"
    with staged_dir(dest, root=out) as tmp:  # a fresh folder the writer made; published by one rename
        save_tensors(tmp / "trainable.safetensors", state, root=tmp)
        save_trainer_state(tmp, opt, sched, step)
        if config.method == "lora":
            adapters.save_weights(model, config, tmp / "adapter")
        write_text(tmp / "complete", str(step), root=tmp)
    for old in (out / "checkpoints").glob("step_*"):
        if old == dest:
            continue
        if not config.keep_checkpoints:
            shutil.rmtree(old)
            continue
        # only the newest checkpoint is needed to resume; older ones keep their weights for analysis
        (old / STATE_TENSORS).unlink(missing_ok=True)
        (old / STATE_JSON).unlink(missing_ok=True)
        if config.method == "lora":
            (old / "trainable.safetensors").unlink(missing_ok=True)
    return dest


def _finalize(model: LoadedModel, ckpt: Path, weights_dir: Path, config: TrainConfig) -> None:
    """Publish the final checkpoint as out_dir/adapter (or out_dir/model for full finetuning)."""

    with staged_dir(weights_dir, root=weights_dir.parent) as tmp:  # published complete, or not at all
        if config.method == "lora":
            for f in (ckpt / "adapter").iterdir():
                if f.is_symlink() or not f.is_file():
                    raise ValueError(f"{f}: not a regular file in the checkpoint's adapter; refusing to publish it")
                shutil.copyfile(f, tmp / f.name, follow_symlinks=False)
        else:
            adapters.save_weights(model, config, tmp)
        shutil.copyfile(ckpt / "trainable.safetensors", tmp / "trainable.safetensors", follow_symlinks=False)
        write_text(tmp / "complete", ckpt.name, root=tmp)
