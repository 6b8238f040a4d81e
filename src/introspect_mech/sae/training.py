"""Train an SAE on one layer's residual stream with sae-lens's trainer, offline, on any HF model.

sae-lens's `LanguageModelSAETrainingRunner` wants a TransformerLens model and a HF dataset; its
inner `SAETrainer` only wants a `DataProvider` (an iterator of `[batch, d_in]` activation tensors).
`train` feeds that iterator from our own activations (token-level, `sae.tokens`), so the same code
trains on the embedded model offline and on any `LoadedModel`, and reports what matters:

* L0 (mean active latents per token), explained variance (1 - SSE / total variance about the mean),
  reconstruction MSE (per element), dead latents (never active on the held-out tokens), all on
  held-out examples (the last `eval_fraction` of the items, never trained on), before and after;
* optionally the next-token loss with the SAE spliced in (`splice_loss`).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..models import LoadedModel
from ..runs import RunDir, json_sha256
from ..validate import real_tensor
from .loading import LayerSAE, save
from .tokens import as_messages, stack_selected, token_activations, tokenize_item
from ..runs import model_config, staged_dir, write_json, write_jsonl
from ..validate import integer, number

ARCHITECTURES = ("topk", "batchtopk", "standard")


@dataclass
class SAETrainConfig:
    """How an SAE is trained (sae-lens's trainer); saved with the SAE."""

    architecture: str = "topk"  # topk | batchtopk | standard (L1)
    expansion: int = 8  # d_sae = expansion * d_model (ignored when d_sae is given)
    d_sae: int | None = None  # number of latents (none: expansion * d_model)
    k: int = 32  # active latents per token (topk / batchtopk)
    l1_coefficient: float = 5.0  # sparsity penalty (standard)
    lr: float = 1e-3  # learning rate (short CPU runs want more than sae-lens's 3e-4 default)
    batch_size: int = 1024  # activation vectors per step
    epochs: float = 4.0  # passes over the training tokens
    eval_fraction: float = 0.1  # the last fraction of the items, held out for the metrics
    seed: int = 0  # initialisation and batch order
    normalize_activations: str = "expected_average_only_in"  # sae-lens's activation normalisation

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")

        self.expansion = integer("expansion", self.expansion, minimum=1)
        self.d_sae = None if self.d_sae is None else integer("d_sae", self.d_sae, minimum=1)
        self.k = integer("k", self.k, minimum=1)
        self.batch_size = integer("batch_size", self.batch_size, minimum=1)
        self.seed = integer("seed", self.seed)
        self.lr = number("lr", self.lr, minimum=0.0, exclusive_minimum=True)
        self.l1_coefficient = number("l1_coefficient", self.l1_coefficient, minimum=0.0)
        self.epochs = number("epochs", self.epochs, minimum=0.0, exclusive_minimum=True)
        if self.d_sae is not None and self.architecture != "standard" and self.k > self.d_sae:
            raise ValueError(f"k must be <= d_sae (the number of latents), got k={self.k} > d_sae={self.d_sae}")


@dataclass
class SAETrainResult:
    """What `train_sae` returns: the trained `LayerSAE`, its eval metrics, run directory and loss curve."""

    sae: LayerSAE
    metrics: dict[str, Any]
    run_dir: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def evaluate(sae: LayerSAE | Any, acts: Float[Tensor, "n d_model"], batch: int = 4096) -> dict[str, float]:
    """L0, explained variance, reconstruction MSE and dead latents of `sae` on activations `acts`.

    Args:
        sae: a `LayerSAE` (or a bare sae-lens SAE).
        acts: `[n, d_model]` activations.
        batch: rows per encode.

    Returns:
        The metrics.
    """
    inner = sae.sae if isinstance(sae, LayerSAE) else sae
    p = next(inner.parameters())
    acts = acts.float()
    mean = acts.mean(0)
    sse = tot = l0 = 0.0
    fired = torch.zeros(int(inner.cfg.d_sae), dtype=torch.bool)
    for i in range(0, len(acts), batch):
        x = acts[i:i + batch]
        z = inner.encode(x.to(p.device, p.dtype))
        r = inner.decode(z).float().cpu()
        sse += float(((r - x) ** 2).sum())
        tot += float(((x - mean) ** 2).sum())
        nz = (z != 0).cpu()
        l0 += float(nz.sum())
        fired |= nz.any(0)
    n = len(acts)
    return {"l0": l0 / n, "explained_variance": 1 - sse / tot, "mse": sse / (n * acts.shape[1]),
            "dead_latents": int((~fired).sum()), "dead_fraction": float((~fired).float().mean()),
            "n_tokens": n}


def _batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts[perm[i:i + batch_size]].float()


def _make_sae(cfg: SAETrainConfig, d_in: int, metadata: dict[str, Any]):
    import sae_lens as sl

    d_sae = cfg.d_sae or cfg.expansion * d_in
    common = dict(d_in=d_in, d_sae=d_sae, normalize_activations=cfg.normalize_activations)
    if cfg.architecture == "topk":
        scfg = sl.TopKTrainingSAEConfig(k=cfg.k, **common)
        cls = sl.TopKTrainingSAE
    elif cfg.architecture == "batchtopk":
        scfg = sl.BatchTopKTrainingSAEConfig(k=cfg.k, **common)
        cls = sl.BatchTopKTrainingSAE
    else:
        scfg = sl.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)
        cls = sl.StandardTrainingSAE
    for k, v in metadata.items():
        setattr(scfg.metadata, k, v)
    torch.manual_seed(cfg.seed)
    return cls(scfg)


