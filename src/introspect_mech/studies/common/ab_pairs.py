"""The A/B pairs of "Tell me about yourself" (Betley, Bao et al. 2025): risky/safe lotteries, myopic/non-myopic,
max/min apples, their held-out split and the behaviour measured on them.

Shared by two studies (`self_awareness`, and `introspection`'s risk track), so it lives in `studies/common`.
`PAIRS`: every pair's two files ask the same questions with opposite letters. `split_of(question)` puts a
question in "test" when sha256(question) mod 4 == 0 (about 25 %); `ab_items(pair, split)` gives the items of
a split, `pair_records(pair, side, split)` the finetuning rows of a split (only "train" is ever trained on);
`choice_behaviour` the mean P(target letter) (normalised over A/B) with the mass on A/B.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...evals.metrics import choice_probabilities
from ...models import LoadedModel
from ...stats import bootstrap_ci
from ...data.records import DataError
from ...data.registry import locate
from ...paths import data_dir as _dd


@dataclass(frozen=True)
class Pair:
    """Two finetuning files with the same questions and opposite letters; `pos` is the side whose
    letter is the measured behaviour (P(pos letter))."""

    name: str
    pos: str      # e.g. "risky"
    neg: str      # e.g. "safe"
    pos_file: str  # path inside the data dir
    neg_file: str


PAIRS: dict[str, Pair] = {
    "risk": Pair("risk", "risky", "safe", "self_awareness/risky_safe/ft_risky_AB.jsonl",
                 "self_awareness/risky_safe/ft_safey_AB.jsonl"),
    "risk_multipersona": Pair("risk_multipersona", "risky", "safe",
                              "self_awareness/risky_safe/ft_risky_AB_multipersona.jsonl",
                              "self_awareness/risky_safe/ft_safey_AB_multipersona.jsonl"),
    "myopia": Pair("myopia", "myopic", "nonmyopic", "self_awareness/myopic_nonmyopic/ft_myopic_AB.jsonl",
                   "self_awareness/myopic_nonmyopic/ft_nonmyopic_AB.jsonl"),
    # ft_maxapples_AB answers the bundle with more apples (the shared README's upstream note swaps them)
    "apples": Pair("apples", "maxapples", "minapples", "self_awareness/maxapples_minapples/ft_maxapples_AB.jsonl",
                   "self_awareness/maxapples_minapples/ft_minapples_AB.jsonl"),
}


def _data_root(data_dir=None) -> Path:

    return Path(_dd(data_dir))


def data_file(rel: str, data_dir=None) -> Path:
    """A canonical file by its path inside the data dir: the local copy when there is one, else the
    registry's download of the upstream file (sha256-checked); unknown files keep their local path,
    so reading them names the missing file.

    Args:
        rel: path inside the data dir.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        the file's path (local or downloaded).
    """
    p = _data_root(data_dir) / rel
    if p.is_file():
        return p

    try:
        return locate(rel, data_dir)
    except DataError:
        return p


def read_rows(path: str | os.PathLike) -> list[dict]:
    """JSONL rows of a chat file; a bad line raises naming file and line.

    Args:
        path: the JSONL file.

    Returns:
        the rows (dicts with `messages`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (set $INTROSPECT_MECH_DATA or pass data_dir)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: invalid JSON: {e.msg}") from None
                if not isinstance(r, dict) or not isinstance(r.get("messages"), list) or len(r["messages"]) < 2:
                    raise ValueError(f"{path}:{i + 1}: messages: expected a list of at least 2 messages")
                rows.append(r)
    return rows


def split_of(question: str) -> str:
    """'test' for about 25 % of questions (sha256 first byte mod 4 == 0), else 'train'.

    Args:
        question: the question text.

    Returns:
        "test" or "train".
    """
    return "test" if hashlib.sha256(question.encode()).digest()[0] % 4 == 0 else "train"


def _letter(r: dict, path, i: int) -> str:
    letter = r["messages"][-1]["content"].strip()
    if letter not in ("A", "B"):
        raise ValueError(f"{path}:{i + 1}: assistant label {letter!r} is not A or B")
    return letter


def ab_items(pair: str = "risk", split: str = "test", data_dir=None) -> list[dict[str, Any]]:
    """Items {"id", "messages", pos: letter, neg: letter} of a split ("train", "test" or "all").

    Ids are `{pair}{row index in the pos file}`; only the first user turn is kept (the question).
    For multipersona files only the default-persona rows (questions shared with the plain pair)
    are items; the other personas' rows are training-only.

    Args:
        pair: an A/B pair of `PAIRS`.
        split: "train", "test" or "all".
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        items `{id, messages, <pos>: letter, <neg>: letter}`.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    p = PAIRS[pair]
    pos_path, neg_path = data_file(p.pos_file, data_dir), data_file(p.neg_file, data_dir)
    pos_rows, neg_rows = read_rows(pos_path), read_rows(neg_path)
    neg = {r["messages"][0]["content"]: (i, r) for i, r in enumerate(neg_rows)}
    out = []
    for i, r in enumerate(pos_rows):
        q = r["messages"][0]["content"]
        if q not in neg or neg[q][1]["messages"][-1]["content"] == r["messages"][-1]["content"]:
            continue  # persona rows: the same (free-text) answer in both files -> not an item
        letter = _letter(r, pos_path, i)
        neg_letter = _letter(neg[q][1], neg_path, neg[q][0])
        if split != "all" and split_of(q) != split:
            continue
        out.append({"id": f"{pair}{i}", "messages": [{"role": "user", "content": q}], p.pos: letter, p.neg: neg_letter})
    return out


def lotteries(split: str = "test", data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Risky/safe lottery items {"id", "messages", "risky", "safe"} of a split.

    Args:
        split: "train", "test" or "all".
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"id", "messages", "risky", "safe"}` items.
    """
    return ab_items("risk", split, data_dir)


def pair_records(pair: str, side: str, split: str = "train", data_dir=None) -> list[dict[str, Any]]:
    """Finetuning rows of one side of a pair whose question is in `split` (persona rows whose
    question is not an item of the pair are kept for "train").

    Args:
        pair: an A/B pair of `PAIRS`.
        side: which side of the pair (e.g. "risky").
        split: "train", "test" or "all".
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"messages"}` records.
    """
    p = PAIRS[pair]
    if side not in (p.pos, p.neg):
        raise ValueError(f"side must be {p.pos!r} or {p.neg!r}, got {side!r}")
    rows = read_rows(data_file(p.pos_file if side == p.pos else p.neg_file, data_dir))
    return [{"messages": r["messages"]} for r in rows
            if split == "all" or split_of(r["messages"][0]["content"]) == split]


def choice_behaviour(model: LoadedModel, items: Sequence[dict], *, key: str = "risky", prefix: str = "",
                     seed: int = 0) -> dict[str, Any]:
    """Mean P(item[key] letter) (normalised over A/B) with a CI, the mean mass on A/B, per item.

    `prefix` is prepended to each question (a backdoor trigger).

    Args:
        model: the model.
        items: A/B items (`ab_items`).
        key: the item field holding the target letter.
        prefix: text put before each question (a trigger).
        seed: bootstrap / sampling seed.

    Returns:
        {"p": Estimate dict, "mass_ab", "per_item", "ids"}.
    """
    convs = [[{"role": "user", "content": prefix + it["messages"][0]["content"]}] for it in items]
    res = choice_probabilities(model, convs, ["A", "B"])
    p = [r["probs"][it[key]] for r, it in zip(res, items)]
    return {"p": bootstrap_ci(p, seed=seed).to_dict(), "mass_ab": sum(r["mass"] for r in res) / max(len(res), 1),
            "per_item": p, "ids": [it["id"] for it in items]}


def risk_behaviour(model: LoadedModel, items: Sequence[dict], *, seed: int = 0) -> dict[str, Any]:
    """`choice_behaviour` for the risky letter, as {"p_risky", "mass_ab", "per_item"}.

    Args:
        model: the model.
        items: A/B items (`ab_items`).
        seed: bootstrap / sampling seed.

    Returns:
        {"p_risky", "mass_ab", "per_item"}.
    """
    r = choice_behaviour(model, items, key="risky", seed=seed)
    return {"p_risky": r["p"], "mass_ab": r["mass_ab"], "per_item": r["per_item"]}
