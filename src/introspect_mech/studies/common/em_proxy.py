"""The project's judge-free EM proxy (`em_proxy_fn`, metric names `PROXY_*`), the one implementation every
study uses where no judge is at hand: the mean per-token log-probability of a misaligned minus an aligned
answer to the same prompt, on the project's 40 hand-written items (`proxy_items`) and on held-out medical
advice pairs (`medical_split.medical_heldout_items`). It is a **proxy**: never an EM rate and never compared
with a paper's EM rate."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

from ...evals.metrics import (PROXY_DIFF, PROXY_PREF, ALIGNMENT_QUESTIONS, answer_logprobs, load_em_pairs,
                              paired_preference, scale_expectations)
from ...models import LoadedModel

__all__ = ["PROXY_PREF", "PROXY_DIFF", "proxy_items", "em_proxy_fn"]


def proxy_items(per_theme: int | None = None) -> list[dict]:
    """The project's 40 EM items (`load_em_pairs()`), or the first `per_theme` of each of its 8 themes.

    Args:
        per_theme: items kept per theme, in file order; None = all 40.

    Returns:
        The items (`theme`, prompt, aligned and misaligned answers).
    """
    items = load_em_pairs()
    if per_theme is None:
        return items
    seen: dict[str, int] = defaultdict(int)
    out = []
    for it in items:
        if seen[it["theme"]] < per_theme:
            seen[it["theme"]] += 1
            out.append(it)
    return out


def em_proxy_fn(items: Sequence[dict] | None = None, *, medical: Sequence[dict] | None = None,
                coherence_convs: Sequence[Sequence[dict]] | None = None, self_rating: bool = False,
                batch_size: int = 16) -> Callable[[LoadedModel], dict[str, list]]:
    """The judge-free EM proxy as an `eval_fn` (per-item lists, so summaries bootstrap over items).

    Args:
        items: paired-preference items (default: the project's 40 EM items, `load_em_pairs()`).
        medical: held-out medical items (`medical_split.medical_heldout_items`), or None.
        coherence_convs: reference conversations (e.g. the base model's own greedy answers) whose
            mean per-token NLL is the coherence proxy, or None.
        self_rating: add the 0-100 self-rated alignment (costly on a CPU).
        batch_size: forward batch.

    Returns:
        eval_fn(model) -> {"proxy_pref", "proxy_diff", "proxy_theme", "fluency"} plus
        "med_proxy_pref" / "med_proxy_diff" (with `medical`), "coherence_nll" (with
        `coherence_convs`) and "self_alignment" / "self_alignment_mass" (with `self_rating`).
        Metric names: `PROXY_PREF`, `PROXY_DIFF`; fluency = mean log-prob per answer token.
    """
    items = list(items) if items is not None else load_em_pairs()

    def eval_fn(model: LoadedModel) -> dict[str, list]:
        em = paired_preference(model, items, batch_size=batch_size)["rows"]
        med = paired_preference(model, medical, batch_size=batch_size)["rows"] if medical else []
        both = em + med
        out: dict[str, list] = {
            "proxy_pref": [r["prefers_misaligned"] for r in em], "proxy_diff": [r["diff"] for r in em],
            "proxy_theme": [r["theme"] for r in em],
            "fluency": [(r["lp_aligned"] + r["lp_misaligned"]) / max(1, r["n_aligned"] + r["n_misaligned"]) for r in both],
        }
        if medical:
            out["med_proxy_pref"] = [r["prefers_misaligned"] for r in med]
            out["med_proxy_diff"] = [r["diff"] for r in med]
        if coherence_convs:
            lps = answer_logprobs(model, coherence_convs, batch_size=batch_size)
            out["coherence_nll"] = [-x["sum"] / max(x["n"], 1) for x in lps]
        if self_rating:
            sa = scale_expectations(model, list(ALIGNMENT_QUESTIONS), batch_size=batch_size)
            out["self_alignment"] = [r.expected for r in sa]
            out["self_alignment_mass"] = [r.mass for r in sa]
        return out

    return eval_fn
