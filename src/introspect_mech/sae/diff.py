"""Model diffing with SAE latents: which features did finetuning turn up (the persona-features recipe).

`model_diff(base, finetuned, sae, conversations)` encodes both models' residual streams at the
SAE's layer on the same tokens, averages every latent over the selected tokens (the assistant
responses by default), and ranks latents by the change `mean_finetuned - mean_base`. For each top
latent it reports the cosine of its decoder vector with a given direction (the EM or persona
direction), its top-activating tokens in the finetuned model with token-level activations, and
its Neuronpedia link where the SAE has one. `steer_latents` measures what adding a latent's
decoder vector does to a metric (e.g. the EM rate), against norm-matched random directions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..direction import DirectionLike
from ..models import LoadedModel
from ..runs import RunDir, json_sha256
from .. import steering
from ..steering import layer_vector
from ..steering.hooks import Positions as SteeringPositions
from ..steering.sweep import _direction_sha256
from .loading import LayerSAE
from .tokens import TOKEN_POSITIONS, TokenActs, TokenPositions, as_messages, token_activations
from ..runs import model_config, save_tensors, write_json


@dataclass
class LatentChange:
    """How one SAE latent's activation changed between the base and the finetuned model."""

    latent: int
    delta: float  # mean activation, finetuned - base
    mean_base: float
    mean_finetuned: float
    frac_active_base: float
    frac_active_finetuned: float
    cosine: float | None = None  # decoder vector vs the direction given to model_diff
    url: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ModelDiff:
    """Per-latent mean activations of both models and the ranked changes."""

    mean_base: Float[Tensor, " d_sae"]
    mean_finetuned: Float[Tensor, " d_sae"]
    frac_base: Float[Tensor, " d_sae"]
    frac_finetuned: Float[Tensor, " d_sae"]
    increases: list[LatentChange]
    decreases: list[LatentChange]
    cosines: Float[Tensor, " d_sae"] | None  # every latent's decoder cosine with the direction
    summary: dict[str, Any]
    # per-conversation mean residual stream over the selected tokens (e.g. to build a direction)
    resid_base: Float[Tensor, "n d_model"] | None = None
    resid_finetuned: Float[Tensor, "n d_model"] | None = None

    @property
    def delta(self) -> Float[Tensor, " d_sae"]:
        """Mean activation change per latent (finetuned - base), `[d_sae]`."""
        return self.mean_finetuned - self.mean_base

    @property
    def ranking(self) -> list[int]:
        """All latents, largest increase first (ties broken by the finetuned mean activation)."""
        return _rank(self.delta, self.mean_finetuned).tolist()

    def rows(self) -> list[dict[str, Any]]:
        """The reported latents as dicts (for JSONL / the dashboard).

        Returns:
            One dict per reported latent.
        """
        return ([{"kind": "increase", "rank": r, **asdict(c)} for r, c in enumerate(self.increases)]
                + [{"kind": "decrease", "rank": r, **asdict(c)} for r, c in enumerate(self.decreases)])


def _rank(key: Tensor, tie: Tensor) -> Tensor:
    """Indices by `key` descending, ties by `tie` descending, then by index."""
    return torch.from_numpy(np.lexsort((-tie.double().numpy(), -key.double().numpy())).copy())


def _direction_vector(direction: DirectionLike | None, layer: int) -> Tensor | None:
    if direction is None:
        return None
    v = layer_vector(direction, layer).float()
    return v / v.norm().clamp_min(1e-12)


def decoder_cosines(sae: LayerSAE, direction: DirectionLike) -> Float[Tensor, " d_sae"]:
    """Cosine of every latent's decoder vector with `direction` at the SAE's layer.

    Args:
        sae: a `LayerSAE`.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.

    Returns:
        `[d_sae]` cosines.
    """
    v = _direction_vector(direction, sae.layer)
    assert v is not None
    W = sae.W_dec.float().cpu()
    return (W @ v) / W.norm(dim=-1).clamp_min(1e-12)


def _encode_all(sae: LayerSAE, examples: list[TokenActs], positions: TokenPositions) -> tuple[Tensor, Tensor, int]:
    """Token-weighted mean latent activation and firing fraction over the selected tokens
    (streamed: no [tokens, d_sae] matrix is kept, so 100k-latent SAEs fit)."""
    total, fired, n = torch.zeros(sae.d_sae), torch.zeros(sae.d_sae), 0
    for ex in examples:
        sel = ex.mask(positions)
        if not sel.any():
            continue
        z = sae.encode(ex.acts[sel]).cpu()
        total += z.sum(0)
        fired += (z > 0).float().sum(0)
        n += int(sel.sum())
    if n == 0:
        raise ValueError(f"no tokens selected with positions={positions!r} (do the conversations have answers?)")
    return total / n, fired / n, n


