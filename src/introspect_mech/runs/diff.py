"""How two configurations differ: the dotted field names and a one-line description (`RunConfigError`'s text)."""

from __future__ import annotations

import json
from typing import Any


def _normal(obj: Any) -> Any:
    """JSON round trip (tuples -> lists, paths -> str) so stored and new configs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}` (lists are leaves).

    Args:
        obj: a dict (nested) or a leaf value.
        prefix: dotted name of `obj` itself ("" at the top).

    Returns:
        `{dotted name: leaf value}`; a leaf or empty dict gives `{prefix: obj}`.
    """
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two configurations.

    Args:
        old: the stored configuration.
        new: the new configuration (compared after a JSON round trip, so tuples equal lists).

    Returns:
        The sorted dotted names whose values differ or that exist in only one of them.
    """
    a, b = flatten(_normal(old)), flatten(_normal(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def describe_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """A one-line description of how two configurations differ.

    Args:
        old: the stored configuration.
        new: the new configuration.
        limit: how many differing fields to spell out; the rest are counted ("and N more").

    Returns:
        E.g. `'lr (0.001 -> 0.01), model.name ("a" -> "b")'` (long values shortened).
    """
    a, b = flatten(_normal(old)), flatten(_normal(new))
    keys = config_diff(old, new)

    def short(x: Any) -> str:
        s = json.dumps(x, default=str) if x is not None else "none"
        return s if len(s) <= 40 else s[:18] + "..." + s[-18:]

    parts = [f"{k} ({short(a.get(k))} -> {short(b.get(k))})" for k in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
