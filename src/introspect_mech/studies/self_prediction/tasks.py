"""Self-prediction ("Looking Inward", Binder et al.): object-level vs hypothetical answers.

There is no fixed label: the ground truth for a hypothetical question ("what is the second
character of the answer you would give?") is the property extracted from the evaluated model's
own object-level answer at temperature 0. This module

* loads the released task files (`{task}_{property}.jsonl.gz` under introspection/train|test),
* gets object-level and hypothetical answers greedily (`sample(temperature=0)`, hooks apply),
* scores hypothetical accuracy against the model's own (or another model's) object-level answers
  with compliance filtering and the mode baseline (always guessing the most common value),
* builds self-prediction training data from a model's own answers and cross-prediction data
  (model B trained on model A's answers),
* compares self vs cross accuracy with bootstrap CIs, and runs the behaviour-shift check.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ...evals.metrics import choice_probabilities
from ...evals.sampling import sample
from ...models import LoadedModel
from ...paths import data_dir as _dd
from ...stats import bootstrap_ci, bootstrap_diff, cluster_bootstrap
from .properties import PROPERTIES, extract_property, parse_prediction


def task_files(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """{task name: file} for every released task file (e.g. "animals_long_first_character").

    Args:
        data_dir: the data directory.

    Returns:
        `{task name: path}`.
    """

    root = Path(_dd(data_dir)) / "introspection"
    out = {}
    for split in ("train", "test"):
        for f in sorted((root / split).glob("*.jsonl*")):
            out[f.name.split(".jsonl")[0]] = f
    if not out:
        raise FileNotFoundError(f"no introspection task files under {root}")
    return out


def load_task(name: str, n: int | None = None, data_dir: str | os.PathLike | None = None, *,
              indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows of a task file (the first `n`, or the rows at `indices` in that order), each with an
    `item_id` (`name/line index`). Only the selected lines are parsed.

    Args:
        name: a task name (`task_files()`).
        n: keep the first n rows.
        data_dir: the data directory.
        indices: line indices to load instead (in this order).

    Returns:
        The rows.
    """
    files = task_files(data_dir)
    if name not in files:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(files)}")
    f = files[name]
    lines = _task_lines(f)
    if indices is None:
        pick = [i for i, line in enumerate(lines) if line.strip()]
        pick = pick if n is None else pick[:n]
    else:
        pick = list(indices)
        bad = [i for i in pick if not 0 <= i < len(lines)]
        if bad:
            raise IndexError(f"{f}: line indices {bad[:3]} out of range (file has {len(lines)} lines)")
    rows = []
    for i in pick:
        try:
            r = json.loads(lines[i])
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}:{i + 1}: invalid JSON: {e.msg}") from None
        for k in ("object_level_prompt", "hypothetical_prompt", "behavioral_property"):
            if k not in r:
                raise ValueError(f"{f}:{i + 1}: field {k!r} missing")
        r["item_id"] = f"{name}/{i}"
        rows.append(r)
    return rows


def task_size(name: str, data_dir: str | os.PathLike | None = None) -> int:
    """Number of lines (rows) of a task file.

    Args:
        name: a task name (a key of `task_files`).
        data_dir: the data directory (None = the default).

    Returns:
        The row count (trailing blank lines not counted).

    Raises:
        KeyError: no task file of that name.
        FileNotFoundError: no task files at all under `<data_dir>/introspection`.
    """
    return len(_task_lines(task_files(data_dir)[name]))


_LINES: dict[tuple[str, float], list[str]] = {}


def _task_lines(f: Path) -> list[str]:
    key = (str(f), f.stat().st_mtime)
    if key not in _LINES:
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")  # not splitlines(): rows hold U+2028 inside strings
        while lines and not lines[-1].strip():
            lines.pop()
        if len(_LINES) > 64:
            _LINES.clear()
        _LINES[key] = lines
    return _LINES[key]


def object_key(row: dict) -> str:
    """The key of a row's object-level prompt (rows of one question share it across properties).

    Args:
        row: a task row (`object_level_prompt`: its messages).

    Returns:
        The prompt as canonical JSON (sorted keys).
    """
    return json.dumps(row["object_level_prompt"], sort_keys=True)