def latent_codes(sae: LayerSAE, examples: list[TokenActs], latents: Sequence[int]) -> list[Float[Tensor, "_seq k"]]:
    """The chosen latents' activations on every token of each example.

    Args:
        sae: a `LayerSAE`.
        examples: `TokenActs` from `token_activations`.
        latents: the `k` latent indices.

    Returns:
        Per example, `[seq, k]` activations (on the CPU).
    """
    idx = torch.tensor([int(j) for j in latents], dtype=torch.long)
    return [sae.encode(ex.acts).cpu()[:, idx] for ex in examples]


def top_examples(model: LoadedModel, examples: list[TokenActs],
                 codes: Sequence[Float[Tensor, " _seq"] | Float[Tensor, "_seq k"]], latent: int,
                 positions: TokenPositions, n: int = 5, window: int = 12) -> list[dict[str, Any]]:
    """The `n` examples where a latent peaks highest (one peak per example), with token activations.

    Args:
        model: the model (for decoding tokens).
        examples: `TokenActs` from `token_activations`.
        codes: per example, the latent's activation on every token (`[seq]`), or `[seq, k]` codes
            with `latent` the column index.
        latent: the latent (or column) index.
        positions: the `TokenPositions` where a peak may be.
        n: number of examples.
        window: tokens shown on each side of the peak.

    Returns:
        Up to `n` dicts (example index, peak position and value, tokens and their activations).
    """
    cols = [c if c.ndim == 1 else c[:, latent] for c in codes]
    peaks = []
    for i, (ex, a) in enumerate(zip(examples, cols)):
        a = a.masked_fill(~ex.mask(positions), float("-inf"))
        j = int(a.argmax())
        if a[j] > 0:
            peaks.append((float(a[j]), i, j))
    out = []
    for val, i, j in sorted(peaks, reverse=True)[:n]:
        lo, hi = max(0, j - window), min(len(examples[i].input_ids), j + window // 2 + 1)
        ids = examples[i].input_ids[lo:hi].tolist()
        out.append({"item": i, "token_index": j, "max_activation": round(val, 4),
                    "tokens": [model.tokenizer.decode([t]) for t in ids],
                    "activations": [round(float(x), 4) for x in cols[i][lo:hi]],
                    "peak_offset": j - lo})
    return out


@torch.no_grad()
def model_diff(
    base: LoadedModel,
    finetuned: LoadedModel,
    sae: LayerSAE,
    conversations: Sequence[Any],
    *,
    positions: TokenPositions = "response",
    direction: DirectionLike | None = None,
    top_k: int = 20,
    n_examples: int = 5,
    batch_size: int = 8,
    max_length: int | None = 512,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> ModelDiff:
    """Rank SAE latents by their change in mean activation from `base` to `finetuned`.

    Args:
        base: the base model.
        finetuned: the finetuned model (same architecture).
        sae: a `LayerSAE` that fits both.
        conversations: message lists (or {"messages": ...}): eval prompts with responses (e.g. the
            finetuned model's samples from `evals.sample`).
        positions: the `TokenPositions` pooled: "response" (assistant tokens), "prompt",
            "last_prompt" or "all".
        direction: a `Direction` or raw tensor (EM / persona direction) whose cosine with each top
            latent's decoder vector is reported.
        top_k: latents reported in each direction of change.
        n_examples: top-activating examples per latent.
        batch_size: sequences per forward.
        max_length: cut sequences after this many tokens.
        out: a run directory: manifest.json, latents.jsonl (top increases / decreases with examples)
            and summary.json, bound to both models and the SAE by content, the conversations, the
            direction's values and the settings (another configuration is refused naming the fields).
        overwrite: with `out=` bound to another configuration, delete its results and start clean.

    Returns:
        A `ModelDiff`.
    """
    if positions not in TOKEN_POSITIONS:
        raise ValueError(f"positions must be one of {TOKEN_POSITIONS}, got {positions!r}")
    convs = [as_messages(c, i) for i, c in enumerate(conversations)]
    sae.check_fits(base)
    sae.check_fits(finetuned)
    rd = None
    if out is not None:  # bound before any work (the RunDir holds the lock until the results are written)
        rd = RunDir(out)
        rd.bind("rows:sae_diff", {
            "base": model_config(base), "finetuned": model_config(finetuned), "sae_sha256": _sae_sha256(sae),
            "sae_layer": sae.layer, "conversations_sha256": json_sha256(convs), "positions": positions,
            "direction_sha256": _direction_sha256(direction) if direction is not None else None,
            "top_k": top_k, "n_examples": n_examples, "max_length": max_length},
            overwrite=overwrite, outputs=["latents.jsonl", "summary.json", "latent_means.safetensors"])
    ex_b = token_activations(base, convs, sae.layer, batch_size=batch_size, max_length=max_length, desc="base")
    ex_f = token_activations(finetuned, convs, sae.layer, batch_size=batch_size, max_length=max_length,
                             desc="finetuned")
    mean_b, frac_b, n_tok = _encode_all(sae, ex_b, positions)
    mean_f, frac_f, _ = _encode_all(sae, ex_f, positions)
    delta = mean_f - mean_b
    cos = decoder_cosines(sae, direction) if direction is not None else None
    order = _rank(delta, mean_f)  # largest increase first; ties (e.g. identical models) by activation
    k = min(top_k, sae.d_sae)
    up, down = [int(j) for j in order[:k]], [int(j) for j in _rank(-delta, mean_b)[:k]]
    chosen = sorted(set(up + down))
    codes = latent_codes(sae, ex_f, chosen) if n_examples > 0 else []

    def change(j: int) -> LatentChange:
        return LatentChange(
            latent=j, delta=float(delta[j]), mean_base=float(mean_b[j]), mean_finetuned=float(mean_f[j]),
            frac_active_base=float(frac_b[j]), frac_active_finetuned=float(frac_f[j]),
            cosine=None if cos is None else float(cos[j]), url=sae.url(j),
            examples=top_examples(finetuned, ex_f, codes, chosen.index(j), positions, n_examples) if codes else [])

    increases = [change(j) for j in up]
    decreases = [change(j) for j in down]
    # Residual-stream view of the same change, for comparison with the direction itself.
    sel_b = torch.cat([e.acts[e.mask(positions)] for e in ex_b]).mean(0)
    sel_f = torch.cat([e.acts[e.mask(positions)] for e in ex_f]).mean(0)
    per_b, per_f = _per_example_means(ex_b, positions), _per_example_means(ex_f, positions)
    summary: dict[str, Any] = {
        "layer": sae.layer, "positions": positions, "n_conversations": len(convs), "n_tokens": n_tok,
        "max_abs_delta": float(delta.abs().max()), "top_latents": [c.latent for c in increases],
        "base": base.name, "finetuned": finetuned.name, "finetuned_adapter": finetuned.meta.get("adapter"),
        "resid_mean_shift_norm": float((sel_f - sel_b).norm()),
    }
    if cos is not None:
        v = _direction_vector(direction, sae.layer)
        assert v is not None  # cos is only computed with a direction
        shift = sel_f - sel_b
        summary.update({
            "resid_mean_shift_cosine_with_direction": float(shift @ v / shift.norm().clamp_min(1e-12)),
            "mean_abs_cosine_all_latents": float(cos.abs().mean()),
            "max_abs_cosine_all_latents": float(cos.abs().max()),
            "most_aligned_latent": int(cos.argmax()), "most_aligned_cosine": float(cos.max()),
            "most_aligned_latent_rank_in_diff": int((order == int(cos.argmax())).nonzero()[0, 0]),
            "top_latents_cosines": [round(float(cos[c.latent]), 4) for c in increases],
            # delta-weighted sum of decoder vectors among increases: the SAE's reconstruction of the shift
            "delta_weighted_decoder_cosine": _weighted_cos(sae, delta, v),
        })
    result = ModelDiff(mean_b, mean_f, frac_b, frac_f, increases, decreases, cos, summary, per_b, per_f)
    if rd is not None:

        rd.write_manifest(stage="sae_model_diff", base=base.name, finetuned=finetuned.name,
                          adapter=finetuned.meta.get("adapter"), sae=sae.source, sae_layer=sae.layer,
                          data={"conversations_sha256": json_sha256(convs), "n": len(convs)},
                          positions=positions)
        log = rd.log("latents.jsonl", ("kind", "rank"))
        done = log.done_keys()
        for row in result.rows():
            if log.key(row) not in done:
                log.append(row)
        write_json(rd.path / "summary.json", summary, root=rd.path)
        save_tensors(rd.path / "latent_means.safetensors",  # never pickle
                     {"mean_base": mean_b, "mean_finetuned": mean_f, "frac_base": frac_b, "frac_finetuned": frac_f,
                      **({"cosines": cos} if cos is not None else {})}, root=rd.path)
    return result


def _sae_sha256(sae: LayerSAE) -> str:
    """The SAE by content (every parameter and buffer)."""
    h = hashlib.sha256()
    for name, t in sorted(sae.sae.state_dict().items()):
        t = t.detach().float().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    return h.hexdigest()


def _per_example_means(examples: list[TokenActs], positions: TokenPositions) -> Tensor:
    d = examples[0].acts.shape[1]
    rows = []
    for e in examples:
        sel = e.mask(positions)
        rows.append(e.acts[sel].mean(0) if sel.any() else torch.full((d,), float("nan")))
    return torch.stack(rows)


def _weighted_cos(sae: LayerSAE, delta: Tensor, v: Tensor) -> float:
    w = delta.clamp_min(0)
    if float(w.sum()) == 0:
        return float("nan")
    vec = w @ sae.W_dec.float().cpu()
    return float(vec @ v / vec.norm().clamp_min(1e-12))


def steer_latents(
    model: LoadedModel,
    sae: LayerSAE,
    latents: Sequence[int],
    metric: Callable[[LoadedModel], float],
    alphas: Sequence[float] = (0.0, 4.0, 8.0),
    *,
    n_random: int = 2,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Measure `metric(model)` while adding each latent's decoder vector, with random controls.

    `steering.add` adds `alpha *` each latent's unit decoder vector at the SAE's layer (all
    positions), plus `n_random` norm-matched random directions per alpha as controls.

    Args:
        model: the model steered.
        sae: the `LayerSAE` whose decoder vectors are added.
        latents: latent indices.
        metric: any callable on the (temporarily steered) model, e.g. the EM rate from
            `evals.em_report` on sampled answers, or a judge-free log-probability score.
        alphas: multipliers.
        n_random: random controls per alpha.
        seed: seed of the random controls.
        out: a run directory: rows are appended to `out/steer.jsonl` as measured; a rerun skips them.

    Returns:
        One row per (target, alpha).
    """
    log = RunDir(out).log("steer.jsonl", ("target", "alpha")) if out is not None else None
    done = log.done_keys() if log is not None else set()
    targets: list[tuple[str, Tensor]] = [(f"latent_{int(j)}", sae.decoder_direction(int(j))) for j in latents]
    for r in range(n_random):
        rnd = steering.random_like(sae.decoder_direction(int(latents[0])), seed + r)
        assert isinstance(rnd, Tensor)  # random_like keeps the type: a tensor for a tensor
        targets.append((f"random_{r}", rnd))
    rows = []
    for name, vec in targets:
        for alpha in alphas:
            row = {"target": name, "alpha": float(alpha), "layer": sae.layer}
            if log is not None and log.key(row) in done:
                continue
            with steering.add(model, vec.to(model.dtype), layers=[sae.layer], alpha=float(alpha)):
                row["metric"] = float(metric(model))
            rows.append(row)
            if log is not None:
                log.append(row)
    return rows


# ---- persona features (Wang et al. 2025): causal screening and the best latent as a detector ----
def screen_latents(
    model: LoadedModel,
    sae: LayerSAE,
    latents: Sequence[int],
    judge_fn: Callable[[LoadedModel], dict[str, float]],
    *,
    alpha: float,
    coherence_min: float = 50.0,
    positions: SteeringPositions = "all",
    out: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Steer with each latent in turn and judge the answers: the ranked table of persona features.

    For each latent, `alpha *` its unit decoder vector is added after the SAE's block (`positions`,
    default every position) while `judge_fn(model)` runs; `judge_fn` samples and judges answers
    (e.g. EM questions with the aligned / coherent judge) and returns {"misaligned": ...,
    "coherence": ..., ...}. A first row "none" is the unsteered model. Rows are ranked by
    misalignment among latents whose coherence >= `coherence_min` (the others after them, also by
    misalignment); `rank` is the position in that order. With `out`, rows are appended to
    `out/latent_screen.jsonl` as measured (a rerun skips them).

    Args:
        model: the model to steer.
        sae: the SAE whose decoder vectors are added (after its block `sae.layer`).
        latents: latent indices to screen.
        judge_fn: samples and judges answers of the (steered) model; returns at least
            `{"misaligned", "coherence"}`.
        alpha: steering coefficient, in units of the unit decoder vector.
        coherence_min: coherence a latent needs to rank among the coherent ones.
        positions: positions steered (a steering `Positions`).
        out: run directory for the resumable `latent_screen.jsonl` (None: nothing written).

    Returns:
        Rows {"target", "latent", "alpha", "misaligned", "coherence", ..., "coherent_enough", "rank"}, ranked.

    Raises:
        ValueError: `judge_fn` returned no "misaligned" or "coherence".
    """
    log = RunDir(out).log("latent_screen.jsonl", ("target", "alpha")) if out is not None else None
    done = {log.key(r): r for r in log.rows()} if log is not None else {}
    rows = []
    targets = [("none", None)] + [(f"latent_{int(j)}", int(j)) for j in latents]
    for name, j in targets:
        row = {"target": name, "latent": j, "alpha": float(alpha) if j is not None else 0.0, "layer": sae.layer}
        key = log.key(row) if log is not None else None
        if key in done:
            rows.append(done[key])
            continue
        if j is None:
            res = judge_fn(model)
        else:
            vec = sae.decoder_direction(j).float()
            vec = (vec / vec.norm().clamp_min(1e-12)).to(model.dtype)
            with steering.add(model, vec, layers=[sae.layer], alpha=float(alpha), positions=positions):
                res = judge_fn(model)
        if "misaligned" not in res or "coherence" not in res:
            raise ValueError(f"judge_fn must return 'misaligned' and 'coherence', got {sorted(res)}")
        row.update({k: (float(v) if isinstance(v, (int, float)) and v is not None else v) for k, v in res.items()})
        rows.append(row)
        if log is not None:
            log.append(row)
    return rank_screen(rows, coherence_min)


def rank_screen(rows: Sequence[dict[str, Any]], coherence_min: float = 50.0) -> list[dict[str, Any]]:
    """Order latent-screen rows: coherent enough first, then by misalignment (desc); None scores last.

    Args:
        rows: rows with "coherence" and "misaligned" scores (copied, not changed).
        coherence_min: coherence at or above which a row is `coherent_enough`.

    Returns:
        The rows, sorted, each with `coherent_enough` and `rank` (0 = first).
    """

    def num(x):
        return float("-inf") if x is None or (isinstance(x, float) and x != x) else float(x)

    out = []
    for r in rows:
        r = dict(r)
        r["coherent_enough"] = r.get("coherence") is not None and num(r["coherence"]) >= coherence_min
        out.append(r)
    out.sort(key=lambda r: (not r["coherent_enough"], -num(r.get("misaligned"))))
    for k, r in enumerate(out):
        r["rank"] = k
    return out


@torch.no_grad()
def latent_scores(model: LoadedModel, sae: LayerSAE, conversations: Sequence[Any], latents: Sequence[int], *,
                  positions: TokenPositions = "response", batch_size: int = 8, max_length: int | None = 512,
                  progress: bool = True) -> Float[Tensor, "n k"]:
    """Mean activation of each chosen latent over the selected tokens of each conversation.

    Args:
        model: the model whose residual stream the SAE reads.
        sae: the SAE (reading after block `sae.layer`).
        conversations: message lists, records with "messages", or plain texts.
        latents: the `k` latent indices to score.
        positions: tokens averaged over (`TokenPositions`).
        batch_size: conversations per forward pass.
        max_length: tokens kept per conversation (None: all).
        progress: show a progress bar.

    Returns:
        `[n, k]` mean activations, one row per conversation (NaN for a conversation with no
        selected token).
    """
    convs = [as_messages(c, i) for i, c in enumerate(conversations)]
    ex = token_activations(model, convs, sae.layer, batch_size=batch_size, max_length=max_length, progress=progress,
                           desc="latent scores")
    codes = latent_codes(sae, ex, latents)
    rows = []
    for e, c in zip(ex, codes):
        sel = e.mask(positions)
        rows.append(c[sel].mean(0) if sel.any() else torch.full((c.shape[1],), float("nan")))
    return torch.stack(rows)


def detector_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AUROC of `scores` separating label 1 (misaligned) from 0 (aligned).

    Ties count one half (the Mann-Whitney form), so it needs no sklearn and is exact for few units.

    Args:
        scores: one detector score per unit.
        labels: one 0/1 label per unit.

    Returns:
        The AUROC in [0, 1]; NaN when only one class is present.

    Raises:
        ValueError: `scores` and `labels` differ in length, or a score is NaN.
    """
    s = [float(x) for x in scores]
    y = [int(v) for v in labels]
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if any(x != x for x in s):
        raise ValueError("a detector score is NaN (a unit with no selected tokens?)")
    pos = [a for a, l in zip(s, y) if l == 1]
    neg = [a for a, l in zip(s, y) if l == 0]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
