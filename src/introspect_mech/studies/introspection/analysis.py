"""The statistics of the injected-thought study: correlations, detection summaries with bootstrap intervals
over concept words, identification controls, and protocol C-D's self-report points and track correlations."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ...direction import Direction
from ...models import LoadedModel
from ...stats import bootstrap_ci
from .trials import rank_of
from ...activations import cache
from ...evals.metrics import paired_preference, scale_expectations


# ---- statistics --------------------------------------------------------------------------------------
def correlation(x: Sequence[float | None] | np.ndarray, y: Sequence[float | None] | np.ndarray, *,
                alpha: float = 0.05) -> dict[str, Any]:
    """Pearson r with a Fisher-z (1 - alpha) interval, and Spearman rho, over paired finite values.

    Args:
        x: first values (None / non-finite pairs are dropped).
        y: second values, paired with `x`.
        alpha: 1 - the interval's coverage.

    Returns:
        `r`, `lo`, `hi`, `spearman` and `n` (pairs used); the statistics are None with fewer than 3
        pairs or a constant input (then `note` says so); with exactly 3 pairs the interval is [-1, 1].
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    if n < 3:
        return {"r": None, "lo": None, "hi": None, "spearman": None, "n": n}
    xa, ya = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if xa.std() == 0 or ya.std() == 0:
        return {"r": None, "lo": None, "hi": None, "spearman": None, "n": n, "note": "constant input"}
    r = float(np.corrcoef(xa, ya)[0, 1])
    rx, ry = _ranks(xa), _ranks(ya)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if n > 3:
        from statistics import NormalDist

        z, se = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1.0 / math.sqrt(n - 3)
        q = NormalDist().inv_cdf(1 - alpha / 2)
        lo, hi = math.tanh(z - q * se), math.tanh(z + q * se)
    else:
        lo, hi = -1.0, 1.0
    return {"r": r, "lo": lo, "hi": hi, "spearman": rho, "n": n}


def _ranks(a: np.ndarray) -> np.ndarray:
    order = a.argsort(kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # average ties
        m = a == v
        r[m] = r[m].mean()
    return r


def _by_word_ci(rows: Sequence[dict], key: str, seed: int = 0) -> dict[str, Any]:
    """Mean of `key` with a bootstrap CI over words (trials of one word averaged first)."""
    per: dict[Any, list[float]] = {}
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            per.setdefault(r.get("word") or r.get("trial"), []).append(float(v))
    return bootstrap_ci([float(np.mean(v)) for v in per.values()], seed=seed).to_dict()


def summarize_detection(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per (variant, layer, strength, condition): detection proxies and identification.

    Args:
        rows: `DetectionScorer.score` rows (rows with a `rank` get a `top1` field added in place).
        seed: bootstrap seed.

    Returns:
        Rows with `n`, `p_yes` and `claims` (bootstrap CIs over words; over trials for the
        no-injection control) and, where ranks exist, `top1`, `mean_rank`, `n_candidates`, `chance_top1`.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r.get("layer"), r.get("strength"), r["condition"]), []).append(r)
    out = []
    for (variant, layer, strength, cond), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        s = {"variant": variant, "layer": layer, "strength": strength, "condition": cond, "n": len(rs),
             "p_yes": _by_word_ci(rs, "p_yes", seed), "claims": _by_word_ci(rs, "claims", seed)}
        if cond == "none":  # control trials: units are trial numbers
            s["p_yes"] = bootstrap_ci([r["p_yes"] for r in rs], seed=seed).to_dict()
            s["claims"] = bootstrap_ci([r["claims"] for r in rs], seed=seed).to_dict()
        if any("rank" in r for r in rs):
            k = len(next(iter(rs))["word_logprobs"])
            for r in rs:
                r["top1"] = float(r["rank"] == 1) if "rank" in r else None
            s.update(top1=_by_word_ci(rs, "top1", seed), mean_rank=_by_word_ci(rs, "rank", seed), n_candidates=k,
                     chance_top1=1.0 / k)
        out.append(s)
    return out


