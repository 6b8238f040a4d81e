"""Directions from labelled activations: mean difference, PCA, logistic-regression probes, sweeps,
transfer and cosine matrices. Inputs are `Float[Tensor, "n layer d_model"]` from `activations.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..activations import LazyActivations
from ..direction import Direction

Activations = Union[Float[Tensor, "n layer d_model"], Float[Tensor, "n d_model"], LazyActivations]
"""Pooled activations as `activations.cache` returns them (a `[n, d_model]` matrix is one layer)."""
PosActs = Union[Float[Tensor, "n_pos layer d_model"], Float[Tensor, "n_pos d_model"], LazyActivations]
NegActs = Union[Float[Tensor, "n_neg layer d_model"], Float[Tensor, "n_neg d_model"], LazyActivations]


def _acts(x) -> Tensor:
    x = x.load() if hasattr(x, "load") and not isinstance(x, Tensor) else x
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim == 2:
        x = x[:, None]
    if x.ndim != 3:
        raise ValueError(f"activations must be [n, layer, d_model] (or [n, d_model]); got shape {tuple(x.shape)}")
    return x


def mean_diff(pos: PosActs, neg: NegActs, layers: Sequence[int] | None = None, **meta: Any) -> Direction:
    """Per-layer `mean(pos) - mean(neg)` as a `Direction` (norm = distance between the class means).

    Args:
        pos: `[n_pos, layer, d_model]` activations of the positive class (or `[n_pos, d_model]`).
        neg: `[n_neg, layer, d_model]` activations of the negative class, same layers and width.
        layers: the block index of each layer column (default 0..L-1; pass the `layers=` you cached).
        **meta: provenance stored in `Direction.meta`.

    Returns:
        A `Direction` with one unit vector and norm per layer column.
    """
    p, n = _acts(pos), _acts(neg)
    if p.shape[1:] != n.shape[1:] or len(p) == 0 or len(n) == 0:
        raise ValueError(f"mean_diff: pos {tuple(p.shape)} and neg {tuple(n.shape)} must be non-empty with equal layer/d_model")
    return Direction.from_raw(p.mean(0) - n.mean(0), None if layers is None else list(layers), method="mean_diff", n_pos=len(p), n_neg=len(n), **meta)


def pca_direction(acts: Activations, labels: Any = None, layers: Sequence[int] | None = None,
                  **meta: Any) -> Direction:
    """First principal component per layer of the centred activations.

    Args:
        acts: `[n, layer, d_model]` activations (for paired data: the differences `pos - neg`).
        labels: optional `[n]` labels (1 = positive); the sign is then chosen so positives project
            higher (without labels: towards the mean).
        layers: the block index of each layer column (default 0..L-1).
        **meta: provenance stored in `Direction.meta`.

    Returns:
        A `Direction`; its `norms` hold the component's standard deviation.
    """
    x = _acts(acts)
    vecs, sds = [], []
    y = None if labels is None else np.asarray(labels).astype(bool)
    for k in range(x.shape[1]):
        xc = x[:, k] - x[:, k].mean(0)
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
        v = vh[0]
        if y is not None and y.any() and (~y).any():
            proj = (x[:, k] @ v).numpy()
            if proj[y].mean() < proj[~y].mean():
                v = -v
        elif y is None and (x[:, k].mean(0) @ v) < 0:
            v = -v  # deterministic sign: towards the mean
        vecs.append(v)
        sds.append(s[0] / max(len(x) - 1, 1) ** 0.5)
    return Direction(torch.stack(vecs), torch.stack(sds), list(range(x.shape[1])) if layers is None else list(layers),
                     {"method": "pca", "n": len(x), **meta})


@dataclass
class ProbeResult:
    """A cross-validated logistic-regression probe on one layer (then refit on all data)."""

    accuracy: float  # mean CV accuracy
    auroc: float  # mean CV AUROC (macro one-vs-rest for > 2 classes)
    accuracy_std: float
    chance: float  # majority-class rate
    direction: Float[Tensor, " d_model"]  # unit normal of the refit probe, in activation space (binary)
    classifier: Any = field(repr=False, default=None)
    n: int = 0

    def as_dict(self) -> dict[str, float]:
        """The metrics (accuracy, auroc, accuracy_std, chance, n) as a dict."""
        return {"accuracy": self.accuracy, "auroc": self.auroc, "accuracy_std": self.accuracy_std,
                "chance": self.chance, "n": self.n}


def _auroc(y, scores, classes) -> float:
    from sklearn.metrics import roc_auc_score

    try:
        if len(classes) == 2:
            return float(roc_auc_score(y, scores[:, 1] if scores.ndim == 2 else scores))
        return float(roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=classes))
    except ValueError:  # a fold without both classes
        return float("nan")


def train_probe(x: Float[Tensor, "n d_model"], y: Any, *, cv: int = 5, C: float = 1.0, seed: int = 0,
                max_iter: int = 2000) -> ProbeResult:
    """Standardised logistic regression; stratified `cv`-fold accuracy and AUROC, then a refit on all data.

    Args:
        x: `[n, d_model]` activations of one layer.
        y: `[n]` labels (two or more classes, >= 2 examples each).
        cv: number of stratified folds (capped by the smallest class).
        C: inverse L2 regularisation strength.
        seed: fold shuffling seed.
        max_iter: solver iterations.

    Returns:
        A `ProbeResult`; its `direction` is the refit probe's weight vector mapped back to activation
        space (w / scale), normalised (for multi-class labels: the first class-vs-rest row).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = torch.as_tensor(x, dtype=torch.float32).numpy()
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"train_probe: labels have a single class {classes.tolist()}")
    folds = int(min(cv, counts.min()))
    if folds < 2:
        raise ValueError(f"train_probe: need >= 2 examples of every class for cross-validation (counts {counts.tolist()})")

    def make():
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))

    accs, aucs = [], []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        clf = make().fit(X[tr], y[tr])
        accs.append(float((clf.predict(X[te]) == y[te]).mean()))
        aucs.append(_auroc(y[te], clf.predict_proba(X[te]), clf.classes_))
    clf = make().fit(X, y)
    sc, lr = clf[0], clf[1]
    w = torch.as_tensor(lr.coef_[0] / np.where(sc.scale_ == 0, 1, sc.scale_), dtype=torch.float32)
    return ProbeResult(float(np.mean(accs)), float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan"),
                       float(np.std(accs)), float(counts.max() / counts.sum()), w / w.norm().clamp_min(1e-12), clf, len(y))


