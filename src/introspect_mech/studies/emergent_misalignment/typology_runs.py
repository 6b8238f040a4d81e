"""The typology of answers across emergent-misalignment runs: one clustering of every model of several runs.

One EM run clusters its own models' answers (the `typology` stage). The question the typology exists for —
what kinds of answer does a bad-advice finetune add, and does an insecure-code finetune add the same kinds? —
needs the base, both finetunes and both controls in **one** embedding space and one clustering, while a CPU
run holds one dataset pair. This command reads finished EM runs of one base model and one sampling setup
(they may differ in datasets, seed and `include_base`), takes every answer to one question set, embeds them
all with one embedder (the base model's own activations, or all-MiniLM-L6-v2) and clusters them once. Each
model is named `<model> s<seed>` (the run's seed), so seeds of one dataset stay apart and can be compared.

Judge scores per cluster are shown only when every run used the same judge with the same validation (the
cluster shares are memberships, never a judged rate). Intervals are Wilson over answers, optimistic (answers
to one question are not independent), as in `evals.typology`.

    introspect-mech em-typology /runs/em_s0 /runs/em_s1 /runs/em_code --out /runs/em_typology
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ... import runs as _runs
from ...evals.typology import ActivationEmbedder, SentenceEmbedder, typology
from ...models import load_model
from ...runs import RunDir
from ...viz.dashboard import export_dashboard
from ...viz.rows import TypologyRow
from .checks import load_answers, model_names
from .seeds import SeedRunsError, load_run

__all__ = ["SAME_FIELDS", "TypologyRunsError", "collect_answers", "check_comparable", "run_typology",
           "format_typology", "main"]

# config fields every pooled run must share: the base model and everything that shapes an answer
SAME_FIELDS = ("model", "n_samples", "max_new_tokens", "temperature", "question_limit")


class TypologyRunsError(ValueError):
    """The runs cannot be clustered together (unfinished, another base model or sampling setup, a repeat)."""


def check_comparable(runs: Sequence[dict[str, Any]], question_set: str) -> None:
    """Refuse runs of another base model or sampling setup, runs without the question set, and repeated models.

    Args:
        runs: `seeds.load_run` results.
        question_set: the question set whose answers are clustered.

    Raises:
        TypologyRunsError: one line naming the run and the field.
    """
    if len(runs) < 1:
        raise TypologyRunsError("need at least one finished EM run")
    ref = runs[0]
    for r in runs:
        if question_set not in (r["config"].get("question_sets") or []):
            raise TypologyRunsError(f"{r['path']}: config.question_sets {r['config'].get('question_sets')} has no "
                                    f"{question_set!r}")
        diff = [f for f in SAME_FIELDS if r["config"].get(f) != ref["config"].get(f)]
        if diff:
            raise TypologyRunsError(f"{r['path']}: config differs from {ref['path']} in {', '.join(diff)} "
                                    f"(the runs must share {', '.join(SAME_FIELDS)})")
    seen: dict[str, str] = {}
    for r in runs:
        for name in _names(r):
            label = _label(name, r)
            if label in seen:
                raise TypologyRunsError(f"{r['path']}: model {label!r} also comes from {seen[label]}")
            seen[label] = r["path"]


def _names(run: dict[str, Any]) -> list[str]:
    cfg = run["config"]
    return model_names(SimpleNamespace(include_base=bool(cfg.get("include_base")), datasets=cfg.get("datasets") or []))


def _label(name: str, run: dict[str, Any]) -> str:
    return f"{name} s{run['config']['seed']}"


def _judge(run: dict[str, Any]) -> tuple[str | None, str | None]:
    judge, jv = run["results"].get("judge"), run["results"].get("judge_validation") or {}
    if judge is None:
        return None, None
    name = (f"{judge.get('kind', '')} {judge.get('model', '')} ({judge.get('mode', '0-100')})".strip()
            if isinstance(judge, dict) else str(judge))
    return name, (jv.get("line") if isinstance(jv, dict) else None) or "unvalidated judge"


def collect_answers(runs: Sequence[dict[str, Any]], question_set: str = "main") -> tuple[list[dict[str, Any]], str | None, str | None]:
    """Every answer of every model of the runs, named `<model> s<seed>`, and the judge they share.

    Args:
        runs: `seeds.load_run` results (already checked with `check_comparable`).
        question_set: the question set.

    Returns:
        (rows, judge name or None, judge validation line or None). Judge scores are dropped from the rows
        unless every run used the same judge with the same validation.
    """
    judges = {_judge(r) for r in runs}
    shared = judges.pop() if len(judges) == 1 else (None, None)
    rows: list[dict[str, Any]] = []
    for r in runs:
        for row in load_answers(Path(r["path"]), _names(r), question_set):
            row = {**row, "model": f"{row['model']} s{r['config']['seed']}"}
            if shared[0] is None:
                row = {k: v for k, v in row.items() if k not in ("aligned", "coherent")}
            rows.append(row)
    return rows, shared[0], shared[1]


def run_typology(paths: Sequence[str | os.PathLike], *, question_set: str = "main", embedding: str = "activations",
                 layer: float = 0.5, ks: Sequence[int] = (2, 3, 4, 5, 6), seed: int = 0, batch_size: int = 8,
                 embedder: Any = None) -> dict[str, Any]:
    """Cluster the answers of every model of finished EM runs together.

    Args:
        paths: finished EM run directories.
        question_set: the question set whose answers are clustered.
        embedding: "activations" (the runs' base model, mean over the answer after block `layer`) or "sentence"
            (all-MiniLM-L6-v2 from the `typology` extra).
        layer: block index (≥ 1) or relative depth of the activation embedding.
        ks: cluster counts tried (cosine silhouette picks one).
        seed: k-means seed.
        batch_size: answers per forward of the embedder.
        embedder: an embedder to use instead (tests); `embedding` then only names it.

    Returns:
        {"runs", "question_set", "models", "n_answers", "judge", "judge_validation", "k", "silhouette",
        "embedding", "clusters"} (clusters: the typology panel's rows).

    Raises:
        TypologyRunsError: runs that cannot be clustered together (before any model is loaded).
    """
    try:
        runs = [load_run(p) for p in paths]
    except SeedRunsError as e:
        raise TypologyRunsError(str(e)) from None
    check_comparable(runs, question_set)
    rows, jname, jline = collect_answers(runs, question_set)
    if len(rows) < max(3, min(ks) + 1):
        raise TypologyRunsError(f"{len(rows)} answers in question set {question_set!r}: too few to cluster")
    if embedder is None:
        if embedding == "activations":
            lay = int(layer) if layer >= 1 and float(layer).is_integer() else float(layer)
            embedder = ActivationEmbedder(load_model(runs[0]["config"]["model"]), layer=lay, batch_size=batch_size)
        elif embedding == "sentence":
            embedder = SentenceEmbedder()
        else:
            raise TypologyRunsError(f"embedding must be activations or sentence, got {embedding!r}")
    res = typology(rows, embedder=embedder, ks=ks, seed=seed, judge=jname, judge_validation=jline)
    models = list(dict.fromkeys(r["model"] for r in rows))
    return {"runs": [r["path"] for r in runs], "question_set": question_set, "models": models,
            "n_answers": len(rows), "judge": jname, "judge_validation": jline, "k": res.k,
            "silhouette": {str(k): v for k, v in res.silhouette.items()}, "embedding": res.embedder,
            "clusters": res.clusters}


def format_typology(res: dict[str, Any]) -> str:
    """The clustering as text: per cluster, each model's share with its interval.

    Args:
        res: what `run_typology` returned.

    Returns:
        Lines.
    """
    lines = [f"{res['n_answers']} answers of {len(res['models'])} models · question set {res['question_set']} · "
             f"embedding {res['embedding']} · k = {res['k']} (cosine silhouette {res['silhouette'].get(str(res['k']))})",
             "share of each model's answers in the cluster (Wilson over answers, optimistic):"]
    for c in res["clusters"]:
        shares = ", ".join(f"{m} {s['count']}/{s['n']} [{s['ci_lo']:.2f}, {s['ci_hi']:.2f}]"
                           for m, s in c["shares"].items())
        lines.append(f"  cluster {c['cluster']} (size {c['size']}): {shares}")
        if c.get("judge_scores"):
            js = ", ".join(f"{k} {v['mean']:.1f} (n {v['n']})" for k, v in c["judge_scores"].items()
                           if v.get("mean") is not None)
            lines.append(f"    judge {c['judge']} [{c['judge_validation']}]: mean {js}")
        for t in c["typical"][:1]:
            lines.append(f"    typical ({t['model']}): {t['response'][:160]!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Cluster the answers of finished EM runs together (`introspect-mech em-typology RUN ... [--out DIR]`).

    Args:
        argv: command-line options.
        prog: program name for usage lines.

    Returns:
        0 on success, 2 on a usage error (runs that cannot be clustered together).
    """
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished emergent-misalignment run directories of one base model")
    ap.add_argument("--question-set", default="main", help="question set whose answers are clustered (default: main)")
    ap.add_argument("--embedding", choices=("activations", "sentence"), default="activations",
                    help="the base model's activations, or all-MiniLM-L6-v2 (extra 'typology') (default: activations)")
    ap.add_argument("--layer", type=float, default=0.5, help="block (>= 1) or relative depth of the activation "
                                                             "embedding (default: 0.5)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="cluster counts tried (default: 2-6)")
    ap.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    ap.add_argument("--batch-size", type=int, default=8, help="answers per embedding forward (default: 8)")
    ap.add_argument("--out", default=None, help="write typology.json, the panel rows and a dashboard here "
                                                "(a run directory of its own)")
    ns = ap.parse_args(argv)
    try:  # run_typology checks the inputs before it loads any model
        res = run_typology(ns.runs, question_set=ns.question_set, embedding=ns.embedding, layer=ns.layer, ks=ns.ks,
                           seed=ns.seed, batch_size=ns.batch_size)
    except TypologyRunsError as e:
        ap.error(str(e))
    print(format_typology(res))
    if ns.out:
        rd = RunDir(ns.out)
        rd.bind("em_typology", {"runs": [str(Path(p).resolve()) for p in ns.runs],
                                "manifests": [_runs.file_sha256(Path(p) / "manifest.json") for p in ns.runs],
                                "question_set": ns.question_set, "embedding": ns.embedding, "layer": ns.layer,
                                "ks": list(ns.ks), "seed": ns.seed}, overwrite=True)
        _runs.write_json(rd.path / "typology.json", res, root=rd.path, default=float)
        _runs.write_jsonl(rd.path / TypologyRow.file(), [TypologyRow.from_cluster(c).as_row() for c in res["clusters"]],
                          root=rd.path)
        html = export_dashboard(rd.path, title="Answer typology across EM runs")
        print(f"wrote {rd.path / 'typology.json'}\ndashboard: {html}")
    return 0

