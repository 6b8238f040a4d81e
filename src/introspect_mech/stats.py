"""Intervals over the right unit: the one statistics module the package uses (no model, no study).

Every number a study reports is an `Estimate`: a point value, a (1 - alpha) interval, the number
of units `n`, the `unit` the interval is over (answers, questions, seeds, finetunes, ...), the
interval `method`, and its `measure`: ``"judged"`` (from a judge's scores), ``"proxy"`` (a
judge-free stand-in, never beside a judged rate or a paper's number) or ``"exact"`` (computed
exactly, e.g. accuracy against ground truth).

Which interval:

* proportions of independent units: `wilson` (default) or `clopper_pearson` (exact); never a
  percentile bootstrap, which gives [0, 0] at 0/n and [1, 1] at n/n;
* proportions of answers clustered by question (EM rates): `clustered_proportion` -- Wilson at the
  effective sample size n / design effect, the design effect measured between questions, with a
  t quantile on (questions - 1) degrees of freedom (Korn & Graubard 1998 style);
* means over many units (>= `MIN_BOOT_UNITS`): the percentile bootstrap over that unit
  (`bootstrap_ci`, `cluster_bootstrap`); over fewer units (seeds, finetunes, questions) the
  bootstrap is never used: `t_interval` (one group), `welch` (two groups), `paired_diff` (paired items);
* several groups of items (seeds x items): `hierarchical_ci` -- the two-level bootstrap with many
  groups, a t-interval over group means with few;
* many tests in one study: `holm` (family-wise) or `benjamini_hochberg` (false discovery rate) on
  the p-values, and say which.

Bootstraps are seeded, so a report is reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import stats as _st

Measure = Literal["judged", "proxy", "exact"]
MEASURES = ("judged", "proxy", "exact")
MIN_BOOT_UNITS = 10  # fewer units than this: no percentile bootstrap (t / Welch / Wilson instead)
Values = Sequence[float | None] | np.ndarray


@dataclass
class Estimate:
    """A point estimate with its (1 - alpha) interval (`lo`, `hi`) over `n` units.

    Attributes:
        value: the point estimate (None without data).
        lo: interval lower bound (None when no interval exists, e.g. one seed).
        hi: interval upper bound.
        n: number of units the interval is over.
        unit: what one unit is ("answer", "question", "seed", "item", "pair", "finetune", ...).
        method: the interval method ("wilson", "clopper-pearson", "percentile-bootstrap", "t", "welch-t",
            "paired-t", "wilson-design-effect", "hierarchical-bootstrap", "t-over-group-means", "t-cluster-robust", "none").
        measure: "judged", "proxy" or "exact" (see the module docstring).
        p: a two-sided p-value of value == 0 where the method gives one (t / Welch / paired), else None.
    """

    value: float | None
    lo: float | None
    hi: float | None
    n: int
    unit: str = "item"
    method: str = "percentile-bootstrap"
    measure: str = "exact"
    p: float | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"Estimate.measure must be one of {MEASURES}, got {self.measure!r}")

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a (n={self.n} {self.unit}s)"
        ci = "no CI" if self.lo is None or self.hi is None else f"[{self.lo:.3f}, {self.hi:.3f}]"
        return f"{self.value:.3f} {ci} (n={self.n} {self.unit}s, {self.method}, {self.measure})"

    def to_dict(self) -> dict:
        """The estimate as a JSON-ready dict.

        Returns:
            `{"value", "lo", "hi", "n", "unit", "method", "measure", "p"}`.
        """
        return asdict(self)

    def with_(self, **fields: object) -> "Estimate":
        """A copy with `fields` replaced (e.g. `measure="judged"`, `unit="question"`).

        Args:
            **fields: Estimate fields.

        Returns:
            A new `Estimate`.
        """
        d = self.to_dict()
        d.update(fields)
        return Estimate(**d)  # type: ignore[arg-type]


def row_fields(est: Estimate | dict) -> dict:
    """The fields every result row carries about its interval: n, unit, method and measure.

    Args:
        est: an `Estimate` or its dict (missing fields come back as None).

    Returns:
        {"n", "unit", "method", "measure"}.
    """
    d = est.to_dict() if isinstance(est, Estimate) else est
    return {k: d.get(k) for k in ("n", "unit", "method", "measure")}


def _clean(values: Values) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and not np.isnan(float(v))], dtype=float)


def _binary(x: np.ndarray) -> bool:
    return len(x) > 0 and bool(np.all((x == 0.0) | (x == 1.0)))


# ---- proportions ------------------------------------------------------------------------------
def wilson(k: float, n: float, *, alpha: float = 0.05, z: float | None = None, unit: str = "answer",
           measure: Measure = "exact") -> Estimate:
    """k / n with the Wilson score interval (non-degenerate at 0 / n and n / n).

    Args:
        k: successes (may be fractional for an effective sample size).
        n: trials (> 0, may be fractional); n == 0 gives an empty estimate.
        alpha: 1 - confidence level.
        z: the critical value (default: the normal (1 - alpha / 2) quantile).
        unit: what one trial is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` with method "wilson".
    """
    if n <= 0:
        return Estimate(None, None, None, 0, unit, "wilson", measure)
    z = float(_st.norm.ppf(1 - alpha / 2)) if z is None else z
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k <= 0 else max(0.0, mid - half)
    hi = 1.0 if k >= n else min(1.0, mid + half)
    return Estimate(float(p), lo, hi, int(round(n)), unit, "wilson", measure)


def clopper_pearson(k: int, n: int, *, alpha: float = 0.05, unit: str = "answer", measure: Measure = "exact") -> Estimate:
    """k / n with the exact (Clopper-Pearson) interval.

    Args:
        k: successes.
        n: trials.
        alpha: 1 - confidence level.
        unit: what one trial is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` with method "clopper-pearson".
    """
    if n <= 0:
        return Estimate(None, None, None, 0, unit, "clopper-pearson", measure)
    lo = 0.0 if k == 0 else float(_st.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Estimate(k / n, lo, hi, n, unit, "clopper-pearson", measure)


def proportion_ci(flags: Values, *, method: Literal["wilson", "clopper-pearson"] = "wilson", alpha: float = 0.05,
                  unit: str = "answer", measure: Measure = "exact") -> Estimate:
    """The rate of 1s among 0/1 `flags` (None / NaN dropped) with a Wilson or exact interval.

    Args:
        flags: 0/1 values, one per independent unit.
        method: "wilson" or "clopper-pearson".
        alpha: 1 - confidence level.
        unit: what one flag is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate`.

    Raises:
        ValueError: a flag is not 0 or 1.
    """
    x = _clean(flags)
    if len(x) and not _binary(x):
        raise ValueError("proportion_ci: flags must be 0 or 1")
    k, n = int(x.sum()), len(x)
    if method == "clopper-pearson":
        return clopper_pearson(k, n, alpha=alpha, unit=unit, measure=measure)
    return wilson(k, n, alpha=alpha, unit=unit, measure=measure)


def clustered_proportion(flags: Values, clusters: Sequence[object], *, alpha: float = 0.05,
                         unit: str = "answer", cluster_unit: str = "question", measure: Measure = "exact") -> Estimate:
    """The pooled rate of 0/1 `flags` whose units are clustered (answers within questions).

    The interval is Wilson's at the effective sample size n / deff, where the design effect deff
    (>= 1) is the cluster-robust variance of the pooled rate over its binomial variance, and the
    critical value is the t quantile on (clusters - 1) degrees of freedom (normal with one cluster).
    It never collapses to [0, 0] at 0 / n, and it widens when questions differ.

    Args:
        flags: 0/1 per answer (None / NaN dropped together with its cluster label).
        clusters: the cluster (question id) of each flag, same length.
        alpha: 1 - confidence level.
        unit: what one flag is (n counts these).
        cluster_unit: what one cluster is (named in `method`).
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` with method "wilson-design-effect(<clusters> <cluster_unit>s)".

    Raises:
        ValueError: lengths differ or a flag is not 0/1.
    """
    if len(flags) != len(clusters):
        raise ValueError(f"clustered_proportion: {len(flags)} flags but {len(clusters)} cluster labels")
    pairs = [(float(f), c) for f, c in zip(flags, clusters) if f is not None and not np.isnan(float(f))]
    if not pairs:
        return Estimate(None, None, None, 0, unit, "wilson-design-effect", measure)
    x = np.asarray([f for f, _ in pairs])
    if not _binary(x):
        raise ValueError("clustered_proportion: flags must be 0 or 1")
    labels = [c for _, c in pairs]
    n, k = len(x), float(x.sum())
    p = k / n
    groups: dict[object, list[float]] = {}
    for f, c in zip(x, labels):
        groups.setdefault(c, []).append(float(f))
    g = len(groups)
    deff = 1.0
    if g > 1 and 0 < p < 1:
        resid = np.asarray([sum(v) - p * len(v) for v in groups.values()])
        v_cl = g / (g - 1) * float((resid**2).sum()) / n**2
        deff = max(1.0, v_cl / (p * (1 - p) / n))
    z = float(_st.t.ppf(1 - alpha / 2, g - 1)) if g > 1 else float(_st.norm.ppf(1 - alpha / 2))
    e = wilson(p * n / deff, n / deff, alpha=alpha, z=z, unit=unit, measure=measure)
    return Estimate(p, e.lo, e.hi, n, unit, f"wilson-design-effect({g} {cluster_unit}s, deff={deff:.2f})", measure)


# ---- means --------------------------------------------------------------------------------------
def t_interval(values: Values, *, alpha: float = 0.05, unit: str = "seed", measure: Measure = "exact") -> Estimate:
    """Mean of `values` with the Student-t interval (for few units: seeds, finetunes, questions).

    Args:
        values: one number per unit (None / NaN dropped).
        alpha: 1 - confidence level.
        unit: what one value is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` with method "t" (no interval with one value; p of mean == 0).
    """
    x = _clean(values)
    if len(x) == 0:
        return Estimate(None, None, None, 0, unit, "t", measure)
    m = float(x.mean())
    if len(x) < 2:
        return Estimate(m, None, None, 1, unit, "none (one unit)", measure)
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    if se == 0:
        return Estimate(m, m, m, len(x), unit, "t", measure, None)
    q = float(_st.t.ppf(1 - alpha / 2, len(x) - 1))
    p = float(2 * _st.t.sf(abs(m / se), len(x) - 1))
    return Estimate(m, m - q * se, m + q * se, len(x), unit, "t", measure, p)


def welch(a: Values, b: Values, *, alpha: float = 0.05, unit: str = "seed", measure: Measure = "exact") -> Estimate:
    """mean(a) - mean(b) with the Welch (unequal-variance t) interval, for two small unpaired groups.

    Args:
        a: one number per unit of group A.
        b: one number per unit of group B.
        alpha: 1 - confidence level.
        unit: what one value is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` (n = the smaller group; no interval when a group has < 2 values).
    """
    xa, xb = _clean(a), _clean(b)
    n = min(len(xa), len(xb))
    if n == 0:
        return Estimate(None, None, None, 0, unit, "welch-t", measure)
    d = float(xa.mean() - xb.mean())
    if n < 2:
        return Estimate(d, None, None, n, unit, "none (one unit)", measure)
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(d, d, d, n, unit, "welch-t", measure)
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    q = float(_st.t.ppf(1 - alpha / 2, df))
    p = float(2 * _st.t.sf(abs(d / se), df))
    return Estimate(d, d - q * se, d + q * se, n, unit, "welch-t", measure, p)


def bootstrap_ci(values: Values, stat: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = 2000,
                 alpha: float = 0.05, seed: int = 0, unit: str = "item", measure: Measure = "exact",
                 min_units: int = MIN_BOOT_UNITS) -> Estimate:
    """`stat` of the non-missing `values` with an interval over `unit`.

    The mean of 0/1 values is a proportion: Wilson. The mean of fewer than `min_units` values: a
    t-interval. Otherwise (and for any other `stat` with enough units) the percentile bootstrap.

    Args:
        values: one number per independent unit (None / NaN dropped).
        stat: the statistic (default: the mean).
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        unit: what one value is.
        measure: judged / proxy / exact.
        min_units: fewest units for a percentile bootstrap.

    Returns:
        An `Estimate`; all None without values.

    Raises:
        ValueError: a statistic other than the mean over fewer than `min_units` values (no honest
            interval exists for it here).
    """
    x = _clean(values)
    if len(x) == 0:
        return Estimate(None, None, None, 0, unit, "none", measure)
    if stat is np.mean and _binary(x):
        return wilson(float(x.sum()), len(x), alpha=alpha, unit=unit, measure=measure)
    if len(x) < min_units:
        if stat is np.mean:
            return t_interval(x, alpha=alpha, unit=unit, measure=measure)
        raise ValueError(f"bootstrap_ci: {len(x)} {unit}s < {min_units}: no percentile bootstrap over so few units")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = x[idx].mean(axis=1) if stat is np.mean else np.array([stat(x[i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(stat(x)), float(lo), float(hi), len(x), unit, "percentile-bootstrap", measure)


def paired_diff(a: Values, b: Values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, unit: str = "pair",
           measure: Measure = "exact", min_units: int = MIN_BOOT_UNITS) -> Estimate:
    """mean(a - b) over pairs (a[i], b[i]) (pairs with a missing side dropped).

    Bootstrap over pairs with >= `min_units` pairs, a paired t-interval with fewer.

    Args:
        a: first value of each pair.
        b: second value of each pair (same length).
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        unit: what one pair is.
        measure: judged / proxy / exact.
        min_units: fewest pairs for a bootstrap.

    Returns:
        An `Estimate` with method "paired-bootstrap" or "paired-t".

    Raises:
        ValueError: lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray([float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None
                    and not np.isnan(float(x)) and not np.isnan(float(y))])
    if len(d) < min_units:
        return t_interval(d, alpha=alpha, unit=unit, measure=measure).with_(
            method="paired-t" if len(d) > 1 else ("none (one unit)" if len(d) else "paired-t"))
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(d.mean()), float(lo), float(hi), len(d), unit, "paired-bootstrap", measure)