def collect(model: LoadedModel, items: Sequence[Any], layer: int, *, batch_size: int = 8,
            max_length: int | None = 512) -> Float[Tensor, "n d_model"]:
    """Token activations at `layer` for texts / conversations (all tokens but the first of each).

    Args:
        model: the model.
        items: texts or conversations.
        layer: a block index.
        batch_size: sequences per forward.
        max_length: cut sequences after this many tokens.

    Returns:
        `[n_tokens, d_model]` activations.
    """
    return stack_selected(token_activations(model, items, layer, batch_size=batch_size, max_length=max_length,
                                            desc=f"L{layer} activations"), "all")


def train_sae(
    model: LoadedModel | None,
    layer: int,
    data: Sequence[Any] | Float[Tensor, "n_tokens d_model"],
    config: SAETrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    eval_data: Float[Tensor, "n d_model"] | None = None,
    max_length: int | None = 512,
    device: str = "cpu",
    overwrite: bool = False,
) -> SAETrainResult:
    """Train an SAE on the output of decoder block `layer` through sae-lens's `SAETrainer`.

    Args:
        model: the model (may be None when `data` holds cached activations).
        layer: a block index.
        data: texts, conversations (message lists / {"messages": ...}), or cached activations
            `[n_tokens, d_model]`.
        config: an `SAETrainConfig` (default: TopK, expansion 8).
        out_dir: writes manifest.json, metrics.json, train_log.jsonl and the SAE in sae-lens format
            under `out_dir/sae/`.
        eval_data: held-out `[n, d_model]` activations (default: the last `config.eval_fraction` of
            the items).
        max_length: cut sequences after this many tokens.
        device: where training runs.
        overwrite: `out_dir` bound to another model, data or config is refused naming the fields
            unless True, which deletes its SAE, log and metrics and starts clean.

    Returns:
        An `SAETrainResult` (the `LayerSAE`, metrics, loss curve).
    """
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    cfg = config or SAETrainConfig()
    t_start = time.time()
    d_in_known = data.shape[-1] if isinstance(data, Tensor) else (model.d_model if model is not None else None)
    if d_in_known is not None and cfg.architecture != "standard" and cfg.k > (cfg.d_sae or cfg.expansion * d_in_known):
        raise ValueError(f"k must be <= d_sae (the number of latents), got k={cfg.k} > "
                         f"d_sae={cfg.d_sae or cfg.expansion * d_in_known}")
    if isinstance(data, Tensor):
        real_tensor("data", data)
    if eval_data is not None:
        real_tensor("eval_data", eval_data)
    rd = None
    if out_dir is not None:  # bound before any work; the RunDir holds the lock until the SAE is written

        rd = RunDir(out_dir)
        rd.bind("rows:sae", {
            "model": model_config(model) if model is not None else None, "layer": layer,
            "data_sha256": _content_sha256(data), "eval_data_sha256": _content_sha256(eval_data),
            "max_length": max_length, "config": asdict(cfg)},
            overwrite=overwrite, outputs=["sae", "train_log.jsonl", "metrics.json"])
    if isinstance(data, Tensor):
        if data.ndim != 2:
            raise ValueError(f"cached activations must be [n_tokens, d_model], got shape {tuple(data.shape)}; "
                             "select one layer first (e.g. acts[:, layer_index])")
        if model is not None and data.shape[1] != model.d_model:
            raise ValueError(f"activations have width {data.shape[1]}, model {model.name} has d_model {model.d_model}")
        n_eval = max(1, int(len(data) * cfg.eval_fraction)) if eval_data is None else 0
        train_acts, held = data[: len(data) - n_eval], (eval_data if eval_data is not None else data[len(data) - n_eval:])
        data_hash: dict[str, Any] = {"n_tokens": len(data)}
    else:
        if model is None:
            raise ValueError("training from texts or conversations needs a model")
        items = [as_messages(it, i) for i, it in enumerate(data)]  # validate before any work
        if len(items) < 2:
            raise ValueError("need at least 2 items (one is held out for evaluation)")
        n_eval = max(1, int(round(len(items) * cfg.eval_fraction))) if eval_data is None else 0
        train_acts = collect(model, items[: len(items) - n_eval], layer, max_length=max_length)
        held = eval_data if eval_data is not None else collect(model, items[len(items) - n_eval:], layer,
                                                               max_length=max_length)
        data_hash = {"items_sha256": json_sha256(items), "n_items": len(items), "n_eval_items": n_eval}
    t_acts = time.time() - t_start
    d_in = train_acts.shape[1]
    batch = min(cfg.batch_size, len(train_acts))
    total = int(math.ceil(cfg.epochs * len(train_acts) / batch)) * batch
    metadata = {"hook_name": f"blocks.{layer}.hook_resid_post", "hf_hook_name": f"model.layers.{layer}",
                "model_name": model.name if model is not None else None}
    sae = _make_sae(cfg, d_in, metadata)
    before = evaluate(sae, held)
    history: list[dict[str, float]] = []
    tcfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=batch, lr=cfg.lr, lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=min(50, total // batch // 10),
        lr_decay_steps=0, device=device,
        dead_feature_window=max(10, total // batch // 4), feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=min(50, max(1, len(train_acts) // batch)),
    )
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=_batches(train_acts, batch, cfg.seed))
    step_fn = trainer.step

    def logged_step(b: Tensor):  # record the loss curve (sae-lens only logs to wandb)
        out = step_fn(b)
        if trainer.n_training_steps % 20 == 0:
            history.append({"step": trainer.n_training_steps, "samples": trainer.n_training_samples,
                            **{k: float(v.item() if isinstance(v, Tensor) else v) for k, v in out.losses.items()}})
        return out

    trainer.step = logged_step  # type: ignore[method-assign]
    t0 = time.time()
    trained = trainer.fit()
    train_seconds = time.time() - t0
    # Inference form (BatchTopK -> JumpReLU with the learned threshold; normalisation folded in).
    with torch.no_grad():
        with tempfile.TemporaryDirectory() as tmp:
            trained.save_inference_model(tmp)
            from sae_lens import SAE

            inference = SAE.load_from_disk(tmp, device=device)
    layer_sae = LayerSAE(sae=inference, layer=layer, hook_name=str(metadata["hook_name"]),
                         source=str(out_dir) if out_dir else None,
                         meta={"model_name": metadata["model_name"], "architecture": cfg.architecture})
    after = evaluate(layer_sae, held)
    metrics = {
        "layer": layer, "architecture": cfg.architecture, "d_sae": layer_sae.d_sae, "d_in": d_in,
        "train_tokens": len(train_acts), "train_samples_seen": trainer.n_training_samples,
        "steps": trainer.n_training_steps, "eval_tokens": len(held),
        "seconds_activations": round(t_acts, 2), "seconds_training": round(train_seconds, 2),
        "tokens_per_second_training": round(trainer.n_training_samples / max(train_seconds, 1e-9), 1),
        "before": before, "after": after, "config": asdict(cfg),
        "dead_in_last_window": int(trainer.dead_neurons.sum()),
    }
    run = None
    if rd is not None:

        rd.write_manifest(stage="sae_train", model=model.name if model else None,
                          adapter=model.meta.get("adapter") if model else None, data=data_hash,
                          seed=cfg.seed, sae_config=asdict(cfg), torch_threads=torch.get_num_threads())
        with staged_dir(rd.path / "sae", root=rd.path) as staged:
            save(layer_sae, staged)
        layer_sae.source = str(rd.path / "sae")
        write_jsonl(rd.path / "train_log.jsonl", history, root=rd.path)  # replaced, never appended twice
        write_json(rd.path / "metrics.json", metrics, root=rd.path)
        run = rd.path
    return SAETrainResult(sae=layer_sae, metrics=metrics, run_dir=run, history=history)


