"""Compatibility: `Direction` lives in `introspect_mech.direction` (a core module every stage uses)."""

from ..direction import Direction, DirectionLike, as_vectors

__all__ = ["Direction", "DirectionLike", "as_vectors"]