def bootstrap_diff(a: Values, b: Values, *, paired: bool = False, n_boot: int = 2000, alpha: float = 0.05,
                   seed: int = 0, unit: str = "item", measure: Measure = "exact",
                   min_units: int = MIN_BOOT_UNITS) -> Estimate:
    """mean(a) - mean(b): paired (`paired`) or two independent groups.

    Independent groups with fewer than `min_units` values on a side: the Welch interval;
    otherwise the two groups are bootstrapped independently.

    Args:
        a: numbers of the first group.
        b: numbers of the second group.
        paired: the values are paired (same length); see `paired_diff`.
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        unit: what one value is.
        measure: judged / proxy / exact.
        min_units: fewest units per group for a bootstrap.

    Returns:
        An `Estimate`.
    """
    if paired:
        return paired_diff(a, b, n_boot=n_boot, alpha=alpha, seed=seed, unit=unit, measure=measure, min_units=min_units)
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return Estimate(None, None, None, min(len(xa), len(xb)), unit, "none", measure)
    if min(len(xa), len(xb)) < min_units:
        return welch(xa, xb, alpha=alpha, unit=unit, measure=measure)
    rng = np.random.default_rng(seed)
    ba = xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))].mean(axis=1)
    bb = xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))].mean(axis=1)
    lo, hi = np.quantile(ba - bb, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(xa.mean() - xb.mean()), float(lo), float(hi), min(len(xa), len(xb)), unit,
                    "percentile-bootstrap", measure)


