"""CAFT's pieces: activation differences, their PCA, component cards (top examples, logit lens), the picked
and random-PC subspaces, saved components, the in-domain score and the summary of the conditions."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from ... import runs as _runs
from ...evals import answer_logprobs
from ...layers import resolve_layers
from ...runs import RunDir
from ...sae.tokens import TokenActs, TokenPositions, token_activations
from ..common.em_questions import em_questions
from ..common.persona import load_trait


def preset_layers(n_layers: int, fractions: Sequence[float]) -> list[int]:
    """Block indices at relative depths (e.g. 0.5 = the middle block), deduplicated, ascending.

    Args:
        n_layers: number of decoder blocks.
        fractions: relative depths in [0, 1] (0 = first block, 1 = last).

    Returns:
        The blocks at those depths (`layers.depth_block`, the package's one rule), sorted and unique.
    """
    return resolve_layers([float(f) for f in fractions], n_layers)


@torch.no_grad()
def activation_differences(base, finetuned, conversations: Sequence[Any], layers: Sequence[int], *,
                           positions: TokenPositions = "response", batch_size: int = 8, max_length: int | None = 512,
                           progress: bool = True) -> dict[int, Float[Tensor, "tokens d_model"]]:
    """Per-token `h_finetuned - h_base` after each block in `layers`, over the selected tokens.

    Both models read the same token sequences (the conversations, e.g. generic prompts with the
    finetuned model's answers); rows are concatenated over conversations.

    Args:
        base: the base `LoadedModel`.
        finetuned: the finetuned `LoadedModel` (same tokenizer).
        conversations: the token sequences (chat conversations, as `sae.tokens.token_activations` takes).
        layers: decoder blocks.
        positions: which tokens give rows ("response", "prompt", "last_prompt", "all").
        batch_size: conversations per forward pass.
        max_length: truncation length in tokens (None: none).
        progress: show progress bars.

    Returns:
        {layer: `[tokens, d_model]` differences}.

    Raises:
        RuntimeError: the two models tokenised a conversation differently.
        ValueError: `positions` selects no token.
    """
    out = {}
    for l in layers:
        eb = token_activations(base, conversations, int(l), batch_size=batch_size, max_length=max_length,
                               progress=progress, desc=f"base L{l}")
        ef = token_activations(finetuned, conversations, int(l), batch_size=batch_size, max_length=max_length,
                               progress=progress, desc=f"finetuned L{l}")
        rows = []
        for a, b in zip(eb, ef):
            if not torch.equal(a.input_ids, b.input_ids):
                raise RuntimeError("base and finetuned model tokenised a conversation differently")
            sel = a.mask(positions)
            rows.append(b.acts[sel] - a.acts[sel])
        out[int(l)] = torch.cat(rows) if rows else torch.zeros(0, base.d_model)
        if len(out[int(l)]) == 0:
            raise ValueError(f"no tokens selected with positions={positions!r}")
    return out


def pca(x: Float[Tensor, "n d_model"], k: int, *, center: bool = True) -> dict[str, Tensor]:
    """Top-`k` principal components (rows, unit norm) of `x`, their explained-variance ratios and the mean.

    Sign convention: each component is oriented so that the mean of `x` projects non-negatively
    on it (the direction the finetune moved along), which makes "top-activating" examples comparable.

    Args:
        x: the rows (e.g. `activation_differences` of one layer).
        k: components kept (at most min(n, d_model)).
        center: subtract the mean before the SVD.

    Returns:
        {"components": `[k, d_model]` (float32), "explained": `[k]` variance ratios, "mean": `[d_model]`}.
    """
    x = x.double()
    mu = x.mean(0)
    xc = x - mu if center else x
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k]
    sign = torch.where(comps @ mu < 0, -1.0, 1.0).to(comps.dtype)
    comps = comps * sign[:, None]
    var = s ** 2
    return {"components": comps.float(), "explained": (var[:k] / var.sum().clamp_min(1e-30)).float(), "mean": mu.float()}


@torch.no_grad()
def logit_lens(model, v: Float[Tensor, " d_model"], k: int = 10) -> dict[str, list[str]]:
    """Tokens the unembedding ranks highest ("top") and lowest ("bottom") for direction `v`,
    read through the final norm's per-channel gain (the scale of an RMS norm does not change a ranking).

    Args:
        model: a `LoadedModel` (its unembedding, final norm and tokenizer).
        v: the direction.
        k: tokens per side.

    Returns:
        {"top": k decoded tokens, "bottom": k decoded tokens}.
    """
    base = model.base_model
    head = base.get_output_embeddings().weight.float()
    norm = getattr(getattr(base, "model", base), "norm", None)
    g = getattr(norm, "weight", None)
    u = v.float().to(head.device)
    if g is not None:
        u = u * g.float().to(head.device)
    logits = head @ u
    dec = lambda ids: [model.tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    return {"top": dec(logits.topk(k).indices), "bottom": dec((-logits).topk(k).indices)}


def top_examples(model, examples: Sequence[TokenActs], v: Float[Tensor, " d_model"], *, n: int = 5, window: int = 10,
                 positions: TokenPositions = "all", sign: float = 1.0) -> list[dict[str, Any]]:
    """The `n` examples whose highest (sign=+1) or lowest (sign=-1) token projection on `v` is most
    extreme (one peak per example), with the token window and each token's projection.

    Args:
        model: a `LoadedModel` (its tokenizer decodes the window).
        examples: per-example token activations (`sae.tokens.token_activations`).
        v: the direction projected on.
        n: examples returned.
        window: tokens shown before the peak (and `window // 2` after it).
        positions: which tokens can be the peak ("response", "prompt", "last_prompt", "all").
        sign: +1 for the highest projections, -1 for the lowest.

    Returns:
        Rows {"item", "token_index", "value" (the peak projection), "tokens", "acts" (each window
        token's projection), "peak_offset"}, most extreme first.
    """
    peaks = []
    for i, ex in enumerate(examples):
        p = (ex.acts.float() @ v.float()) * sign
        p = p.masked_fill(~ex.mask(positions), float("-inf"))
        j = int(p.argmax())
        if torch.isfinite(p[j]):
            peaks.append((float(p[j]), i, j))
    out = []
    for val, i, j in sorted(peaks, reverse=True)[:n]:
        ex = examples[i]
        lo, hi = max(0, j - window), min(len(ex.input_ids), j + window // 2 + 1)
        proj = (ex.acts[lo:hi].float() @ v.float()).tolist()
        out.append({"item": i, "token_index": j, "value": round(val * sign, 4),
                    "tokens": [model.tokenizer.decode([int(t)]) for t in ex.input_ids[lo:hi]],
                    "acts": [round(x, 4) for x in proj], "peak_offset": j - lo})
    return out


def component_cards(model, pcs: Mapping[int, Mapping[str, Tensor]], texts: Sequence[Any], *, n_top: int = 5,
                    n_tokens: int = 10, positions: TokenPositions = "all", batch_size: int = 8,
                    progress: bool = True) -> list[dict[str, Any]]:
    """One card per (layer, component): explained variance, top / bottom activating examples of the
    (base) `model` on `texts`, and logit-lens tokens. Rows match the dashboard's `caft_components.jsonl`.

    Args:
        model: the base `LoadedModel`.
        pcs: {layer: `pca` result}.
        texts: the interpretation texts (conversations).
        n_top: top and bottom examples per card.
        n_tokens: logit-lens tokens per sign.
        positions: which tokens can be an example's peak.
        batch_size: texts per forward pass.
        progress: show progress bars.

    Returns:
        Cards {"layer", "component", "explained", "logit_top", "logit_bottom", "top_examples",
        "bottom_examples"}, by layer then component.
    """
    cards = []
    for l, p in sorted(pcs.items()):
        ex = token_activations(model, texts, int(l), batch_size=batch_size, progress=progress, desc=f"cards L{l}")
        for c, v in enumerate(p["components"]):
            ll = logit_lens(model, v, n_tokens)
            cards.append({"layer": int(l), "component": c, "explained": float(p["explained"][c]),
                          "logit_top": ll["top"], "logit_bottom": ll["bottom"],
                          "top_examples": top_examples(model, ex, v, n=n_top, positions=positions, sign=1.0),
                          "bottom_examples": top_examples(model, ex, v, n=n_top, positions=positions, sign=-1.0)})
    return cards


def parse_picks(spec: str | Mapping[Any, Sequence[int]]) -> dict[int, list[int]]:
    """"15:0,2;20:1" (or {15: [0, 2], 20: [1]}) -> {15: [0, 2], 20: [1]}; errors name the bad part.

    Args:
        spec: "LAYER:C[,C...];LAYER:..." or a {layer: components} mapping (empty entries dropped).

    Returns:
        {layer: sorted unique component indices}.

    Raises:
        ValueError: a part without ":", a non-integer layer or component, or nothing picked.
    """
    if isinstance(spec, Mapping):
        return {int(k): sorted({int(c) for c in v}) for k, v in spec.items() if len(v)}
    out: dict[int, list[int]] = {}
    for part in str(spec).split(";"):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"pick {part!r}: expected LAYER:COMPONENT[,COMPONENT...] (e.g. 15:0,2)")
        l, cs = part.split(":", 1)
        try:
            out[int(l)] = sorted({int(c) for c in cs.split(",") if c.strip()})
        except ValueError:
            raise ValueError(f"pick {part!r}: layer and components must be integers") from None
    if not out or not any(out.values()):
        raise ValueError(f"no components picked in {spec!r}")
    return out


def picked_subspace(pcs: Mapping[int, Mapping[str, Tensor]],
                    picks: Mapping[int, Sequence[int]]) -> dict[int, Float[Tensor, "_k d_model"]]:
    """{layer: the picked components' rows} for `steering.train_time.caft_subspace`.

    Args:
        pcs: {layer: `pca` result}.
        picks: {layer: component indices} (`parse_picks`).

    Returns:
        {layer: `[k, d_model]` copies of the picked rows}.

    Raises:
        ValueError: a picked layer without components, or a component index out of range.
    """
    out = {}
    for l, cs in picks.items():
        if l not in pcs:
            raise ValueError(f"picked layer {l} has no components (layers: {sorted(pcs)})")
        comps = pcs[l]["components"]
        bad = [c for c in cs if not 0 <= c < len(comps)]
        if bad:
            raise ValueError(f"layer {l}: components {bad} out of range (0..{len(comps) - 1})")
        out[int(l)] = comps[list(cs)].clone()
    return out


def random_pc_subspace(pcs: Mapping[int, Mapping[str, Tensor]], picks: Mapping[int, Sequence[int]],
                       seed: int = 0) -> dict[int, Float[Tensor, "_k d_model"]]:
    """The CAFT control: as many principal components as were picked, drawn at random (seeded) from
    the SAME PCA's other components at each picked layer (the paper's random-PC control; an isotropic
    random subspace, `random_subspace`, ignores where the finetuning differences lie).

    Args:
        pcs: {layer: `pca` result}.
        picks: {layer: picked component indices} (`parse_picks`); the draw excludes them.
        seed: seed of the draw (layers drawn in ascending order).

    Returns:
        {layer: `[k, d_model]` rows of the drawn components}.

    Raises:
        ValueError: a layer has fewer unpicked components than picked ones.
    """
    rng = random.Random(int(seed))
    out = {}
    for l in sorted(picks):
        comps = pcs[l]["components"]
        rest = [i for i in range(len(comps)) if i not in set(picks[l])]
        k = len(picks[l])
        if len(rest) < k:
            raise ValueError(f"layer {l}: {len(rest)} unpicked components for a random-PC control of {k}; "
                             "compute more components (n_components)")
        out[int(l)] = comps[sorted(rng.sample(rest, k))].clone()
    return out


def random_subspace(dims: Mapping[int, int], d_model: int, seed: int = 0) -> dict[int, Float[Tensor, "_k d_model"]]:
    """Random subspaces with the same dimension per layer (isotropic Gaussian rows, seeded).

    Args:
        dims: {layer: subspace dimension k}.
        d_model: the residual-stream width.
        seed: seed of the generator (layers drawn in ascending order).

    Returns:
        {layer: `[k, d_model]` standard-normal rows (not orthonormalised)}.
    """
    g = torch.Generator().manual_seed(int(seed))
    return {int(l): torch.randn(int(k), d_model, generator=g) for l, k in sorted(dims.items())}


def save_components(path: str | os.PathLike, pcs: Mapping[int, Mapping[str, Tensor]]) -> None:
    """Components, explained ratios and means per layer as safetensors (never pickle).

    Args:
        path: the `.safetensors` file written.
        pcs: {layer: `pca` result}.
    """
    t = {}
    for l, p in pcs.items():
        for k in ("components", "explained", "mean"):
            t[f"L{l}.{k}"] = p[k].contiguous()
    _runs.save_tensors(path, t)


def load_components(path: str | os.PathLike) -> dict[int, dict[str, Tensor]]:
    """Read what `save_components` wrote.

    Args:
        path: the `.safetensors` file.

    Returns:
        {layer: {"components", "explained", "mean"}}.
    """
    out: dict[int, dict[str, Tensor]] = {}
    for key, v in load_file(str(path)).items():
        l, k = key.split(".", 1)
        out.setdefault(int(l[1:]), {})[k] = v
    return out


def in_domain_logprob(model, conversations: Sequence[Sequence[dict]], batch_size: int = 8) -> float:
    """Mean per-token log-prob of held-out answers of the finetuning distribution (higher = learned).

    Args:
        model: a `LoadedModel`.
        conversations: held-out conversations ending with the assistant answer.
        batch_size: conversations per forward pass.

    Returns:
        The summed answer log-prob over all conversations divided by their answer tokens (nats/token).
    """
    r = answer_logprobs(model, conversations, batch_size=batch_size)
    return sum(x["sum"] for x in r) / max(1, sum(x["n"] for x in r))


def summarize(rows: Sequence[Mapping[str, Any]], *, in_key: str = "in_domain", ood_key: str = "ood") -> dict[str, Any]:
    """In-domain learning kept and out-of-domain change per condition, relative to the base and the plain finetune.

    `rows`: {"condition": "base"|"plain"|"caft"|"random_<seed>", in_key, ood_key}. In-domain kept =
    (cond - base) / (plain - base); OOD change = cond - plain; random controls also averaged.

    Args:
        rows: one row per condition.
        in_key: the in-domain score's key (higher = more learned).
        ood_key: the out-of-domain score's key.

    Returns:
        {"in_domain_learned_by_plain", "ood_shift_by_plain", <condition>: {"in_domain_kept",
        "ood_change_vs_plain"} for each other condition, "random_mean" when random rows exist}.

    Raises:
        ValueError: no "base" or no "plain" row.
    """
    by = {r["condition"]: r for r in rows}
    if "base" not in by or "plain" not in by:
        raise ValueError("summarize needs 'base' and 'plain' rows")
    b, p = by["base"], by["plain"]
    learned = p[in_key] - b[in_key]
    out: dict[str, Any] = {"in_domain_learned_by_plain": learned, "ood_shift_by_plain": p[ood_key] - b[ood_key]}
    for name, r in by.items():
        if name in ("base", "plain"):
            continue
        out[name] = {"in_domain_kept": (r[in_key] - b[in_key]) / learned if learned else float("nan"),
                     "ood_change_vs_plain": r[ood_key] - p[ood_key]}
    rnd = [v for k, v in out.items() if k.startswith("random")]
    if rnd:
        out["random_mean"] = {k: sum(v[k] for v in rnd) / len(rnd) for k in ("in_domain_kept", "ood_change_vs_plain")}
    return out


def write_cards(run_dir: str | os.PathLike, cards: Sequence[Mapping[str, Any]]) -> Path:
    """Write the component cards as `caft_components.jsonl` (the dashboard panel's file).

    Args:
        run_dir: the run directory.
        cards: `component_cards` rows.

    Returns:
        The file's path.
    """
    p = RunDir(run_dir).path / "caft_components.jsonl"
    return _runs.write_jsonl(p, cards)


GENERIC_TRAITS = ("evil", "humorous", "optimistic", "apathetic")  # their eval questions are generic prompts


def generic_prompts(n: int, data_dir: str | os.PathLike | None = None) -> list[list[dict]]:
    """Chat prompts unrelated to the finetuning task: the EM questions' paraphrases and the persona
    traits' eval questions (the paper used generic chat prompts, see docs/caft.md).

    Args:
        n: how many prompts (the first `n`).
        data_dir: the data folder (None: the default).

    Returns:
        Chat message lists.
    """
    qs = [p["messages"] for q in em_questions(data_dir=data_dir) for p in q.prompts()]
    for t in GENERIC_TRAITS:
        qs += [[{"role": "user", "content": x}] for x in load_trait(t, data_dir, split="eval")["questions"]]
    return qs[:n]
