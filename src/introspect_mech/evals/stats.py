"""Uncertainty helpers: percentile bootstrap confidence intervals for means, rates and differences.

Every number an eval reports comes with a 95 % interval from here. Bootstraps are seeded, so a
report is reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass
class Estimate:
    """A point estimate with a percentile-bootstrap interval (`lo`, `hi`) over `n` units."""

    value: float | None
    lo: float | None
    hi: float | None
    n: int

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a (n={self.n})"
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"

    def to_dict(self) -> dict:
        """The estimate as a JSON-ready dict.

        Returns:
            `{"value", "lo", "hi", "n"}`.
        """
        return asdict(self)


def _clean(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and not np.isnan(float(v))], dtype=float)


def bootstrap_ci(
    values: Sequence[float | None] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """`stat` of the non-missing `values` with a (1 - alpha) percentile-bootstrap interval.

    Args:
        values: numbers (None / NaN are dropped).
        stat: the statistic (default: the mean).
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.

    Returns:
        An `Estimate` (point, lo, hi, n); all None without values.
    """
    x = _clean(values)
    if len(x) == 0:
        return Estimate(None, None, None, 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    if stat is np.mean:
        boots = x[idx].mean(axis=1)
    else:
        boots = np.array([stat(x[i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(stat(x)), float(lo), float(hi), len(x))


def bootstrap_diff(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    paired: bool = False,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """mean(a) - mean(b) with a bootstrap interval.

    Args:
        a: numbers of the first group.
        b: numbers of the second group.
        paired: resample pairs (same length; pairs with a missing side dropped); otherwise the two
            groups are resampled independently.
        n_boot: resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.

    Returns:
        An `Estimate`.
    """
    rng = np.random.default_rng(seed)
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired bootstrap needs equal lengths, got {len(a)} and {len(b)}")
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        if not pairs:
            return Estimate(None, None, None, 0)
        d = np.asarray([x - y for x, y in pairs], dtype=float)
        return bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return Estimate(None, None, None, min(len(xa), len(xb)))
    ba = xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))].mean(axis=1)
    bb = xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))].mean(axis=1)
    lo, hi = np.quantile(ba - bb, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(xa.mean() - xb.mean()), float(lo), float(hi), min(len(xa), len(xb)))