def cluster_bootstrap(values: Values, clusters: Sequence[object], *, n_boot: int = 2000, alpha: float = 0.05,
                      seed: int = 0, unit: str = "question", measure: Measure = "exact",
                      min_units: int = MIN_BOOT_UNITS) -> Estimate:
    """Pooled mean of `values` with a bootstrap over clusters (resample whole clusters).

    With fewer than `min_units` clusters: the pooled mean's cluster-robust (CR1) t-interval with
    (clusters - 1) degrees of freedom (never a percentile bootstrap over a handful of clusters). For 0/1
    values prefer `clustered_proportion`.

    Args:
        values: one number per item.
        clusters: the cluster of each item.
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        unit: what one cluster is (n counts clusters).
        measure: judged / proxy / exact.
        min_units: fewest clusters for a bootstrap.

    Returns:
        An `Estimate` over clusters.

    Raises:
        ValueError: lengths differ.
    """
    if len(values) != len(clusters):
        raise ValueError(f"cluster_bootstrap: {len(values)} values but {len(clusters)} cluster labels")
    groups: dict[object, list[float]] = {}
    for v, c in zip(values, clusters):
        if v is not None and not np.isnan(float(v)):
            groups.setdefault(c, []).append(float(v))
    gs = [np.asarray(g) for g in groups.values()]
    return hierarchical_ci(gs, n_boot=n_boot, alpha=alpha, seed=seed, unit=unit, measure=measure, min_units=min_units,
                           pooled=True)