@dataclass
class SweepResult:
    """One `ProbeResult` per layer column, as `layer_sweep` returns."""

    layers: list[int]
    probes: list[ProbeResult]

    @property
    def accuracy(self) -> list[float]:
        """CV accuracy per layer."""
        return [p.accuracy for p in self.probes]

    @property
    def auroc(self) -> list[float]:
        """CV AUROC per layer."""
        return [p.auroc for p in self.probes]

    def best(self) -> tuple[int, ProbeResult]:
        """The layer with the highest AUROC (accuracy if every AUROC is NaN) and its probe."""
        k = int(np.nanargmax(self.auroc)) if not all(np.isnan(self.auroc)) else int(np.argmax(self.accuracy))
        return self.layers[k], self.probes[k]

    def direction(self, **meta: Any) -> Direction:
        """The probes' normals as a Direction (binary labels).

        Args:
            **meta: provenance added to `meta` (after `method="logistic_probe"`).

        Returns:
            A `Direction` over `layers` with unit norms.
        """
        return Direction(torch.stack([p.direction for p in self.probes]), torch.ones(len(self.probes)), self.layers,
                         {"method": "logistic_probe", **meta})

    def rows(self) -> list[dict[str, float]]:
        """One dict per layer: layer, accuracy, auroc, accuracy_std, chance, n."""
        return [{"layer": l, **p.as_dict()} for l, p in zip(self.layers, self.probes)]


def layer_sweep(acts: Activations, labels: Any, layers: Sequence[int] | None = None, *, progress: bool = False,
                **probe_kw: Any) -> SweepResult:
    """`train_probe` at every layer column of `acts`.

    Args:
        acts: `[n, layer, d_model]` activations.
        labels: `[n]` labels.
        layers: the block index of each layer column (default 0..L-1).
        progress: show a tqdm bar.
        **probe_kw: passed to `train_probe` (cv, C, seed, max_iter).

    Returns:
        A `SweepResult` (one `ProbeResult` per layer column).
    """
    from tqdm.auto import tqdm

    x = _acts(acts)
    names = list(range(x.shape[1])) if layers is None else list(layers)
    if len(names) != x.shape[1]:
        raise ValueError(f"layer_sweep: {len(names)} layer names for {x.shape[1]} layer columns")
    probes = [train_probe(x[:, k], labels, **probe_kw) for k in tqdm(range(x.shape[1]), desc="probe layers", disable=not progress)]
    return SweepResult(names, probes)


def transfer(source: ProbeResult | SweepResult | Direction, acts: Activations, labels: Any,
             layers: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Evaluate probes or a direction trained elsewhere (another model, dataset or prompt set) on `acts`.

    Args:
        source: a `ProbeResult`, a `SweepResult` or a `Direction`.
        acts: `[n, layer, d_model]` activations to evaluate on.
        labels: `[n]` labels.
        layers: the block index of each layer column of `acts` (default 0..L-1).

    Returns:
        One row per layer column that `source` covers: probes report accuracy and AUROC; a
        Direction reports the AUROC of the projections (a direction carries no threshold).
    """
    from sklearn.metrics import roc_auc_score

    x = _acts(acts)
    y = np.asarray(labels)
    names = list(range(x.shape[1])) if layers is None else list(layers)
    rows = []
    if isinstance(source, ProbeResult):
        source = SweepResult(names[:1], [source])
    for k, layer in enumerate(names):
        xk = x[:, k].numpy()
        if isinstance(source, SweepResult):
            if layer not in source.layers:
                continue
            clf = source.probes[source.layers.index(layer)].classifier
            rows.append({"layer": layer, "accuracy": float((clf.predict(xk) == y).mean()),
                         "auroc": _auroc(y, clf.predict_proba(xk), clf.classes_)})
        else:
            if layer not in source.layers:
                continue
            proj = xk @ source.at(layer).numpy()
            rows.append({"layer": layer, "auroc": float(roc_auc_score(y, proj))})
    return rows


def cosine_matrix(a: Direction | Float[Tensor, "layer_a d_model"],
                  b: Direction | Float[Tensor, "layer_b d_model"] | None = None) -> Float[Tensor, "layer_a layer_b"]:
    """Cosine similarity between every layer of `a` and every layer of `b` (default `a` itself).

    Args:
        a: a `Direction` or `[layer_a, d_model]` vectors.
        b: a `Direction` or `[layer_b, d_model]` vectors (default: `a`).

    Returns:
        `[layer_a, layer_b]` cosines; rows / columns follow `a.layers` / `b.layers`. Directions from
        different models of the same width compare directly.
    """
    va = a.vectors if isinstance(a, Direction) else torch.as_tensor(a, dtype=torch.float32)
    vb = va if b is None else (b.vectors if isinstance(b, Direction) else torch.as_tensor(b, dtype=torch.float32))
    va = va / va.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    vb = vb / vb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return va @ vb.T
