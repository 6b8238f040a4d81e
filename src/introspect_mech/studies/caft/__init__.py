"""CAFT: concept-ablation finetuning (Casademunt et al. 2025) as the paper ran it.

1. Finetune once without intervention (the model that shows the unwanted generalisation).
2. `activation_differences`: on generic prompts answered by the finetuned model, run base and
   finetuned model on the same tokens and take the per-token difference of the residual stream
   `h_ft - h_base` after each chosen block (response tokens).
3. `pca`: principal components of those differences per layer.
4. `component_cards`: for each component, its top-activating examples (tokens where the base
   model's activation projects highest / lowest on it) and its logit-lens tokens (the unembedding
   of the component through the final norm's gain, both signs), so a person can say what it means
   and pick the ones to ablate (the dashboard's "CAFT components" panel, `viz.caft`).
5. `picked_subspace`: the chosen components per layer; `random_pc_subspace`: as many other
   components of the same PCA, drawn at random (the control, as in the paper).
6. Finetune again from the base model with `steering.train_time.caft_subspace` (the subspace is
   projected out at every position of every training forward, and nothing at inference) and with
   the random controls; report in-domain held-out performance kept and the out-of-domain EM change.

Deviations from the paper are listed in docs/caft.md (generic prompts, interpretation texts, judge).

`run(out, CAFTConfig(...))` runs the two-stage protocol into a run directory (from a notebook);
`main(argv)` is the command line (`python experiments/caft.py --help`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ...cliargs import config_parser, parse_config
from ...evals.judge_spec import JudgeOptions
from ...data.specs import load_records
from ...layers import resolve_layers
from ...runs import RunDir
from ...sae.tokens import TokenActs, TokenPositions, token_activations
from .. import runner
from ..common.em_questions import em_questions
from . import panels as _panels  # noqa: F401  (registers the study's dashboard panels)
from ... import runs as _runs
from ... import load_model
from ...evals import answer_logprobs, paired_preference, sample
from ..common.em_eval import run_em_eval
from ...finetune import preset as train_preset
from ...runs import json_sha256
from ...steering.train_time import caft_subspace
from ..common.persona import load_trait
from ...viz import export_dashboard
from ...evals import judge_record as _jr


@dataclass
class CAFTConfig:
    """Every option of a CAFT run (run 1 without `pick`: the component cards; run 2: CAFT vs random).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    caft --help`).
    """

    model: str | None = None  # model name/path/hub id (None: the embedded SmolLM2-135M-Instruct)
    data: str = "bad_medical_advice"  # finetuning data: a registered name, gen:<generator> or a JSONL(.gz) path
    n_train: int = 64  # training records (the first N of the data)
    steps: int = 16  # optimizer steps of every finetune
    lr: float = 2e-4  # learning rate of every finetune
    n_prompts: int = 24  # generic prompts answered by the plain finetune (activation differences)
    n_heldout: int = 24  # held-out records (the last N, never trained on): in-domain log-prob
    max_new_tokens: int = 48  # tokens per sampled answer
    pick: str | None = None  # components to ablate, e.g. "9:0;14:0,1" (after reading the cards); none: run 1
    n_random: int = 2  # random subspaces of the picked dimensions (controls)
    conditions: tuple[str, ...] | None = None  # run only these conditions now, e.g. caft base (parallel processes)
    seed: int = 0  # seed of the finetunes, the sampling and the random controls
    allow_unvalidated_judge: bool = False  # report the judged EM rate (run 2) from a judge without a passing validation on the shared GPT-4o set (labelled "unvalidated judge")
    layer_fractions: tuple[float, ...] = (0.3, 0.5, 0.7)  # relative depths of the PCA layers
    n_components: int = 6  # principal components per layer
    n_top_examples: int = 4  # top / bottom activating examples per component card
    n_logit_tokens: int = 8  # logit-lens tokens per sign on a component card


# "paper": Casademunt et al. on Qwen2.5-Coder-32B-Instruct (64 blocks): PCA at 3 layers spread
# over depth, top ~20 components inspected per layer; "cpu": the embedded model (30 blocks).
PRESETS: dict[str, CAFTConfig] = {
    "paper": CAFTConfig(layer_fractions=(0.19, 0.5, 0.78), n_components=20, n_top_examples=20, n_logit_tokens=10),
    "cpu": CAFTConfig(layer_fractions=(0.3, 0.5, 0.7), n_components=6, n_top_examples=4, n_logit_tokens=8),
}


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
    from safetensors.torch import load_file

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


# ---- the two-stage run -----------------------------------------------------------------------------

def generic_prompts(n: int) -> list[list[dict]]:
    """Chat prompts unrelated to the finetuning task: the EM questions' paraphrases and the persona
    traits' eval questions (the paper used generic chat prompts, see docs/caft.md).

    Args:
        n: how many prompts (the first `n`).

    Returns:
        Chat message lists.
    """

    qs = [p["messages"] for q in em_questions() for p in q.prompts()]
    for t in ("evil", "humorous", "optimistic", "apathetic"):
        qs += [[{"role": "user", "content": x}] for x in load_trait(t, split="eval")["questions"]]
    return qs[:n]


def _caft(out: str | os.PathLike, config: CAFTConfig | None = None, *, judge: JudgeOptions | None = None,
          preset: str | None = "cpu") -> dict[str, Any]:
    """Run 1 (no `config.pick`): the plain finetune, the PCA components and their cards; run 2: the
    finetunes with the picked subspace and random subspaces ablated, scored against base and plain.

    Rerun the same call to resume (finetunes, components, cards and per-condition rows are kept).
    Per-condition result rows are printed as they finish.

    Args:
        out: run directory.
        config: every option (default `PRESETS["cpu"]`).
        judge: the 0-100 judge of the judged EM rate (run 2; default none: the judge-free proxy only).
            "hf:embedded" reuses the base model when `config.model` is the embedded one.
        preset: the preset name recorded in the manifest.

    Returns:
        {"cards": path of caft_components.jsonl, "dashboard": path of the dashboard (None while run 2
        has conditions left), "rows": {condition: result row} (run 2), "todo": conditions still to run,
        "summary": the `summarize` dict or None}.
    """
    from ...finetune import train

    cfg = config or PRESETS["cpu"]
    judge_opts = judge or JudgeOptions()
    out = Path(out)
    run_dir = RunDir(out)
    load = lambda adapter=None: load_model(cfg.model, adapter=adapter, dtype=torch.float32)  # noqa: E731
    base = load()
    # the one gate, before any finetuning: run 2's judged EM rate only from a judge with a passing validation
    scorer = judge_opts.build(model=base if cfg.model is None else None) if cfg.pick is not None else None
    jrec = _jr.gate(scorer, what="a judged EM rate (CAFT run 2)", allow_unvalidated=cfg.allow_unvalidated_judge)
    layers = preset_layers(base.n_layers, cfg.layer_fractions)
    records = load_records(cfg.data)
    train_recs = records[: cfg.n_train]
    heldout = [r["messages"] for r in records[len(records) - cfg.n_heldout:]]  # never trained on
    tcfg = train_preset("em", lr=cfg.lr, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=cfg.steps,
                        seed=cfg.seed, epochs=100)
    run_dir.write_manifest(title=f"CAFT on {cfg.data}", model=base.name, preset=preset, seed=cfg.seed, layers=layers,
                           data={"train": cfg.data, "train_ids": list(range(cfg.n_train)),
                                 "heldout_ids": list(range(len(records) - cfg.n_heldout, len(records))),
                                 "train_sha256": json_sha256([r["messages"] for r in train_recs])},
                           judge=judge_opts.judge if judge_opts.judge != "none"
                           else "none: judge-free OOD proxy (paired preference)", judge_validation=jrec)
    plain_dir = out / "finetunes" / "plain"
    if not (plain_dir / "adapter" / "complete").exists():
        train(load(), train_recs, tcfg, plain_dir)
    ft = load(plain_dir / "adapter")
    comp_file = out / "components.safetensors"
    prompts = [{"id": str(i), "messages": m} for i, m in enumerate(generic_prompts(cfg.n_prompts))]
    rows = sample(ft, prompts, n=1, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, out=out / "generic_answers.jsonl")
    convs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows if r["response"].strip()]
    if not comp_file.exists():
        deltas = activation_differences(base, ft, convs, layers)
        save_components(comp_file, {l: pca(x, cfg.n_components) for l, x in deltas.items()})
    pcs = load_components(comp_file)
    cards_file = out / "caft_components.jsonl"
    if not cards_file.exists():
        texts = convs + heldout  # interpretation texts (the paper: pretraining text; see docs)
        write_cards(out, component_cards(base, pcs, texts, n_top=cfg.n_top_examples, n_tokens=cfg.n_logit_tokens))
    result: dict[str, Any] = {"cards": cards_file, "dashboard": None, "rows": {}, "todo": [], "summary": None}
    if cfg.pick is None:
        result["dashboard"] = export_dashboard(out).resolve()
        return result
    picks = parse_picks(cfg.pick)
    chosen = picked_subspace(pcs, picks)
    cards = [json.loads(l) for l in cards_file.read_text().splitlines()]
    for c in cards:
        c["picked"] = c["component"] in picks.get(c["layer"], [])
    write_cards(out, cards)
    run_dir.write_manifest(picks={str(k): v for k, v in picks.items()})
    log = run_dir.log("caft_results.jsonl", ("condition", "pick"))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == cfg.pick}
    conds: dict[str, Any] = {"base": None, "plain": plain_dir, "caft": chosen}
    for i in range(cfg.n_random):  # the control: random PCs of the same PCA (the paper's), not isotropic noise
        conds[f"random_{i}"] = random_pc_subspace(pcs, picks, seed=cfg.seed + 1 + i)
    only = set(cfg.conditions) if cfg.conditions else set(conds)
    for name, spec in conds.items():
        if name in done or name not in only:
            continue
        if name == "base":
            m = base
        elif name == "plain":
            m = ft
        else:
            fdir = out / "finetunes" / f"{name}_{json_sha256(cfg.pick)[:8]}"
            m = load()
            if not (fdir / "adapter" / "complete").exists():
                train(m, train_recs, tcfg, fdir, intervention=caft_subspace(m, spec))
            else:
                m = load(fdir / "adapter")
        row = {"condition": name, "pick": cfg.pick, "in_domain": in_domain_logprob(m, heldout),
               "ood": paired_preference(m, seed=cfg.seed)["mean_diff"]["value"],
               "ood_metric": "PROXY: paired-preference mean diff, misaligned - aligned (nats/token)"}
        if scorer is not None:
            rep = run_em_eval(m, out / "em" / name, judge=scorer, n=2, max_new_tokens=cfg.max_new_tokens,
                              seed=cfg.seed, question_ids=[q.id for q in em_questions()], judge_free=False)["report"]
            row["em_rate_judged"] = rep["overall"]["em_rate"]
            row["n_judged_valid"] = rep["overall"]["n_valid"]
            row.update(_jr.fields(jrec))  # the judge's validation line and label beside the judged rate
        log.append(row)
        done[name] = row
        print(json.dumps(row))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == cfg.pick}
    result["rows"] = done
    result["todo"] = [c for c in conds if c not in done]
    if result["todo"]:
        return result
    summ = summarize([done[c] for c in conds])
    _runs.write_json(out / "caft_summary.json", summ, indent=2)
    key_rows = [{"name": "in-domain held-out log-prob/token learned by the plain finetune",
                 "value": summ["in_domain_learned_by_plain"]},
                {"name": "OOD proxy shift by the plain finetune (nats/token)", "value": summ["ood_shift_by_plain"]}]
    for k in ("caft", "random_mean"):
        key_rows.append({"name": f"{k}: in-domain learning kept", "value": summ[k]["in_domain_kept"]})
        key_rows.append({"name": f"{k}: OOD proxy change vs plain", "value": summ[k]["ood_change_vs_plain"],
                         "note": "proxy (paired preference), not an EM rate"})
    _runs.write_jsonl(out / "summary.jsonl", key_rows)
    result["summary"] = summ
    result["dashboard"] = export_dashboard(out).resolve()
    return result


def _stage(ctx: runner.Context) -> Any:
    res = _caft(ctx.out, ctx.config, judge=ctx.resources["judge"], preset=ctx.resources.get("preset_name"))
    return runner.NotDone(res) if res["todo"] else res  # conditions left: a rerun continues


STUDY = runner.Study(
    "caft", CAFTConfig, PRESETS, default_preset="cpu", title="CAFT: concept ablation fine-tuning",
    stages=(runner.Stage("caft", _stage, "run 1: plain finetune, components, cards; run 2 (--pick): the "
                         "ablated finetunes against base, plain and random subspaces"),),
    unbound=("pick", "conditions"),  # run 2 picks after run 1 in the same directory; rows are keyed by the pick
    dashboard=False)  # the stage exports it (only once run 2 has every condition)


def run(config: CAFTConfig | str | os.PathLike | None = None, out: str | os.PathLike | CAFTConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (rerun the same call to resume).

    Run 1 (no `config.pick`): the plain finetune, the PCA components and their cards; run 2: the
    finetunes with the picked subspace and random subspaces ablated, scored against base and plain.

    Args:
        config: every option (default `PRESETS["cpu"]`).
        out: the run directory.
        **kw: `judge=` (a `JudgeOptions`: the 0-100 judge of the judged EM rate, run 2), `preset_name=`
            (the preset recorded in the manifest), `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["caft"]` is {"cards", "dashboard", "rows", "todo", "summary"}.
        The deprecated `run(out, config)` returns that dict itself.
    """
    return runner.run(STUDY, config, out, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `--preset`, one option per `CAFTConfig` field, the judge options and `--out`."""
    return config_parser(CAFTConfig, description=(__doc__ or "").splitlines()[0], out="runs/caft", presets=PRESETS,
                         default_preset="cpu", groups=[(JudgeOptions, "judge", "scores the answers for the judged EM rate (run 2)")])


def config_from_argv(argv: Sequence[str] | None = None) -> tuple[CAFTConfig, JudgeOptions, argparse.Namespace]:
    """What the command line asks for: the config (the preset, then the options given), the judge
    options and the parsed namespace (`out`, ...).

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        (config, judge options, namespace).
    """
    # usage_errors=False: a bad judge spec raises its ValueError (the entry point makes it one line)
    a, cfg, (judge,) = parse_config(build_parser(), argv, CAFTConfig, presets=PRESETS, groups=[JudgeOptions],
                                    usage_errors=False)
    return cfg, judge, a


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the study and print what it wrote.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """
    cfg, judge, a = config_from_argv(argv)
    res = run(cfg, a.out, judge=judge, preset_name=a.preset).results["caft"]
    if cfg.pick is None:
        print(f"component cards: {res['cards']}; dashboard: {res['dashboard']}")
        print('read the cards, then rerun with --pick "LAYER:C1,C2;LAYER:C3"')
        return 0
    if res["todo"]:
        print(f"conditions still to run: {res['todo']}")
        return 0
    print(json.dumps(res["summary"], indent=2))
    print(f"dashboard: {res['dashboard']}")
    return 0
