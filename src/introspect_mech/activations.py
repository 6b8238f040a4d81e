"""Activation caching: the residual stream after chosen decoder blocks, pooled over chosen positions.

`cache(model, conversations, layers=None, positions="response_mean")` runs the model with plain
forward hooks on the requested decoder blocks (`model.layers[i]`) and returns
`Float[Tensor, "n layer d_model"]` (`"n layer pos d_model"` for `positions="all"`, zero-padded).

What makes it fast:
  * the forward stops right after the last requested block (a private exception raised from that
    block's hook), so later blocks, the final norm and the lm_head never run;
  * pooling (mean / last / gather) happens on the device inside the hook, and one batch of pooled
    activations moves to the CPU in a single transfer;
  * conversations are batched by length (right padding, restored order); sequences are cut after
    the last position any mode needs ("last_prompt" never runs the response).

The values are the decoder blocks' outputs exactly. Note HF's `output_hidden_states` differs at
its last entry (the final norm is applied there); `hidden_states[i + 1]` equals block i's output
only for i < n_layers - 1.

With `out=DIR` the activations stream to safetensors shards in DIR (resumable: finished shards are
skipped on a rerun with the same inputs) and a `LazyActivations` is returned that loads rows on
demand, so a million-token cache never needs RAM for all of it.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, Union, overload

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .layers import LayerSpec, resolve_layers
from .models import LoadedModel
from .models import check_context
from .runs import RunConfigError, RunDir, describe_diff, json_sha256, model_config, save_tensors, write_json

Pooling = Literal["last_prompt", "response_mean", "response_last", "all"]
"""How `cache` pools a conversation's positions into one vector per layer (the `positions=` argument):

* `"last_prompt"`: the last token before the first assistant content (the generation header);
* `"response_mean"`: the mean over the assistant-content tokens;
* `"response_last"`: the last assistant-content token;
* `"all"`: no pooling, every token (`[n, layer, pos, d_model]`, zero-padded).

Not to be confused with `steering.Positions` ("all" / "prompt" / "response" / a mask), which says
which positions a steering hook changes.
"""
POOLINGS: tuple[str, ...] = ("last_prompt", "response_mean", "response_last", "all")
POSITIONS = POOLINGS  # deprecated alias of POOLINGS
Conversation = Sequence[dict[str, str]]
__all__ = ["cache", "LazyActivations", "Pooling", "POOLINGS", "Acts", "tokenize", "Tokenized"]
Acts = Union[Float[Tensor, "n layer d_model"], Float[Tensor, "n layer pos d_model"]]


class _StopForward(Exception):
    """Raised from the last requested block's hook to skip the rest of the forward."""


@dataclass
class Tokenized:
    """One conversation ready for caching: ids cut to what the position mode needs, and the positions."""

    input_ids: Int[Tensor, " seq"]
    select: Bool[Tensor, " seq"]  # positions pooled ("all": every position)


def _messages(conv: Any, i: int) -> list[dict[str, str]]:
    msgs = conv.get("messages") if isinstance(conv, dict) else conv
    if not isinstance(msgs, (list, tuple)) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise ValueError(f"conversation {i}: expected a list of {{'role', 'content'}} messages (or a dict with 'messages')")
    return list(msgs)


def tokenize(model, conversations: Sequence[Any], positions: Pooling = "response_mean") -> list[Tokenized]:
    """Tokenise conversations with the chat template and mark the positions `positions` pools.

    Args:
        model: a `LoadedModel`.
        conversations: message lists (or dicts with "messages").
        positions: the `Pooling`: "last_prompt" (the last token before the first assistant content;
            for a conversation with no assistant message: the last token of the prompt rendered with
            the generation header), "response_mean" / "response_last" (the assistant-content tokens:
            all of them / the last), or "all" (every token).

    Returns:
        One `Tokenized` per conversation, ids cut after the last position the pooling needs.

    Raises:
        ValueError: naming the conversation index, before any forward pass runs.
    """
    if positions not in POOLINGS:
        raise ValueError(f"positions must be one of {POOLINGS}, got {positions!r}")
    out = []
    for i, conv in enumerate(conversations):
        msgs = _messages(conv, i)
        has_answer = any(m["role"] == "assistant" and m["content"] for m in msgs)
        if positions == "last_prompt" and not has_answer:
            ids = model.encode_prompt(msgs)
            sel = torch.zeros(len(ids), dtype=torch.bool)
            sel[-1] = True
            out.append(Tokenized(ids, sel))
            continue
        if positions == "all" and not has_answer:
            ids = torch.tensor(model.tokenizer(model.render(msgs), add_special_tokens=False)["input_ids"])
            out.append(Tokenized(ids, torch.ones(len(ids), dtype=torch.bool)))
            continue
        if not has_answer:
            raise ValueError(f"conversation {i}: positions={positions!r} needs an assistant message with content")
        ct = model.tokenize_chat(msgs)
        ids, mask = ct.input_ids, ct.assistant_mask
        if not mask.any():
            raise ValueError(f"conversation {i}: the assistant content maps to no tokens")
        idx = mask.nonzero().flatten()
        if positions == "last_prompt":
            first = int(idx[0])
            if first == 0:
                raise ValueError(f"conversation {i}: no prompt token before the assistant content")
            ids, sel = ids[:first], torch.zeros(first, dtype=torch.bool)
            sel[-1] = True
        elif positions == "response_last":
            last = int(idx[-1])
            ids, sel = ids[: last + 1], torch.zeros(last + 1, dtype=torch.bool)
            sel[-1] = True
        elif positions == "response_mean":
            last = int(idx[-1])
            ids, sel = ids[: last + 1], mask[: last + 1].clone()
        else:
            sel = torch.ones(len(ids), dtype=torch.bool)
        out.append(Tokenized(ids, sel))
    return out


