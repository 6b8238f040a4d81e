"""`Direction`: per-layer unit vectors with their norms and provenance, saved as safetensors + JSON.

This is a core module (probes create Directions, steering and SAE analyses consume them). Every
function that takes a direction accepts a `DirectionLike`: a `Direction`, a raw `[d_model]` vector
(the same vector at every layer) or a raw `[layer, d_model]` matrix (row `i` is layer `i`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Direction", "DirectionLike", "as_vectors", "check_direction", "layer_vector"]


@dataclass
class Direction:
    """A direction in the residual stream at each of `layers` (block indices, ascending).

    `vectors[k]` is a unit vector at block `layers[k]`; `norms[k]` is the raw vector's norm (for a
    mean difference: the distance between the class means, the natural steering scale). `meta`
    is JSON provenance: model, adapter, method, data hashes, counts, filter statistics.
    """

    vectors: Float[Tensor, "layer d_model"]
    norms: Float[Tensor, " layer"]
    layers: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vectors", "norms"):
            if torch.is_tensor(getattr(self, name)) and getattr(self, name).is_complex():
                raise TypeError(f"Direction {name} must be real-valued, got a complex tensor")
        self.vectors = torch.as_tensor(self.vectors, dtype=torch.float32).detach().cpu()
        self.norms = torch.as_tensor(self.norms, dtype=torch.float32).detach().cpu()
        self.layers = [int(l) for l in self.layers]
        if self.vectors.ndim != 2 or self.norms.shape != (self.vectors.shape[0],) or len(self.layers) != self.vectors.shape[0]:
            raise ValueError(f"Direction: vectors {tuple(self.vectors.shape)}, norms {tuple(self.norms.shape)} and "
                             f"{len(self.layers)} layers disagree")

    @classmethod
    def from_raw(cls, raw: Float[Tensor, "layer d_model"], layers: list[int] | None = None, **meta: Any) -> Direction:
        """A Direction from raw per-layer vectors (normalised; their norms kept in `norms`).

        Args:
            raw: `[layer, d_model]` raw vectors (e.g. class-mean differences).
            layers: the block index of each row (default 0..L-1).
            **meta: provenance.

        Returns:
            The Direction.
        """
        raw = torch.as_tensor(raw, dtype=torch.float32)
        norms = raw.norm(dim=-1)
        vecs = raw / norms.clamp_min(1e-12).unsqueeze(-1)
        return cls(vecs, norms, list(range(raw.shape[0])) if layers is None else list(layers), dict(meta))

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.vectors.shape[1])

    @property
    def raw(self) -> Float[Tensor, "layer d_model"]:
        """The unnormalised vectors, `vectors * norms`."""
        return self.vectors * self.norms.unsqueeze(-1)

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        """The unit vector at block `layer`.

        Args:
            layer: a block index (not a position in `layers`).

        Returns:
            `[d_model]` unit vector.

        Raises:
            KeyError: the direction has no vector for that block.
        """
        if layer not in self.layers:
            raise KeyError(f"direction has no vector for block {layer} (it has {self.layers})")
        return self.vectors[self.layers.index(layer)]

    def select(self, layers: list[int]) -> Direction:
        """The same direction restricted to some blocks.

        Args:
            layers: block indices, in the order wanted.

        Returns:
            A new Direction with those rows.
        """
        k = [self.layers.index(l) for l in layers]
        return Direction(self.vectors[k], self.norms[k], list(layers), dict(self.meta))

    def cosine(self, other: Direction) -> Float[Tensor, " layer"]:
        """Per-layer cosine with another Direction.

        Args:
            other: a Direction of the same width.

        Returns:
            `[layer]` cosines over the blocks both have, in `self.layers` order.
        """
        common = [l for l in self.layers if l in other.layers]
        return torch.stack([self.at(l) @ other.at(l) for l in common]) if common else torch.empty(0)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path.safetensors` (vectors, norms, layers) and `path.json` (meta).

        Args:
            path: the stem (a `.safetensors` / `.json` suffix is dropped).

        Returns:
            The stem written.
        """
        from .runs import save_tensors, write_json

        p = Path(path)
        p = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        save_tensors(str(p) + ".safetensors", {"vectors": self.vectors, "norms": self.norms,
                                               "layers": torch.tensor(self.layers, dtype=torch.int64)})
        write_json(str(p) + ".json", {"format": "introspect_mech.direction/1", "layers": self.layers,
                                      "d_model": self.d_model, "meta": self.meta})
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        """Read a Direction written by `save`.

        Args:
            path: the stem, with or without the `.safetensors` / `.json` suffix.

        Returns:
            The Direction.

        Raises:
            FileNotFoundError: a missing file.
            DataError: an unreadable file, a missing tensor or field, or the two files disagree
                (the file and the field named).
        """
        from safetensors.torch import load_file

        from .errors import DataError

        p = Path(path)
        p = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        st, js = Path(str(p) + ".safetensors"), Path(str(p) + ".json")
        for f in (st, js):
            if not f.exists():
                raise FileNotFoundError(f"direction file missing: {f}")
        try:
            t = load_file(str(st))
        except Exception as e:  # noqa: BLE001 - a crafted / truncated file: many exception types
            raise DataError(str(st), None, "safetensors",
                            f"not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
        for name, ndim in (("vectors", 2), ("norms", 1), ("layers", 1)):
            if name not in t:
                raise DataError(str(st), None, name, f"missing tensor (has {sorted(t)}); not a Direction file")
            if t[name].ndim != ndim:
                raise DataError(str(st), None, name, f"expected {ndim} dimension(s), got shape {tuple(t[name].shape)}")
            if t[name].is_complex():
                raise DataError(str(st), None, name, f"must be real-valued, got {t[name].dtype}")
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(str(js), getattr(e, "lineno", None), "json", f"not valid JSON ({type(e).__name__})") from None
        if not isinstance(info, dict):
            raise DataError(str(js), None, "json", f"expected a JSON object, got {type(info).__name__}")
        if info.get("layers") != t["layers"].tolist():
            raise DataError(str(js), None, "layers", f"{info.get('layers')} disagrees with {st.name}")
        try:
            return cls(t["vectors"], t["norms"], t["layers"].tolist(), info.get("meta", {}))
        except ValueError as e:
            raise DataError(str(st), None, "vectors", str(e)) from None

    def __repr__(self) -> str:
        return (f"Direction(layers={len(self.layers)} [{self.layers[0]}..{self.layers[-1]}], d_model={self.d_model}, "
                f"method={self.meta.get('method')!r}, model={self.meta.get('model')!r})")


DirectionLike = Union[Direction, Float[Tensor, " d_model"], Float[Tensor, "layer d_model"]]
"""A `Direction`, a raw `[d_model]` vector (every layer) or a raw `[layer, d_model]` matrix (row i = layer i)."""


def check_direction(direction: object) -> None:
    """Check that `direction` is a `DirectionLike`.

    Args:
        direction: anything.

    Raises:
        TypeError: not a Direction or a tensor.
        ValueError: a tensor that is not `[d_model]` or `[layer, d_model]`.
    """
    if isinstance(direction, Direction):
        return
    if not isinstance(direction, Tensor):
        raise TypeError(f"direction must be a Direction or a torch.Tensor, got {type(direction).__name__}")
    if direction.ndim not in (1, 2):
        raise ValueError(f"a raw direction must be [d_model] or [layer, d_model], got shape {tuple(direction.shape)}")


def as_vectors(direction: DirectionLike, layers: list[int] | None = None) -> Float[Tensor, "layer d_model"]:
    """Unit vectors at blocks `layers`.

    Args:
        direction: a `Direction`, or a raw `[d_model]` vector (repeated per layer) or `[layer, d_model]`
            matrix (normalised row by row, returned as is).
        layers: block indices (default: the Direction's layers; one row for a raw vector).

    Returns:
        `[layer, d_model]` unit vectors.
    """
    check_direction(direction)
    if isinstance(direction, Direction):
        return torch.stack([direction.at(l) for l in (layers or direction.layers)])
    v = torch.as_tensor(direction, dtype=torch.float32)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if v.ndim == 1:
        return v.expand(len(layers or [0]), -1)
    return v


def _direction_matrix(direction: DirectionLike) -> tuple[Tensor, list[int] | None, bool]:
    """(vectors, block index of each row or None for "row i = block i", is_direction)."""
    check_direction(direction)
    if isinstance(direction, Direction):
        return direction.vectors.detach(), list(direction.layers), True
    return direction.detach(), None, False


def layer_vector(direction: DirectionLike, layer: int) -> Float[Tensor, " d_model"]:
    """The vector a hook at block `layer` uses.

    Args:
        direction: a `Direction` (its unit vector at `layer`), a raw `[d_model]` vector (returned as
            is) or a raw `[layer, d_model]` matrix (row `layer`).
        layer: a block index.

    Returns:
        `[d_model]` vector.
    """
    vec, rows, _ = _direction_matrix(direction)
    if vec.ndim == 1:
        return vec
    if rows is not None:
        if layer not in rows:
            raise ValueError(f"direction has no vector for layer {layer} (it has layers {rows})")
        return vec[rows.index(layer)]
    if layer >= vec.shape[0]:
        raise ValueError(f"direction has {vec.shape[0]} layer rows; layer {layer} requested")
    return vec[layer]
