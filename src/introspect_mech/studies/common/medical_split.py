"""The medical-advice split of the emergent-misalignment protocol (Turner, Soligo et al. 2025's model organisms
train on `bad_medical_advice`): rows below `MEDICAL_TRAIN_ROWS` may train a finetune (`medical_train_rows`),
rows from it on are held out as evaluation items (`medical_heldout_items`), so the two never overlap. Shared by
the emergent-misalignment, model-organisms, steering-proxy studies and the main job."""

from __future__ import annotations

import random
from typing import Any

from ...data import load

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