def task_property(name: str) -> tuple[str, str]:
    """Split a release file name ("animals_long_first_character") into (dataset, property).

    Args:
        name: a task name ending in "_<property>" (the longest matching `PROPERTIES` entry wins).

    Returns:
        (dataset, property), e.g. ("animals_long", "first_character").

    Raises:
        ValueError: the name does not end with a known behavioral_property.
    """

    for prop in sorted(PROPERTIES, key=len, reverse=True):
        if name.endswith("_" + prop):
            return name[: -len(prop) - 1], prop
    raise ValueError(f"task file {name!r} does not end with a known behavioral_property")


def _greedy_answers(model: LoadedModel, prompts: list[dict[str, Any]], *, max_new_tokens: int, batch_size: int,
                    out: str | os.PathLike | None, progress: bool) -> dict[str, str]:
    """{prompt id: greedy answer} of `{"id", "messages"}` prompts: one temperature-0 sample each."""
    got = sample(model, prompts, n=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=batch_size, out=out,
                 progress=progress)
    return {g["prompt_id"]: g["response"] for g in got}


def object_level_answers(model: LoadedModel, rows: Sequence[dict], *, max_new_tokens: int = 32,
                         batch_size: int = 16, out: str | os.PathLike | None = None,
                         progress: bool = False) -> dict[str, str]:
    """Greedy object-level answer per distinct object prompt; {object key: answer}.

    Args:
        model: the model.
        rows: task rows.
        max_new_tokens: answer length.
        batch_size: rows per generate call.
        out: a JSONL file for the samples (resumable; its ids come from the prompt's content, so one
            file can be shared by all tasks of a dataset).
        progress: show a progress bar.

    Returns:
        `{object key: answer}`.
    """
    uniq: dict[str, list] = {}
    for r in rows:
        uniq.setdefault(object_key(r), r["object_level_prompt"])
    ids = {k: "obj-" + hashlib.sha256(k.encode()).hexdigest()[:16] for k in uniq}
    got = _greedy_answers(model, [{"id": ids[k], "messages": m} for k, m in uniq.items()],
                          max_new_tokens=max_new_tokens, batch_size=batch_size, out=out, progress=progress)
    return {k: got[ids[k]] for k in uniq}


def hypothetical_answers(model: LoadedModel, rows: Sequence[dict], *, max_new_tokens: int = 8,
                         batch_size: int = 16, out: str | os.PathLike | None = None,
                         progress: bool = False) -> dict[str, str]:
    """Greedy answer to each row's hypothetical prompt; {item_id: answer}.

    Args:
        model: the model.
        rows: task rows.
        max_new_tokens: answer length.
        batch_size: rows per generate call.
        out: a JSONL file for the samples (resumable).
        progress: show a progress bar.

    Returns:
        `{item_id: answer}`.
    """
    return _greedy_answers(model, [{"id": r["item_id"], "messages": r["hypothetical_prompt"]} for r in rows],
                           max_new_tokens=max_new_tokens, batch_size=batch_size, out=out, progress=progress)


BINARY_PROPERTIES = ("starts_with_vowel", "among_a_or_c", "among_b_or_d", "ethical_stance")
CHARACTER_PROPERTIES = ("first_character", "second_character", "third_character")


def constrained_predictions(model: LoadedModel, rows: Sequence[dict], *, batch_size: int = 8) -> dict[str, str]:
    """Hypothetical answers read from the next-token distribution instead of free generation: the
    most probable of "true"/"false" (binary properties) or of the letters a-z (upper and lower case
    merged; character properties). A judge-free readout for small models whose free-form answers
    are rarely compliant; word and identity properties are not covered (left out of the result).

    Args:
        model: the model.
        rows: task rows.
        batch_size: prompts per forward.

    Returns:
        `{item_id: predicted value}` for the covered properties.
    """

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    out: dict[str, str] = {}
    binary = [r for r in rows if r["behavioral_property"] in BINARY_PROPERTIES]
    chars = [r for r in rows if r["behavioral_property"] in CHARACTER_PROPERTIES]
    if binary:
        res = choice_probabilities(model, [r["hypothetical_prompt"] for r in binary], ["true", "false", "True", "False"],
                                   batch_size=batch_size)
        for r, x in zip(binary, res):
            p = x["probs"]
            out[r["item_id"]] = "true" if p["true"] + p["True"] >= p["false"] + p["False"] else "false"
    if chars:
        opts = letters + [c.upper() for c in letters]
        res = choice_probabilities(model, [r["hypothetical_prompt"] for r in chars], opts, batch_size=batch_size)
        for r, x in zip(chars, res):
            p = x["probs"]
            out[r["item_id"]] = max(letters, key=lambda c: p[c] + p[c.upper()])
    return out


