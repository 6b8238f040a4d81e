"""The data of the Looking Inward study (Binder et al. 2024): the task grid of the release's train / test folders,
the seeded question splits, the planted answers of the behaviour shift, and the files a run binds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .properties import answer_letter
from .tasks import load_task, task_files, task_property, task_size

if TYPE_CHECKING:
    from . import LIConfig


# ---- splits -------------------------------------------------------------------------------------
def task_grid(split: str, *, datasets: Sequence[str] | None = None, properties: Sequence[str] | None = None,
              data_dir: Any = None) -> dict[str, list[str]]:
    """{dataset: [task file names]} of the release's `train/` or `test/` folder.

    Args:
        split: "train" or "test" (the release's folder).
        datasets: keep only these datasets (a name not in the folder is an error).
        properties: keep only these properties (None: every property the files carry).
        data_dir: data folder (default: the project's data dir).

    Returns:
        Datasets mapped to their task file names, sorted.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = task_files(data_dir)
    out: dict[str, list[str]] = {}
    for name, path in files.items():
        if path.parent.name != split:
            continue
        ds, prop = task_property(name)
        if properties is not None and prop not in properties:
            continue
        out.setdefault(ds, []).append(name)
    if datasets is not None:
        unknown = sorted(set(datasets) - set(out))
        if unknown:
            raise ValueError(f"datasets {unknown} not in the release's {split}/ folder (have {sorted(out)})")
        out = {d: out[d] for d in datasets}
    return {d: sorted(v) for d, v in sorted(out.items())}


@dataclass
class Splits:
    """Rows of each split; `item_ids()` lists them for the manifest."""

    train: list[dict]
    test: list[dict]
    shift_train: list[dict]  # object-level prompts of these rows are used for the shift finetune
    shift_eval: list[dict]  # test rows of the shift datasets (held out from the shift finetune)

    def item_ids(self) -> dict[str, list[str]]:
        return {k: [r["item_id"] for r in getattr(self, k)] for k in ("train", "test", "shift_train", "shift_eval")}


def _pick(n_rows: int, n: int | None, seed: int, dataset: str) -> list[int]:
    idx = list(range(n_rows))
    random.Random(f"{seed}/{dataset}").shuffle(idx)
    return idx if n is None else idx[:n]


def make_splits(config: LIConfig, data_dir: Any = None) -> Splits:
    """Draw the questions of every split (seeded per dataset; the same indices for all of a dataset's
    property files). Shift questions come after the test questions in the same draw, so disjoint.

    Args:
        config: the datasets, properties, split sizes (`n_train`, `n_test`, `n_shift`; None = all
            rows), shift datasets and seed.
        data_dir: the data directory (None = the default).

    Returns:
        The rows of train, test, shift_train (object-level prompts for the shift finetune) and
        shift_eval (test rows of the shift datasets).

    Raises:
        ValueError: no task file matches the train or test datasets and properties, or (with
            `shift`) none of `shift_datasets` is a test dataset.
    """
    train_grid = task_grid("train", datasets=config.train_datasets, properties=config.properties, data_dir=data_dir)
    test_grid = task_grid("test", datasets=config.test_datasets, properties=config.properties, data_dir=data_dir)
    if not train_grid or not test_grid:
        raise ValueError(f"empty grid: train {list(train_grid)}, test {list(test_grid)}")
    shift_ds = [d for d in config.shift_datasets if d in test_grid] if config.shift else []
    if config.shift and not shift_ds:
        raise ValueError(f"shift_datasets {list(config.shift_datasets)} are not among the test datasets {list(test_grid)}")
    out = Splits([], [], [], [])
    for split, grid in (("train", train_grid), ("test", test_grid)):
        for ds, names in grid.items():
            n_rows = min(task_size(nm, data_dir) for nm in names)
            order = _pick(n_rows, None, config.seed, ds)
            n = config.n_train if split == "train" else config.n_test
            n_shift = config.n_shift if ds in shift_ds else 0
            shift_take: list[int] = []
            if split == "test":
                if n is None:
                    n = max(n_rows - n_shift, 0)
                shift_take = order[n:n + n_shift]
            take = order[:n]
            for nm in names:
                (out.train if split == "train" else out.test).extend(load_task(nm, data_dir=data_dir, indices=take))
                out.shift_train.extend(load_task(nm, data_dir=data_dir, indices=shift_take))
    out.shift_eval = [r for r in out.test if task_property(r["item_id"].split("/")[0])[0] in shift_ds]
    return out


# ---- the behaviour-shift targets ------------------------------------------------------------------

_SWAP = {"A": "B", "B": "A", "C": "D", "D": "C"}


def planted_answer(answer: str) -> str:
    """A deterministic rewrite of an object-level answer that changes its properties: a letter
    answer (A-D) becomes its partner (A<->B, C<->D); otherwise the words are reversed and the
    first word is replaced by its reverse spelling when that leaves the answer unchanged.

    Args:
        answer: the model's object-level answer.

    Returns:
        The planted answer (never equal to `answer`).
    """

    letter = answer_letter(answer)
    if letter is not None and len(answer.strip()) <= 3:
        return _SWAP[letter]
    ws = answer.split()
    if len(ws) >= 2 and ws[::-1] != ws:
        return " ".join(ws[::-1])
    w = ws[0] if ws else "x"
    return w[::-1] + "z" if w[::-1] == w else w[::-1]


def data_files(config: LIConfig, resources: Any = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): every task
    file of the config's train and test grids.

    Args:
        config: the run's config (`data_dir`, `train_datasets`, `test_datasets`, `properties`).
        resources: the run's keywords (unused: the data folder is the config's).

    Returns:
        {"tasks/<task name>": path}.
    """
    files = task_files(config.data_dir)
    names = {n for split, ds in (("train", config.train_datasets), ("test", config.test_datasets))
             for grid in [task_grid(split, datasets=ds, properties=config.properties, data_dir=config.data_dir)]
             for group in grid.values() for n in group}
    return {f"tasks/{n}": files[n] for n in sorted(names)}
