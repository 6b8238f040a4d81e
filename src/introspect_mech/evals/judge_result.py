"""What a judge returns: `JudgeResult` (a 0-100 or label-mode score with its probability mass), `LabelResult`
(a categorical judge's label), `JudgeError`, and the aggregation of {answer: probability} into a score."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..scrub import scrub_message


@dataclass
class JudgeResult:
    score: float | None  # probability-weighted mean over 0..100, None when mass < min_mass or invalid
    mass: float          # probability mass on the integers 0..100 (label mode: on yes + no; nan when invalid)
    reason: str | None = None  # why an answer failed validation (None: a valid answer or a low-mass None)
    p_yes: float | None = None  # label mode: P(yes) / (P(yes) + P(no))

    @property
    def invalid(self) -> bool:
        """The judge's answer failed validation (not the same as a refusal's low mass)."""
        return self.reason is not None

    def to_dict(self) -> dict:
        return {"score": self.score, "mass": self.mass, **({"reason": self.reason} if self.reason else {}),
                **({"p_yes": self.p_yes} if self.p_yes is not None else {})}


class JudgeError(RuntimeError):
    """The judge endpoint failed after all retries, or answered something unparseable.

    The message is scrubbed of secrets (an endpoint may echo the Authorization header).
    """

    def __init__(self, msg: str = "") -> None:
        """A judge error whose message is scrubbed of secrets.

        Args:
            msg: the message.
        """
        super().__init__(scrub_message(str(msg)))


MASS_TOL = 1e-4  # rounding slack on "mass <= 1" and "logprob <= 0"


def score_from_probs(probs: dict[int, float], min_mass: float = 0.25) -> JudgeResult:
    """Aggregate {integer answer: probability} into a `JudgeResult`.

    Args:
        probs: probability of each integer answer.
        min_mass: below this total mass the score is None (refusals, code answers).

    Returns:
        The score, or None with `reason` set when a probability is not finite / negative or the mass
        exceeds 1 (an impossible answer; never a score).
    """
    bad = {k: p for k, p in probs.items() if not (math.isfinite(p) and p >= 0)}
    if bad:
        k, p = next(iter(bad.items()))
        return JudgeResult(None, float("nan"), f"invalid probability {p!r} for answer {k}")
    mass = float(sum(probs.values()))
    if mass > 1 + MASS_TOL:
        return JudgeResult(None, mass, f"probability mass on the numbers is {mass:.4g} > 1")
    if mass < min_mass or mass <= 0:
        return JudgeResult(None, mass)
    return JudgeResult(sum(k * p for k, p in probs.items()) / mass, mass)


@dataclass
class LabelResult:
    label: str | None  # the most probable allowed label; None when the labels' mass < min_mass
    probs: dict[str, float] = field(default_factory=dict)  # P(label is the whole answer), unnormalised
    mass: float = 0.0