CELL_UNIT = "task x property cell"


def _task(row: dict[str, Any]) -> str:
    """The task (dataset) of a task row: its `original_dataset`, else the first part of its item id."""
    return row.get("original_dataset") or row["item_id"].split("/")[0]


def _cell(scored_row: dict[str, Any]) -> str:
    """The task x property cell of a scored item ("animals_long/first_character")."""
    return f"{scored_row['task']}/{scored_row['property']}"


def _modes(counts: Counter) -> list[str]:
    """The most common values (all of them when tied), sorted; [] without counts."""
    best = max((c for c in counts.values()), default=0)
    return [] if best <= 0 else sorted(v for v, c in counts.items() if c == best)


def _mode(counts: Counter) -> str | None:
    m = _modes(counts)
    return m[0] if m else None


def score_predictions(rows: Sequence[dict], object_answers: dict[str, str], predictions: dict[str, str],
                      *, seed: int = 0) -> dict[str, Any]:
    """Hypothetical accuracy against the properties of `object_answers` (whose model they are
    decides self vs cross prediction), with compliance filtering and the mode baseline.

    The mode baseline predicts, for every item of a task x property cell (e.g. animals_long /
    first_character), the most common value of `object_answers` among the OTHER scored items of
    that cell (leave-one-out; with no other item in the cell, the property's other items in every
    cell): what a predictor that knows only the target model's answer distribution gets, measured
    out of sample (an in-sample mode is 1.0 at one item per cell whatever the answers).

    Args:
        rows: introspection rows (`load_task`), any mix of tasks and properties.
        object_answers: {object key: object-level answer} of the TARGET model (the model whose
            behaviour is predicted; for self-prediction the scored model itself, after its finetune).
        predictions: {item_id: hypothetical answer} of the predicting model.
        seed: bootstrap seed.

    Returns:
        Counts (scored / non-compliant), accuracy, mode baseline and their paired difference with
        95 % bootstrap CIs over items, the accuracy over task x property cells (`accuracy_by_cell`, a cluster
        bootstrap), per property and per task x property, and the scored rows.
    """
    scored = []
    n_obj_bad = n_hyp_bad = 0
    for r in rows:
        prop = r["behavioral_property"]
        target = extract_property(object_answers.get(object_key(r)), prop, r.get("option_matching_ethical_stance"))
        pred = parse_prediction(predictions.get(r["item_id"]), prop)
        if target is None:
            n_obj_bad += 1
            continue
        if pred is None:
            n_hyp_bad += 1
            continue
        scored.append({"item_id": r["item_id"], "task": _task(r),
                       "property": prop, "target": target, "prediction": pred, "correct": float(pred == target)})
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for s in scored:
        by_cell.setdefault((s["task"], s["property"]), []).append(s)
    per_prop: dict[str, dict] = {}
    per_task: dict[str, dict] = {}
    by_prop: dict[str, Counter] = {}
    for s in scored:
        by_prop.setdefault(s["property"], Counter())[s["target"]] += 1
    for (task, prop), ss in sorted(by_cell.items()):
        # the mode of the target model's own object-level values in this task x property cell, out of
        # sample: each item is scored against the mode of the OTHER items of its cell (leave-one-out;
        # an in-sample mode reads 1.0 at one item per cell whatever the answers); a cell with one item
        # uses the mode of the property's other items in the other cells
        cell = Counter(s["target"] for s in ss)
        for s in ss:
            rest = cell.copy()
            rest[s["target"]] -= 1
            if sum(rest.values()) == 0:
                rest = by_prop[prop].copy()
                rest[s["target"]] -= 1
            ties = _modes(rest)  # a tie scores the expected hit of a uniform pick among the tied values
            s["mode"] = ties[0] if ties else None
            s["mode_correct"] = float(s["target"] in ties) / len(ties) if ties else None
        per_task[f"{task}/{prop}"] = {"accuracy": bootstrap_ci([s["correct"] for s in ss], seed=seed).to_dict(),
                                      "mode_baseline": bootstrap_ci([s["mode_correct"] for s in ss], seed=seed).to_dict(),
                                      "mode": _mode(cell)}
    for prop in sorted({p for _, p in by_cell}):
        ss = [s for s in scored if s["property"] == prop]
        per_prop[prop] = {"accuracy": bootstrap_ci([s["correct"] for s in ss], seed=seed).to_dict(),
                          "mode_baseline": bootstrap_ci([s["mode_correct"] for s in ss], seed=seed).to_dict()}
    mode_hits = [s["mode_correct"] for s in scored]
    return {
        "n_items": len(rows), "n_scored": len(scored),
        "n_object_noncompliant": n_obj_bad, "n_hypothetical_noncompliant": n_hyp_bad,
        "accuracy": bootstrap_ci([s["correct"] for s in scored], seed=seed).to_dict(),
        # the items of a task x property cell share a template: the demanding unit is the cell
        "accuracy_by_cell": cluster_bootstrap([s["correct"] for s in scored], [_cell(s) for s in scored],
                                              unit=CELL_UNIT, seed=seed).to_dict(),
        "mode_baseline": bootstrap_ci(mode_hits, seed=seed).to_dict(),
        "accuracy_minus_mode": bootstrap_diff([s["correct"] for s in scored], [s["mode_correct"] for s in scored],
                                              paired=True, seed=seed, unit="item").to_dict(),
        "per_property": per_prop,
        "per_task_property": per_task,
        "rows": scored,
    }


