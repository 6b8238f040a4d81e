"""Where things live: the user cache and the canonical data directory."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "INTROSPECT_MECH_DATA"
CACHE_ENV = "INTROSPECT_MECH_CACHE"


def cache_dir() -> Path:
    """User cache (dequantised models, downloaded data): $INTROSPECT_MECH_CACHE or ~/.cache/introspect_mech."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "introspect_mech"
    )
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The canonical data directory: explicit argument, then $INTROSPECT_MECH_DATA, then the cache.

    A local mirror (tests and CI use `../shared/data`) has the layout em/, self_awareness/,
    introspection/, persona/. Files missing from it are downloaded into the cache by
    `introspect_mech.data.load` where the network allows.

    Args:
        explicit: a directory that wins over the environment.

    Returns:
        The directory.
    """
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return cache_dir() / "data"