def _pool(h: Tensor, sel: Tensor, positions: str, out_dtype: torch.dtype) -> Tensor:
    """h: [b, s, d] block output; sel: [b, s] bool on h's device -> [b, d] (or [b, s, d] for "all")."""
    if positions == "all":
        return (h * sel.unsqueeze(-1)).to(out_dtype)
    if positions == "response_mean":
        w = sel.to(torch.float32)
        s = torch.einsum("bs,bsd->bd", w, h.to(torch.float32))
        return (s / w.sum(1, keepdim=True)).to(out_dtype)
    # a single selected position per row
    idx = sel.to(torch.int64).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), idx].to(out_dtype)


@torch.inference_mode()
def _run_batch(model, items: list[Tokenized], layers: list[int], positions: str, out_dtype) -> Tensor:
    """Forward one batch; returns [b, layer, d] (or [b, layer, s, d]) on the CPU."""
    dev = model.device
    lens = [len(t.input_ids) for t in items]
    s = max(lens)
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(items), s), pad, dtype=torch.long)
    att = torch.zeros((len(items), s), dtype=torch.long)
    sel = torch.zeros((len(items), s), dtype=torch.bool)
    for j, t in enumerate(items):
        ids[j, : lens[j]] = t.input_ids
        att[j, : lens[j]] = 1
        sel[j, : lens[j]] = t.select
    ids, att, sel = ids.to(dev), att.to(dev), sel.to(dev)
    d = model.d_model
    shape = (len(items), len(layers), s, d) if positions == "all" else (len(items), len(layers), d)
    buf = torch.empty(shape, dtype=out_dtype, device=dev)
    blocks = model.layers
    last = layers[-1]
    handles = []

    def make_hook(k: int, li: int):
        def hook(_mod, _inp, output):
            h = output[0] if isinstance(output, tuple) else output
            buf[:, k] = _pool(h, sel.to(h.device), positions, out_dtype).to(dev)
            if li == last:
                raise _StopForward
        return hook

    for k, li in enumerate(layers):
        handles.append(blocks[li].register_forward_hook(make_hook(k, li)))
    try:
        model.model(input_ids=ids, attention_mask=att, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return buf.cpu()


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@overload
def cache(
    model: LoadedModel,
    conversations: Sequence[Any],
    layers: LayerSpec = ...,
    positions: Pooling = ...,
    batch_size: int = ...,
    out: None = ...,
    *,
    dtype: torch.dtype | None = ...,
    shard_size: int = ...,
    progress: bool = ...,
    truncate: bool = ...,
    overwrite: bool = ...,
) -> Acts: ...


@overload
def cache(
    model: LoadedModel,
    conversations: Sequence[Any],
    layers: LayerSpec = ...,
    positions: Pooling = ...,
    batch_size: int = ...,
    out: str | os.PathLike = ...,
    *,
    dtype: torch.dtype | None = ...,
    shard_size: int = ...,
    progress: bool = ...,
    truncate: bool = ...,
    overwrite: bool = ...,
) -> LazyActivations: ...


def cache(
    model: LoadedModel,
    conversations: Sequence[Any],
    layers: LayerSpec = None,
    positions: Pooling = "response_mean",
    batch_size: int = 8,
    out: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | None = None,
    shard_size: int = 256,
    progress: bool = True,
    truncate: bool = False,
    overwrite: bool = False,
) -> Acts | LazyActivations:
    """Residual-stream activations after decoder blocks `layers` for each conversation.

    Args:
        model: a `LoadedModel`.
        conversations: message lists (or dicts with "messages") that include the assistant answer;
            for "last_prompt" / "all" a prompt without answer is accepted too.
        layers: a `LayerSpec` (default: every block); the result has them in ascending order.
        positions: the `Pooling` ("last_prompt", "response_mean", "response_last" or "all").
        batch_size: conversations per forward (batched by length).
        out: a directory to stream safetensors shards to (resumable) instead of returning a tensor.
        dtype: dtype of the result (default: the model's dtype).
        shard_size: conversations per shard with `out=`.
        progress: show a tqdm bar.
        truncate: a conversation longer than the model's context is refused (`DataError`) unless
            True, which drops its oldest tokens down to the context length (pooling covers the
            positions kept; with `out=` the cut conversations are listed in activations.json as
            `truncated`).
        overwrite: with `out=`: a directory bound to another model (weights and adapter by
            content), other inputs or settings is refused naming the fields unless True, which
            deletes it and starts clean.

    Returns:
        `Float[Tensor, "n layer d_model"]` (`"n layer pos d_model"` for "all", zero-padded to the
        longest conversation); with `out=`, a `LazyActivations` over the shards.
    """
    from tqdm.auto import tqdm


    layer_ids = resolve_layers(layers, model.n_layers)
    items = tokenize(model, conversations, positions)
    limit, cut = check_context(model, [len(t.input_ids) for t in items], truncate=truncate, what="conversation")
    if any(cut):
        items = [Tokenized(t.input_ids[c:], t.select[c:]) if c else t for t, c in zip(items, cut)]
        if not all(bool(t.select.any()) for t in items):
            raise ValueError(f"truncation to {limit} tokens leaves a conversation with no {positions!r} position")
    out_dtype = dtype or model.dtype
    lengths = [len(t.input_ids) for t in items]
    if out is not None:
        return _cache_to_disk(model, items, layer_ids, positions, batch_size, Path(out), out_dtype,
                              shard_size, progress, conversations, [i for i, c in enumerate(cut) if c], overwrite)
    n, d = len(items), model.d_model
    shape = (n, len(layer_ids), max(lengths, default=0), d) if positions == "all" else (n, len(layer_ids), d)
    result = torch.zeros(shape, dtype=out_dtype)
    bar = tqdm(total=n, desc=f"cache {positions}", unit="conv", disable=not progress or n == 0)
    t0, ntok = time.perf_counter(), 0
    for batch in _batches(lengths, batch_size):
        acts = _run_batch(model, [items[i] for i in batch], layer_ids, positions, out_dtype)
        for j, i in enumerate(batch):
            if positions == "all":
                result[i, :, : lengths[i]] = acts[j, :, : lengths[i]]
            else:
                result[i] = acts[j]
        ntok += sum(lengths[i] for i in batch)
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{ntok / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    return result


# ---- streaming to disk -----------------------------------------------------------------------
def _cache_to_disk(model, items, layer_ids, positions, batch_size, out: Path, out_dtype, shard_size,
                   progress, conversations, truncated=(), overwrite: bool = False) -> LazyActivations:
    """Shard k holds conversations [k*shard_size, (k+1)*shard_size) in input order."""
    from tqdm.auto import tqdm


    spec = {
        "format": "introspect_mech.activations/1",
        "model": model.name, "adapter": model.meta.get("adapter"), "n": len(items), "layers": layer_ids,
        "positions": positions, "d_model": model.d_model, "dtype": str(out_dtype).replace("torch.", ""),
        "shard_size": shard_size, "inputs_sha256": json_sha256([t.input_ids.tolist() for t in items]),
        "conversations_sha256": json_sha256([_messages(c, i) for i, c in enumerate(conversations)]),
        **({"truncated": list(truncated)} if truncated else {}),
    }
    run = RunDir(out)  # holds the directory's lock while caching
    # bound by content: the weights and the adapter (a retrained adapter in place is another cache)
    run.bind("cache", {**{k: v for k, v in spec.items() if k not in ("model", "adapter")},
                       "model": model_config(model)}, overwrite=overwrite)  # batch size: same rows (tested)
    meta_path = out / "activations.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in spec} != spec:
            raise RunConfigError(str(meta_path), None, "activations.json",
                                 f"an activation cache with other inputs/settings is here: "
                                 f"{describe_diff({k: old.get(k) for k in spec}, spec)}; use another output "
                                 "directory or --overwrite to start clean")
    else:
        write_json(meta_path, spec, root=out)
    n = len(items)
    n_shards = (n + shard_size - 1) // shard_size
    bar = tqdm(total=n, desc=f"cache {positions} -> {out.name}", unit="conv", disable=not progress or n == 0)
    for k in range(n_shards):
        path = out / f"shard_{k:05d}.safetensors"
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        if path.exists():
            bar.update(hi - lo)
            continue
        sub = items[lo:hi]
        lengths = [len(t.input_ids) for t in sub]
        rows: list[Tensor | None] = [None] * len(sub)
        for batch in _batches(lengths, batch_size):
            acts = _run_batch(model, [sub[i] for i in batch], layer_ids, positions, out_dtype)
            for j, i in enumerate(batch):
                # "all": store tokens as rows [len, layer, d] so one conversation is one slice
                rows[i] = (rearrange(acts[j, :, : lengths[i]], "layer pos d -> pos layer d").contiguous()
                           if positions == "all" else acts[j])
            bar.update(len(batch))
        done = [r for r in rows if r is not None]
        if positions == "all":
            tensors = {"acts": torch.cat(done), "lengths": torch.tensor(lengths, dtype=torch.int64)}
        else:
            tensors = {"acts": torch.stack(done)}
        save_tensors(path, tensors, root=out)  # atomic: a killed run never leaves a half shard
    bar.close()
    return LazyActivations(out)


class LazyActivations:
    """A disk-backed activation cache (from `cache(..., out=DIR)`); rows are read on demand.

    `acts[i]` -> `Float[Tensor, "layer d_model"]` (`"layer pos d_model"` for "all", unpadded);
    `acts[a:b]` / `acts[[i, j]]` stack rows (zero-padded for "all"); `acts.load()` reads all;
    `iter_shards()` yields (first_index, tensor) shard by shard.

    Args:
        path: the cache directory (`activations.json` + shards).

    Raises:
        FileNotFoundError: not an activation cache directory, or shards are missing (an unfinished cache).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta = self.path / "activations.json"
        if not meta.exists():
            raise FileNotFoundError(f"{self.path}: no activations.json (not an activation cache directory)")
        self.meta = json.loads(meta.read_text())
        self.n, self.shard_size = int(self.meta["n"]), int(self.meta["shard_size"])
        self.layers: list[int] = list(self.meta["layers"])
        self.positions: str = self.meta["positions"]
        missing = [k for k in range(self._n_shards) if not self._shard_path(k).exists()]
        if missing:
            raise FileNotFoundError(f"{self.path}: shards {missing[:5]} missing (rerun cache() with the same out= to finish)")
        self._offsets: dict[int, Tensor] = {}

    @property
    def _n_shards(self) -> int:
        return (self.n + self.shard_size - 1) // self.shard_size

    def _shard_path(self, k: int) -> Path:
        return self.path / f"shard_{k:05d}.safetensors"

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int | None, ...]:
        """`(n, layer, d_model)`, or `(n, layer, None, d_model)` for "all" (rows differ in length)."""
        base = (self.n, len(self.layers))
        return base + ((None,) if self.positions == "all" else ()) + (int(self.meta["d_model"]),)

    def _row(self, i: int) -> Tensor:
        from safetensors import safe_open

        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} conversations")
        i %= self.n
        k, r = divmod(i, self.shard_size)
        with safe_open(str(self._shard_path(k)), framework="pt") as f:
            if self.positions != "all":
                return f.get_slice("acts")[r : r + 1][0]
            if k not in self._offsets:
                lengths = f.get_tensor("lengths")
                self._offsets[k] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
            off = self._offsets[k]
            return rearrange(f.get_slice("acts")[int(off[r]) : int(off[r + 1])], "pos layer d -> layer pos d")

    def __getitem__(self, key: int | slice | Sequence[int] | Tensor
                    ) -> Float[Tensor, "layer *pos d_model"] | Float[Tensor, "n layer *pos d_model"]:
        if isinstance(key, (int, numbers.Integral)) or (isinstance(key, Tensor) and key.ndim == 0):
            return self._row(int(key))
        idx = range(self.n)[key] if isinstance(key, slice) else [int(i) for i in key]
        rows = [self._row(i) for i in idx]
        if self.positions != "all":
            return torch.stack(rows) if rows else torch.empty(0, len(self.layers), int(self.meta["d_model"]))
        s = max((r.shape[1] for r in rows), default=0)
        res = torch.zeros(len(rows), len(self.layers), s, int(self.meta["d_model"]), dtype=rows[0].dtype if rows else torch.float32)
        for j, r in enumerate(rows):
            res[j, :, : r.shape[1]] = r
        return res

    def iter_shards(self) -> Iterator[tuple[int, Acts]]:
        """Yield `(first_index, rows)` shard by shard (rows as `self[lo:hi]` returns them)."""
        for k in range(self._n_shards):
            lo, hi = k * self.shard_size, min(self.n, (k + 1) * self.shard_size)
            yield lo, self[lo:hi]

    def load(self) -> Acts:
        """All rows in memory.

        Returns:
            The tensor `cache()` without `out=` returns (`[n, layer, d_model]`, or zero-padded
            `[n, layer, pos, d_model]` for "all").
        """
        return self[:]

    def __repr__(self) -> str:
        return f"LazyActivations({str(self.path)!r}, n={self.n}, layers={len(self.layers)}, positions={self.positions!r})"
