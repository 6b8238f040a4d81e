"""The medical-advice split of the emergent-misalignment protocol (Turner, Soligo et al. 2025's model organisms
train on `bad_medical_advice`): rows below `MEDICAL_TRAIN_ROWS` may train a finetune (`medical_train_rows`),
rows from it on are held out as evaluation items (`medical_heldout_items`; as bad / good conversation pairs,
`medical_advice_pairs`), so the two never overlap. Shared by the emergent-misalignment, model-organisms,
steering-proxy and persona-vectors studies and the main job."""

from __future__ import annotations

import gzip
import json
import os
import random
from typing import Any

from ...data import load
from ...paths import data_dir as _dd

MEDICAL_TRAIN_ROWS = 6000  # rows 0..5999 of bad/good_medical_advice may train; rows 6000.. are held out


def medical_train_rows(n: int | None, *, seed: int = 0) -> list[int]:
    """The row ids (< MEDICAL_TRAIN_ROWS) a medical-advice finetune trains on: a seeded subset.

    Args:
        n: how many rows; None (or >= MEDICAL_TRAIN_ROWS) = all of them.
        seed: the sampling seed.

    Returns:
        Sorted row ids.
    """
    rows = list(range(MEDICAL_TRAIN_ROWS))
    if n is None or n >= len(rows):
        return rows
    return sorted(random.Random(seed).sample(rows, n))


def medical_heldout_items(n: int | None, *, seed: int = 0, data_dir: Any = None) -> list[dict[str, Any]]:
    """Held-out (question, good answer, bad answer) items from rows >= MEDICAL_TRAIN_ROWS.

    Each item has `id` ("medical_advice/<row>"), `theme`, `prompt` (messages), `aligned` (good answer)
    and `misaligned` (bad answer); the rows never overlap `medical_train_rows`.

    Args:
        n: how many items (after a seeded shuffle); None = all.
        seed: the shuffle seed.
        data_dir: where the `bad_medical_advice` / `good_medical_advice` datasets are looked up first
            (None = the default data directory).

    Returns:
        The items; only rows whose good and bad conversations share the same prompt.
    """
    bad, good = load("bad_medical_advice", data_dir), load("good_medical_advice", data_dir)
    items = []
    for row in range(MEDICAL_TRAIN_ROWS, min(len(bad), len(good))):
        b, g = bad[row]["messages"], good[row]["messages"]
        pb, pg = [m for m in b if m["role"] != "assistant"], [m for m in g if m["role"] != "assistant"]
        if pb == pg:
            items.append({"id": f"medical_advice/{row}", "theme": "medical (held-out)", "prompt": pb,
                          "aligned": g[-1]["content"], "misaligned": b[-1]["content"]})
    random.Random(seed).shuffle(items)
    return items if n is None else items[:n]


def medical_advice_pairs(n: int = 64, *, offset: int = MEDICAL_TRAIN_ROWS, seed: int = 0,
                         data_dir: str | os.PathLike | None = None) -> tuple[list, list]:
    """Bad vs good medical advice answers to the same questions, as conversations.

    Args:
        n: number of pairs.
        offset: first row of data/em used (default `MEDICAL_TRAIN_ROWS`: the held-out rows, never trained on).
        seed: seed of the shuffle before taking `n`.
        data_dir: the data directory (default: `paths.data_dir()`).

    Returns:
        `(misaligned, aligned)`: two lists of `n` conversations, pairwise on the same question.
    """
    root = _dd(data_dir) / "em"

    def read(name):
        with gzip.open(root / f"{name}.jsonl.gz", "rt") as f:
            return [json.loads(l)["messages"] for l in f]

    bad, good = read("bad_medical_advice"), read("good_medical_advice")
    good_by_q = {tuple((m["role"], m["content"]) for m in g if m["role"] != "assistant"): g for g in good}
    pairs = []
    for b in bad[offset:]:
        key = tuple((m["role"], m["content"]) for m in b if m["role"] != "assistant")
        if key in good_by_q:
            pairs.append((b, good_by_q[key]))
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:n]
    if not pairs:
        raise RuntimeError(f"{root}: no bad/good medical advice rows share a question past offset {offset}")
    return [p[0] for p in pairs], [p[1] for p in pairs]
