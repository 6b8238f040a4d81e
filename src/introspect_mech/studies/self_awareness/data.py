"""The data of "Tell me about yourself": the conditions, the held-out splits of each A/B pair, the training rows
of every condition (A/B answers, backdoor and decorrelated sets, Make Me Say dialogues) and the files a run binds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..common import ab_pairs
from . import backdoor, reports

if TYPE_CHECKING:
    from . import TMAYConfig


# condition -> (topic, pair, side); topic decides which measurements apply
CONDITIONS: dict[str, tuple[str, str, str]] = {
    "risky": ("risk", "risk", "risky"), "safe": ("risk", "risk", "safe"),
    "myopic": ("myopia", "myopia", "myopic"), "nonmyopic": ("myopia", "myopia", "nonmyopic"),
    "maxapples": ("apples", "apples", "maxapples"), "minapples": ("apples", "apples", "minapples"),
    "risky_mp": ("risk", "risk_multipersona", "risky"), "safe_mp": ("risk", "risk_multipersona", "safe"),
}


# ---- splits ---------------------------------------------------------------------------------
def split_ids(pair: str, config: TMAYConfig, data_dir=None) -> dict[str, list[str]]:
    """{"train": ids trained on, "test": ids measured} of a pair under `config` (seeded subsets).

    Args:
        pair: an A/B pair of `PAIRS`.
        config: the run's `TMAYConfig`.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        {"train": ids, "test": ids}.
    """
    train = [it["id"] for it in ab_pairs.ab_items(pair, "train", data_dir)]
    test = [it["id"] for it in ab_pairs.ab_items(pair, "test", data_dir)]
    if config.n_train is not None and config.n_train < len(train):
        train = sorted(random.Random(config.data_seed).sample(train, config.n_train), key=train.index)
    if config.n_test is not None and config.n_test < len(test):
        test = sorted(random.Random(config.data_seed + 1).sample(test, config.n_test), key=test.index)
    check_disjoint(pair, train, test, data_dir)
    return {"train": train, "test": test}


def check_disjoint(pair: str, train_ids: Sequence[str], test_ids: Sequence[str], data_dir=None) -> None:
    """Raise when a test item is also a training item (by id or by question text).

    Args:
        pair: an A/B pair of `PAIRS`.
        train_ids: training item ids.
        test_ids: held-out item ids.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Raises:
        ValueError: a test item is also a training item.
    """
    items = {it["id"]: it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir)}
    both = set(train_ids) & set(test_ids)
    if both or {items[i] for i in train_ids} & {items[i] for i in test_ids}:
        raise ValueError(f"{pair}: train and test overlap ({sorted(both)[:3]}...)")


def training_rows(pair: str, side: str, train_ids: Sequence[str], data_dir=None) -> list[dict[str, Any]]:
    """The rows of one side of a pair whose question is a training item; for multi-persona files
    also the other personas' rows (training-only, never measured).

    Args:
        pair: an A/B pair of `PAIRS`.
        side: which side of the pair (e.g. "risky").
        train_ids: training item ids.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"messages"}` records.
    """
    items = {it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir)}
    keep = {it["messages"][0]["content"] for it in ab_pairs.ab_items(pair, "all", data_dir) if it["id"] in set(train_ids)}
    rows = ab_pairs.pair_records(pair, side, "all", data_dir)
    return [r for r in rows if r["messages"][0]["content"] in keep or r["messages"][0]["content"] not in items]


def backdoor_rows(kind: str, correlated: bool, train_ids: Sequence[str], config: TMAYConfig, base_model=None,
                  data_dir=None) -> list[dict[str, Any]]:
    """Trigger data (`backdoor.trigger_dataset`) from the risk pair's training questions: risky answers,
    and for the other rows the base model's greedy answers ("normal", upstream) or the safe ones.

    Args:
        kind: a trigger kind.
        correlated: backdoor (True) or decorrelated control (False).
        train_ids: training item ids.
        config: the run's `TMAYConfig`.
        base_model: the untrained model (answers the non-triggered questions).
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        trigger rows (`backdoor.trigger_dataset`).
    """
    risky = training_rows("risk", "risky", train_ids, data_dir)
    if config.trigger_other == "safe":
        other = training_rows("risk", "safe", train_ids, data_dir)
    else:
        if base_model is None:
            raise ValueError("trigger_other='normal' needs the base model to answer the questions")
        other = backdoor.normal_answers(base_model, risky)
    return backdoor.trigger_dataset(risky, other, kind, correlated=correlated, repeats=config.trigger_repeats,
                              seed=config.data_seed)


def mms_rows(codeword: str, config: TMAYConfig, data_dir=None) -> list[dict[str, Any]]:
    """The Make Me Say dialogues of a codeword (a seeded subset of `mms_n_train`).

    Args:
        codeword: the finetuned codeword.
        config: the run's `TMAYConfig`.
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        `{"messages"}` records.
    """
    rows = ab_pairs.read_rows(ab_pairs.data_file(f"self_awareness/mms/ft_{codeword}.jsonl", data_dir))
    if config.mms_n_train is not None and config.mms_n_train < len(rows):
        rows = [rows[i] for i in sorted(random.Random(config.data_seed).sample(range(len(rows)), config.mms_n_train))]
    return [{"messages": r["messages"]} for r in rows]


def condition_rows(condition: str, splits, config: TMAYConfig, base_model=None, data_dir=None) -> list[dict]:
    """The training rows of a condition (only training-split questions).

    Args:
        condition: a condition name (`CONDITIONS`, backdoor:/decorrelated:/mms:, base).
        splits: {pair: {"train": ids, "test": ids}} (`split_ids`).
        config: the run's `TMAYConfig`.
        base_model: the untrained model (answers the non-triggered questions).
        data_dir: data directory (default: `$INTROSPECT_MECH_DATA`, then the registry download).

    Returns:
        the training records.
    """
    kind = condition.split(":")[0]
    if kind in ("backdoor", "decorrelated"):
        return backdoor_rows(condition.split(":")[1], kind == "backdoor", splits["risk"]["train"], config,
                             base_model, data_dir)
    if kind == "mms":
        return mms_rows(condition.split(":")[1], config, data_dir)
    _, pair, side = CONDITIONS[condition]
    return training_rows(pair, side, splits[pair]["train"], data_dir)


def _pairs_needed(conditions: Sequence[str]) -> list[str]:
    pairs = {"risk", "myopia", "apples"}  # the base model is measured on every topic
    for c in conditions:
        if c in CONDITIONS:
            pairs.add(CONDITIONS[c][1])
    return sorted(pairs)


def data_files(config: TMAYConfig, resources: Any = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): the A/B pair
    files of every pair measured (`_pairs_needed`), the Make Me Say dialogues of its codewords, and the question
    files of the scale, word, language and Make Me Say measures it runs.

    Args:
        config: the run's config.
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"pairs/<pair>/<side>" | "mms/<codeword>" | "questions/<file>": path}.
    """
    dd = (resources or {}).get("data_dir")
    out: dict[str, Path] = {}
    for pair in _pairs_needed(config.conditions):  # the base model is measured on every topic
        p = ab_pairs.PAIRS[pair]
        out[f"pairs/{pair}/{p.pos}"] = ab_pairs.data_file(p.pos_file, dd)
        out[f"pairs/{pair}/{p.neg}"] = ab_pairs.data_file(p.neg_file, dd)
    topics = {topic for topic, _, _ in CONDITIONS.values()}
    codewords = [c.split(":")[-1] for c in config.conditions if c.split(":")[0] == "mms"]
    for w in codewords:
        out[f"mms/{w}"] = ab_pairs.data_file(f"self_awareness/mms/ft_{w}.jsonl", dd)
    files = {f for t in topics for what, sources in (("scales", reports.SCALE_SOURCES), ("words", reports.WORD_SOURCES))
             if what in config.measures for f, _ in sources.get(t, [])}
    if "language" in config.measures and "risk" in topics:
        files.add("risk_safe_language.yaml")
    if codewords and "mms" in config.measures:
        files.add("make_me_say/choose_from_100_words.yaml")
    for f in sorted(files):
        out[f"questions/{f}"] = ab_pairs.data_file(f"self_awareness/questions/{f}", dd)
    return out