def identification_controls(rows: Sequence[dict[str, Any]], control_rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Wrong-concept and no-injection baselines for identification at one (variant, layer, strength).

    * matched: the injected word is ranked first;
    * wrong_concept: with word i injected, word i+1 (cyclically) is ranked first -- how often the
      ranking names a word that was not injected;
    * no_injection: word w is ranked first on the control trials, averaged over w (prior).
    Also the matched-minus-no-injection shift of log P(injected word) (paired over trials).

    Args:
        rows: the injected trials of one cell (`DetectionScorer.score` rows with a `word`).
        control_rows: the no-injection trials of the same variant.
        seed: bootstrap seed.

    Returns:
        `matched_top1`, `wrong_concept_top1`, `no_injection_top1`, `logprob_shift` (bootstrap CIs
        over words) and `chance` (1 / number of candidates).
    """
    cand = list(next(iter(rows))["word_logprobs"])
    matched, wrong, shift = [], [], []
    ctrl = {r["trial"]: r for r in control_rows}
    for r in rows:
        lp = [r["word_logprobs"][w] for w in cand]
        i = cand.index(r["word"])
        j = (i + 1) % len(cand)
        matched.append({"word": r["word"], "v": float(rank_of(lp, i) == 1)})
        wrong.append({"word": r["word"], "v": float(rank_of(lp, j) == 1)})
        c = ctrl.get(r["trial"])
        if c is not None:
            shift.append({"word": r["word"], "v": r["word_logprobs"][r["word"]] - c["word_logprobs"][r["word"]]})
    prior = []
    for c in control_rows:
        lp = [c["word_logprobs"][w] for w in cand]
        prior += [{"word": w, "v": float(rank_of(lp, i) == 1)} for i, w in enumerate(cand)]
    return {"matched_top1": _by_word_ci(matched, "v", seed), "wrong_concept_top1": _by_word_ci(wrong, "v", seed),
            "no_injection_top1": _by_word_ci(prior, "v", seed), "logprob_shift": _by_word_ci(shift, "v", seed),
            "chance": 1.0 / len(cand)}


# ---- protocol C: self-report vs internal state ------------------------------------------------------
def self_report_point(model: LoadedModel, direction: Direction, *, read_layer: int, questions: Sequence[str],
                      items: Sequence[dict], batch_size: int = 8) -> dict[str, Any]:
    """Self-rated alignment (exact expectation + mass), projection of the self-report prompts' last
    token on `direction` at `read_layer`, and behaviour (paired preference, > 0 = prefers misaligned).

    Args:
        model: a `LoadedModel` (steered or finetuned as the point requires).
        direction: the persona direction (must cover `read_layer`).
        read_layer: the block whose last-prompt-token activation is projected.
        questions: the self-rating questions (0-100 alignment scale).
        items: paired-preference EM items (`evals.metrics.load_em_pairs`).
        batch_size: prompts per forward pass.

    Returns:
        `self_report` (mean expected rating; None if no question had one), `self_report_per_question`,
        `mass`, `projection` (mean), `projection_per_question`, `behaviour` (mean per-token log-prob of
        the misaligned minus the aligned answer) and `behaviour_misaligned_frac`.
    """

    sr = scale_expectations(model, list(questions))
    acts = cache(model, [[{"role": "user", "content": q}] for q in questions], layers=[read_layer],
                 positions="last_prompt", batch_size=batch_size, progress=False)[:, 0].float()
    proj = (acts @ direction.at(read_layer)).tolist()
    pp = paired_preference(model, list(items), batch_size=batch_size)
    exp = [r.expected for r in sr]
    return {"self_report": float(np.mean([e for e in exp if e is not None])) if any(e is not None for e in exp) else None,
            "self_report_per_question": exp, "mass": float(np.mean([r.mass for r in sr])),
            "mass_per_question": [float(r.mass) for r in sr],
            "projection": float(np.mean(proj)), "projection_per_question": proj,
            "behaviour": pp["mean_diff"]["value"], "behaviour_misaligned_frac": pp["frac_prefers_misaligned"]["value"]}


MIN_SELF_REPORT_MASS = 0.25  # below this mass on the 0-100 numbers a self-report abstains (as the judges do)
N_TRACK_TESTS = 4  # per-question tests of stages C-D (alignment / risk x steering / finetune): the family corrected for
NO_CI = ("descriptive: no interval (the points are designed steering strengths or consecutive checkpoints, "
         "not independent samples)")


def _gated(p: dict[str, Any], min_mass: float) -> tuple[float | None, list[float | None]]:
    """A point's self-report and per-question self-reports, None where the mass on numbers < min_mass."""
    per = list(p.get("self_report_per_question") or [])
    masses = p.get("mass_per_question") or [p.get("mass")] * len(per)
    per = [e if (e is not None and m is not None and m >= min_mass) else None for e, m in zip(per, masses)]
    ok = [e for e in per if e is not None]
    point = float(np.mean(ok)) if ok else None
    if not per and p.get("mass") is not None and p["mass"] >= min_mass:
        point = p.get("self_report")
    return point, per


def _within_point_permutation_p(points: Sequence[Sequence[tuple[float | None, float | None]]], n_perm: int,
                                seed: int) -> float | None:
    """Two-sided p of the pooled Pearson r over (point, question) pairs, permuting the projections
    across questions WITHIN each point (the questions are exchangeable there; the points are not)."""
    groups = [[(x, y) for x, y in g if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
              for g in points]
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        return None
    xs = np.concatenate([[x for x, _ in g] for g in groups])
    ys = [np.asarray([y for _, y in g]) for g in groups]
    if xs.std() == 0 or np.concatenate(ys).std() == 0:
        return None
    r0 = abs(float(np.corrcoef(xs, np.concatenate(ys))[0, 1]))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        yp = np.concatenate([rng.permutation(y) for y in ys])
        hits += abs(float(np.corrcoef(xs, yp)[0, 1])) >= r0 - 1e-12
    return (hits + 1) / (n_perm + 1)


def track_correlations(points: Sequence[dict[str, Any]], *, min_mass: float = MIN_SELF_REPORT_MASS,
                       family: int = N_TRACK_TESTS, n_perm: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Correlations across points (steering strengths or checkpoints), and across (point, question).

    A self-report counts only where the model put >= `min_mass` of its probability on the numbers
    (below it the expectation is renormalised from a sliver of the distribution; the judges abstain
    there too); `n_low_mass` counts the points dropped. The point-level r's are descriptive: the
    points are designed strengths or autocorrelated checkpoints, so a Fisher-z interval (which
    assumes independent samples) does not apply and none is given. The per-question correlation has
    a permutation p-value (projections permuted across questions within each point) and
    `p_adjusted`, Bonferroni over the study's `family` such tests.

    Args:
        points: `self_report_point` / `risk_report_point` rows.
        min_mass: least mass on the 0-100 numbers for a self-report to count.
        family: number of per-question tests in the study (the multiple-comparison family).
        n_perm: permutations of the per-question test.
        seed: permutation seed.

    Returns:
        {"self_report~projection", "self_report~behaviour", "projection~behaviour": {"r", "spearman",
        "n", "lo": None, "hi": None, "method"}, "self_report~projection (per question)": the same plus
        "p", "p_adjusted", "correction", and "n_low_mass", "min_mass"}.
    """
    gated = [_gated(p, min_mass) for p in points]
    sr = [g[0] for g in gated]
    n_low = sum(1 for p in points if p.get("mass") is not None and p["mass"] < min_mass)

    def desc(x, y) -> dict[str, Any]:
        c = correlation(x, y)
        return {**c, "lo": None, "hi": None, "method": NO_CI}

    out: dict[str, Any] = {"self_report~projection": desc(sr, [p["projection"] for p in points]),
                           "self_report~behaviour": desc(sr, [p["behaviour"] for p in points]),
                           "projection~behaviour": desc([p["projection"] for p in points],
                                                        [p["behaviour"] for p in points])}
    xs, ys, by_point = [], [], []
    for (_, per), p in zip(gated, points):
        proj = list(p["projection_per_question"])
        xs += per
        ys += proj
        by_point.append(list(zip(per, proj)))
    pq = desc(xs, ys)
    pv = _within_point_permutation_p(by_point, n_perm, seed) if pq["r"] is not None else None
    pq.update(method="descriptive r; p by permuting questions within each point", p=pv,
              p_adjusted=None if pv is None else min(1.0, pv * family), correction=f"Bonferroni over {family} tests")
    out["self_report~projection (per question)"] = pq
    out["n_low_mass"], out["min_mass"] = n_low, min_mass
    return out


def _key_track(key: Callable[..., None], src: str, corr: dict[str, Any]) -> None:
    """Summary lines of one `track_correlations` result: descriptive r's (no CI), the per-question
    test with its corrected p, and how many points abstained for low mass."""
    mass = f"{corr['n_low_mass']} points with < {corr['min_mass']:.2f} mass on the numbers dropped"
    for pair in ("self_report~projection", "self_report~behaviour"):
        c = corr[pair]
        key(f"r({pair.replace('~', ', ')}), {src}", None if c["r"] is None else
            {"value": c["r"], "lo": None, "hi": None, "n": c["n"]}, f"Pearson, {NO_CI}; {mass}")
    c = corr["self_report~projection (per question)"]
    if c["r"] is not None:
        key(f"r(self-report, projection) per question, {src}",
            {"value": c["r"], "lo": None, "hi": None, "n": c["n"]},
            f"p = {c['p']}, adjusted {c['p_adjusted']} ({c['correction']}; permutation within points)")