def hierarchical_ci(groups: Sequence[Values], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                    unit: str = "seed", measure: Measure = "exact", min_units: int = MIN_BOOT_UNITS,
                    pooled: bool = False) -> Estimate:
    """Mean over groups of the mean over items (or the pooled mean), with an interval over groups.

    * >= `min_units` groups: the two-level bootstrap (groups, then items within each group);
    * 2 .. min_units - 1 groups: a t-interval over the group means (never a percentile bootstrap
      over a handful of values); with `pooled`, the pooled mean's cluster-robust (CR1) t-interval with
      G - 1 degrees of freedom instead, centred on the pooled point (method "t-cluster-robust");
    * one group: the interval over its items (`bootstrap_ci`: Wilson for 0/1, t for few items),
      with unit "item".

    Args:
        groups: per-item values of each group (e.g. one group per random-direction seed).
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        unit: what one group is.
        measure: judged / proxy / exact.
        min_units: fewest groups for the two-level bootstrap.
        pooled: point = the pooled item mean (else the mean of group means).

    Returns:
        An `Estimate` with n = number of groups (items when there is one group).
    """
    gs = [_clean(g) for g in groups]
    gs = [g for g in gs if len(g)]
    if not gs:
        return Estimate(None, None, None, 0, unit, "none", measure)
    if len(gs) == 1:
        return bootstrap_ci(gs[0], seed=seed, alpha=alpha, n_boot=n_boot, unit="item", measure=measure)
    means = np.asarray([g.mean() for g in gs])
    point = float(np.concatenate(gs).mean()) if pooled else float(means.mean())
    if len(gs) < min_units and pooled:
        # the pooled mean's cluster-robust (CR1) standard error, t with G - 1 df: centred on the pooled point
        # (a t-interval over the group means is for the mean of group means, another estimand when sizes differ)
        G, N = len(gs), sum(len(g) for g in gs)
        se = math.sqrt(G / (G - 1) * sum(float((g - point).sum()) ** 2 for g in gs)) / N
        q = float(_st.t.ppf(1 - alpha / 2, G - 1))
        p = float(2 * _st.t.sf(abs(point / se), G - 1)) if se > 0 else None
        return Estimate(point, point - q * se, point + q * se, G, unit, "t-cluster-robust", measure, p)
    if len(gs) < min_units:
        e = t_interval(means, alpha=alpha, unit=unit, measure=measure)
        return e.with_(value=point, method="t-over-group-means")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(gs), size=len(gs))
        res = [gs[i][rng.integers(0, len(gs[i]), size=len(gs[i]))] for i in pick]
        boots[b] = float(np.concatenate(res).mean()) if pooled else float(np.mean([r.mean() for r in res]))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi), len(gs), unit, "hierarchical-bootstrap", measure)


