"""The validation record that travels with every judged number, and the one gate.

EM rates were the first judged numbers to carry their judge's measured agreement with GPT-4o
(`evals.judge_validation`). The other judged numbers -- the persona-vector pair filter, trait scores,
the EM study's deception labels, the model-organisms direction's answer selection, the persona-features
judged screening -- carry the same record through these helpers:

* `judge_record(judge)`: the judge's saved validation status on the shared GPT-4o set
  (`validation_status`) plus the judge's name; wrappers (`probes.persona.TraitJudge`) are looked
  through to the judge they wrap. None when there is no judge (a judge-free proxy is not a judged number).
* `gate(judge, what=..., allow_unvalidated=...)`: the one gate rule (`require_validated_judge`): a judge
  without a passing record gives no judged number unless the caller allows it explicitly.
* `tag(record)`: "[unvalidated judge] " (or "") -- the prefix of every printed line and dashboard name
  that shows a judged number; `fields(record)`: the `judge_validation` / `judge_label` fields of a row.
"""

from __future__ import annotations

import os
from typing import Any

from .judge_validation import UNVALIDATED, require_validated_judge, validation_status


def inner_judge(judge: Any) -> Any:
    """The judge whose validation counts: wrappers without a fingerprint (a `TraitJudge`) are looked through.

    Args:
        judge: a judge, or a wrapper with a `.judge` attribute holding one.

    Returns:
        The innermost judge (the argument itself when it is not a wrapper).
    """
    seen = 0
    while (judge is not None and not hasattr(judge, "fingerprint") and hasattr(judge, "judge")
           and not isinstance(judge.judge, str) and seen < 8):
        judge, seen = judge.judge, seen + 1
    return judge


def judge_name(judge: Any) -> str:
    """The judge's model (or kind) as printed beside its numbers.

    Args:
        judge: a judge or wrapper.

    Returns:
        The name.
    """
    j = inner_judge(judge)
    d = j.describe() if callable(getattr(j, "describe", None)) else {}
    return str(d.get("model") or d.get("kind") or type(j).__name__)


def _named(st: dict[str, Any], judge: Any, what: str | None) -> dict[str, Any]:
    rec = {**st, "judge": judge_name(judge)}
    if what is not None:
        rec["applies_to"] = what
    if not st.get("validated"):  # "unvalidated judge: <why>" names the judge too
        rec["line"] = f"{UNVALIDATED} {rec['judge']}: {st.get('reason')}"
    return rec


def judge_record(judge: Any, *, what: str | None = None, data_dir: str | os.PathLike | None = None,
                 cache_root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The validation record of the judge behind a judged number (no gate; see `gate`).

    Args:
        judge: the judge (or a `TraitJudge`), or None for no judge.
        what: what the judge produces here (e.g. "trait scores"), recorded as `applies_to`.
        data_dir: the data directory (the papers' prompts in the fingerprint).
        cache_root: where validation records are kept (default `<cache>/judge_validation`).

    Returns:
        None without a judge, else `{"validated", "passes", "label", "line", "fingerprint", "reason",
        "judge", "applies_to"?}`; `label` is "validated judge" only when a saved shared-set validation
        clears the bar.
    """
    if judge is None:
        return None
    st = validation_status(inner_judge(judge), data_dir=data_dir, cache_root=cache_root)
    return _named(st, judge, what)


def gate(judge: Any, *, what: str, allow_unvalidated: bool = False, data_dir: str | os.PathLike | None = None,
         cache_root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The one gate rule for any judged number: refuse a judge without a passing record unless allowed.

    Args:
        judge: the judge (or a `TraitJudge`), or None (judge-free: nothing to gate, returns None).
        what: what would be reported (named in the refusal), e.g. "judged trait scores".
        allow_unvalidated: report anyway; every number is then labelled "unvalidated judge".
        data_dir: the data directory.
        cache_root: where validation records are kept.

    Returns:
        `judge_record(judge, what=what)`.

    Raises:
        evals.judge_validation.UnvalidatedJudgeError: one line naming the judge, the reason and the flag.
    """
    if judge is None:
        return None
    st = require_validated_judge(inner_judge(judge), allow_unvalidated=allow_unvalidated, what=what,
                                 data_dir=data_dir, cache_root=cache_root)
    return _named(st, judge, what)


def tag(record: dict[str, Any] | None) -> str:
    """The prefix of a printed line or dashboard name showing a judged number.

    Args:
        record: what `judge_record` / `gate` returned (None is treated as unvalidated).

    Returns:
        "" for a judge that clears the bar, else "[unvalidated judge] ".
    """
    return "" if record and record.get("passes") else f"[{UNVALIDATED}] "


def fields(record: dict[str, Any] | None) -> dict[str, Any]:
    """The row fields that carry the record: `judge_validation` (its one line) and `judge_label`.

    Args:
        record: what `judge_record` / `gate` returned (None: an unvalidated judge without a record).

    Returns:
        {"judge_validation": line, "judge_label": "validated judge" | "unvalidated judge"}.
    """
    if not record:
        return {"judge_validation": UNVALIDATED, "judge_label": UNVALIDATED}
    return {"judge_validation": record.get("line"), "judge_label": record.get("label", UNVALIDATED)}
