"""Versions and content hashes: what identifies a run's inputs (package versions, files, records, adapters,
a loaded model) in a configuration binding."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PACKAGES = (
    "introspect_mech", "torch", "transformers", "peft", "transformer-lens", "sae-lens",
    "nnsight", "plotly", "scikit-learn", "safetensors", "gguf", "numpy", "openai",
)

def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the stack.

    Args:
        names: distribution names.

    Returns:
        `{name: version or None when absent}`.
    """
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes.

    Args:
        path: the file.
        chunk: read size.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (e.g. in-memory records).

    Args:
        obj: the object (keys sorted before hashing).

    Returns:
        The hex digest.
    """
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def adapter_sha256(path: str | os.PathLike | None) -> str | None:
    """Hash of an adapter folder's weights and config.

    Args:
        path: the adapter folder (`adapter_config.json` + `adapter_model.safetensors` or `.bin`),
            or None for no adapter.

    Returns:
        The hex digest over the files present, or None when `path` is None.
    """
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (p / name).is_file():
            h.update(name.encode() + file_sha256(p / name).encode())
    return h.hexdigest()


def model_config(model: Any) -> dict[str, Any]:
    """What identifies a loaded model in a configuration binding: name, base fingerprint, adapter.

    Args:
        model: a `LoadedModel` (its `name`, weights and `meta["adapter"]` are read).

    Returns:
        `{"name": ..., **model.fingerprint(), "adapter_sha256": ...}` (the adapter by content,
        so the same adapter under another path binds the same).
    """
    adapter = model.meta.get("adapter")  # by content: the same adapter under another path is the same
    # LoadedModel.fingerprint() is models.model_fingerprint: runs sits below models and never imports it
    return {"name": model.name, **model.fingerprint(), "adapter_sha256": adapter_sha256(adapter)}