# ---- correlations -------------------------------------------------------------------------------
def pearson(x: Values, y: Values, *, alpha: float = 0.05, unit: str = "pair", measure: Measure = "exact") -> Estimate:
    """Pearson r with the Fisher-z interval and its two-sided p-value (units must be independent).

    Args:
        x: first variable.
        y: second variable (pairs with a missing side dropped).
        alpha: 1 - confidence level.
        unit: what one pair is.
        measure: judged / proxy / exact.

    Returns:
        An `Estimate` (no interval with < 4 pairs or a constant variable).
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and not np.isnan(float(a)) and not np.isnan(float(b))]
    n = len(pairs)
    if n < 3:
        return Estimate(None, None, None, n, unit, "fisher-z", measure)
    a, b = np.asarray(pairs).T
    if a.std() == 0 or b.std() == 0:
        return Estimate(None, None, None, n, unit, "fisher-z", measure)
    r = float(np.corrcoef(a, b)[0, 1])
    p = float(_st.pearsonr(a, b).pvalue)
    if n < 4:
        return Estimate(r, None, None, n, unit, "fisher-z", measure, p)
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), 1 / math.sqrt(n - 3)
    q = float(_st.norm.ppf(1 - alpha / 2))
    return Estimate(r, math.tanh(z - q * se), math.tanh(z + q * se), n, unit, "fisher-z", measure, p)


# ---- multiple comparisons -----------------------------------------------------------------------
def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in input order (None kept).

    Args:
        pvalues: raw p-values.

    Returns:
        Adjusted p-values: reject at level a where adjusted <= a.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order (None kept).

    Args:
        pvalues: raw p-values.

    Returns:
        Adjusted p-values (q-values).
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    order = sorted(idx, key=lambda i: pvalues[i], reverse=True)  # type: ignore[arg-type,return-value]
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, float(pvalues[i]) * m / rank)  # type: ignore[arg-type]
        out[i] = running
    return out