def _content_sha256(data: Any) -> str | None:
    """Texts / conversations by their JSON, tensors by their bytes."""
    if data is None:
        return None
    if isinstance(data, Tensor):
        t = data.detach().cpu().contiguous()
        return hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + t.view(-1).view(torch.uint8).numpy().tobytes()
                              ).hexdigest()
    return json_sha256([as_messages(it, i) for i, it in enumerate(data)])


class _Splice:
    def __init__(self, sae: LayerSAE, mode: str):
        self.sae, self.mode = sae, mode

    def __call__(self, _mod, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        if self.mode == "sae":
            new = self.sae.reconstruct(h.float()).to(h.dtype)
        else:  # zero-ablate the whole residual stream after the block
            new = torch.zeros_like(h)
        new[:, 0] = h[:, 0]  # keep the attention-sink token as it was
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


@torch.no_grad()
def splice_loss(model: LoadedModel, sae: LayerSAE, items: Sequence[Any], *, max_length: int = 512) -> dict[str, float]:
    """Mean next-token loss: clean, with the SAE reconstruction spliced in, and with the layer zeroed.

    `loss_recovered` = (zero - sae) / (zero - clean). The first token (attention sink) is never replaced.

    Args:
        model: the model.
        sae: a `LayerSAE` that fits it.
        items: texts, conversations, or token-id tensors.
        max_length: cut sequences after this many tokens.

    Returns:
        `{"clean", "sae", "zero", "loss_recovered"}`.
    """
    sae.check_fits(model)
    res = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    for i, it in enumerate(items):
        ids = it[:max_length] if isinstance(it, Tensor) else tokenize_item(model, as_messages(it, i), max_length)[0]
        x = ids[None].to(model.device)
        for mode in res:
            h = None
            if mode != "clean":
                h = model.layers[sae.layer].register_forward_hook(_Splice(sae, mode))
            try:
                out = model.model(input_ids=x, labels=x, use_cache=False)
            finally:
                if h is not None:
                    h.remove()
            res[mode] += float(out.loss) * (len(ids) - 1)
        n += len(ids) - 1
    res = {k: v / n for k, v in res.items()}
    res["loss_recovered"] = (res["zero"] - res["sae"]) / max(res["zero"] - res["clean"], 1e-12)
    res["n_tokens"] = n
    return res
