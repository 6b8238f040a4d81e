"""What a `--data` value names: a registered dataset, a generator (`gen:<name>`) or a JSONL(.gz) file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import generators
from .records import read_jsonl
from .registry import load

__all__ = ["load_records"]


def load_records(spec: str, n: int | None = None, seed: int = 0, data_dir: str | None = None) -> list[dict]:
    """The training records a `--data` value names.

    Args:
        spec: `gen:<generator>` (see `data.generators.GENERATORS`), a JSONL(.gz) path, or a
            registered dataset name.
        n: size of a generated dataset (None: the generator's default); ignored for files.
        seed: the generator's seed.
        data_dir: the canonical data folder (default `$INTROSPECT_MECH_DATA`).

    Returns:
        Validated chat records.

    Raises:
        SystemExit: an unknown generator.
        DataError: an unknown dataset name or an invalid file.
    """
    if spec.startswith("gen:"):
        gen = generators.GENERATORS.get(spec[4:])
        if gen is None:
            raise SystemExit(f"unknown generator {spec[4:]!r}; choose from {', '.join(generators.GENERATORS)}")
        kw: dict[str, Any] = {"seed": seed} | ({"n": n} if n is not None else {})
        if "data_dir" in gen.__code__.co_varnames:
            kw["data_dir"] = data_dir
        return gen(**kw)
    if Path(spec).exists():
        return read_jsonl(spec)
    return load(spec, data_dir)