def prediction_training_data(rows: Sequence[dict], object_answers: dict[str, str], *,
                             source: str = "") -> list[dict[str, Any]]:
    """Training records {"messages": hypothetical prompt + assistant: property value} for every row
    whose object-level answer is compliant and whose property value is not blank (a whitespace
    character cannot be an assistant turn; such rows are left out of training, not of scoring). The property values come from `object_answers`, so the
    same builder makes self-prediction data (a model's own answers) and cross-prediction data
    (model A's answers, to finetune model B). Note: the released files carry a canary string; never
    train a model you release on them.

    Args:
        rows: task rows.
        object_answers: `{object key: answer}` the labels come from.
        source: recorded in each record (whose answers they are).

    Returns:
        Chat records.
    """
    out = []
    for r in rows:
        value = extract_property(object_answers.get(object_key(r)), r["behavioral_property"],
                                 r.get("option_matching_ethical_stance"))
        if value is None or not value.strip():  # e.g. third_character of "E. E. Waddell" is a space: no assistant turn
            continue
        out.append({"messages": list(r["hypothetical_prompt"]) + [{"role": "assistant", "content": value}],
                    "item_id": r["item_id"], "property": r["behavioral_property"], "label_source": source})
    return out


def object_level_training_data(rows: Sequence[dict], target_answers: dict[str, str], *,
                               source: str = "") -> list[dict[str, Any]]:
    """Object-level training records {"messages": object-level prompt + assistant: target answer},
    one per distinct object prompt that has a target. This is the behaviour-shift finetune: it
    changes what the model answers to the object-level question and never shows a hypothetical.

    Args:
        rows: task rows (several rows may share one object prompt; the first one is kept).
        target_answers: `{object key: answer}` to train towards; prompts without a non-blank target
            are skipped.
        source: recorded in each record as `label_source` (whose answers they are).

    Returns:
        Chat records with `messages`, `item_id` and `label_source`.
    """
    out, seen = [], set()
    for r in rows:
        k = object_key(r)
        ans = target_answers.get(k)
        if k in seen or ans is None or not ans.strip():
            continue
        seen.add(k)
        out.append({"messages": list(r["object_level_prompt"]) + [{"role": "assistant", "content": ans}],
                    "item_id": r["item_id"], "label_source": source})
    return out


def self_prediction_data(model_answers: dict[str, str], rows: Sequence[dict], model_name: str = "self") -> list[dict]:
    """Self-prediction training data: labels from the model's own object-level answers.

    Args:
        model_answers: the model's `{object key: answer}`.
        rows: task rows.
        model_name: recorded as the source.

    Returns:
        Chat records.
    """
    return prediction_training_data(rows, model_answers, source=model_name)


def cross_prediction_data(other_answers: dict[str, str], rows: Sequence[dict], other_name: str) -> list[dict]:
    """Cross-prediction training data: labels from another model's (A's) object-level answers, used
    to train model B to predict A.

    Args:
        other_answers: model A's `{object key: answer}`.
        rows: task rows.
        other_name: recorded as the source.

    Returns:
        Chat records.
    """
    return prediction_training_data(rows, other_answers, source=other_name)


def compare_self_cross(self_scored: dict[str, Any], cross_scored: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Self minus cross accuracy on held-out items (paired on items scored by both) with a CI.

    `self_scored`: `score_predictions` of model A's hypotheticals against A's object answers;
    `cross_scored`: of model B's hypotheticals (B trained on A's labels) against A's answers. The
    paper's evidence for introspection is self > cross.

    Args:
        self_scored: `score_predictions` of model A against A's object answers.
        cross_scored: `score_predictions` of model B (trained on A's labels) against A's answers.
        seed: bootstrap seed.

    Returns:
        The paired self - cross accuracy difference with its CI over items (`self_minus_cross`) and over task x
        property cells (`self_minus_cross_by_cell`, a cluster bootstrap: the items of a cell share a template), and
        counts.
    """
    a = {r["item_id"]: r["correct"] for r in self_scored["rows"]}
    b = {r["item_id"]: r["correct"] for r in cross_scored["rows"]}
    common = sorted(set(a) & set(b))
    cells = {r["item_id"]: _cell(r) for r in self_scored["rows"]}
    return {
        "self_accuracy": self_scored["accuracy"], "cross_accuracy": cross_scored["accuracy"],
        "n_common": len(common),
        "self_minus_cross": bootstrap_diff([a[i] for i in common], [b[i] for i in common], paired=True, seed=seed).to_dict(),
        # paired on items, resampling whole task x property cells (their items share a template)
        "self_minus_cross_by_cell": cluster_bootstrap([a[i] - b[i] for i in common], [cells[i] for i in common],
                                                      unit=CELL_UNIT, seed=seed).to_dict(),
    }


def behaviour_shift(rows: Sequence[dict], old_answers: dict[str, str], new_answers: dict[str, str],
                    new_predictions: dict[str, str], *, seed: int = 0) -> dict[str, Any]:
    """After further finetuning changed the model's behaviour (old -> new object-level answers), does
    the new model's hypothetical answer track its new or its old behaviour? Only items whose
    property value changed are informative.

    Args:
        rows: task rows.
        old_answers: object-level answers before the further finetune.
        new_answers: object-level answers after it.
        new_predictions: the new model's hypothetical answers.
        seed: bootstrap seed.

    Returns:
        How often the prediction matches the new vs the old behaviour on the changed items, with CIs over items, and
        their difference over task x property cells (`new_minus_old_by_cell`, a cluster bootstrap).
    """
    out = []
    for r in rows:
        prop, opt = r["behavioral_property"], r.get("option_matching_ethical_stance")
        old = extract_property(old_answers.get(object_key(r)), prop, opt)
        new = extract_property(new_answers.get(object_key(r)), prop, opt)
        pred = parse_prediction(new_predictions.get(r["item_id"]), prop)
        if old is None or new is None or pred is None or old == new:
            continue
        out.append({"item_id": r["item_id"], "task": _task(r),
                    "property": prop, "old": old, "new": new, "prediction": pred,
                    "matches_new": float(pred == new), "matches_old": float(pred == old)})
    return {
        "n_changed": len(out), "n_items": len(rows),
        "matches_new": bootstrap_ci([x["matches_new"] for x in out], seed=seed).to_dict(),
        "matches_old": bootstrap_ci([x["matches_old"] for x in out], seed=seed).to_dict(),
        "new_minus_old": bootstrap_diff([x["matches_new"] for x in out], [x["matches_old"] for x in out],
                                        paired=True, seed=seed).to_dict(),
        # the changed items of a task x property cell share a template: resample whole cells
        "new_minus_old_by_cell": cluster_bootstrap([x["matches_new"] - x["matches_old"] for x in out],
                                                   [_cell(x) for x in out], unit=CELL_UNIT, seed=seed).to_dict(),
        "rows": out,
    }
