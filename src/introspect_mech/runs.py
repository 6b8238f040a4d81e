"""Run directories: a manifest plus JSONL results appended as they are produced.

Every stage (finetune, sample, judge, cache, probe, steer, sae, dashboard) writes into a run
directory with the same convention:

    run_dir/
      manifest.json     model, adapter, data hashes, seeds, judge, package versions (never API keys)
      *.jsonl           results, one JSON object per line, appended and flushed as produced

`JsonlLog` makes a killed run resumable: rows carry a key, and `done_keys()` tells what to skip.
A torn last line (the process died mid-write) is dropped on reopen, never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

PACKAGES = (
    "introspect_mech", "torch", "transformers", "peft", "transformer-lens", "sae-lens",
    "nnsight", "plotly", "scikit-learn", "safetensors", "gguf", "numpy",
)
_SECRET_KEY = re.compile(r"(api[_-]?key|(^|_)token$|secret|password|authorization)", re.I)


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


def _scrub(obj: Any) -> Any:
    """Drop anything that looks like a credential before it reaches disk."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) and not str(k).endswith("_env")
                    else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return obj


@dataclass
class RunDir:
    """A run directory. `RunDir(path).write_manifest(model=..., seed=...)` merges into manifest.json."""

    path: Path | str | os.PathLike  # a Path after __init__
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        """`path/manifest.json`."""
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        """The manifest as written so far.

        Returns:
            The manifest dict (empty before the first `write_manifest`).
        """
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {}

    def write_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest (sections update, never lose earlier stages).

        Args:
            **fields: top-level fields; dict values are merged into existing dict sections.

        Returns:
            The manifest as written (atomically).
        """
        m = self.manifest()
        if not m:
            m = {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "packages": package_versions(),
            }
        for k, v in _scrub(fields).items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=2, default=str, ensure_ascii=False))
        tmp.replace(self.manifest_path)
        return m

    def log(self, name: str, key_fields: tuple[str, ...] = ()) -> JsonlLog:
        """A resumable JSONL log in this run directory.

        Args:
            name: file name, e.g. "samples.jsonl".
            key_fields: row fields that identify a unit of work (for `done_keys`).

        Returns:
            The `JsonlLog`.
        """
        return JsonlLog(self.path / name, key_fields)


class JsonlLog:
    """Append-only JSONL results file with resume.

    `key_fields` name the row fields that identify a unit of work; `done_keys()` returns the set of
    keys already written, so a rerun skips them. Each `append` is flushed and fsync'd.
    """

    def __init__(self, path: str | os.PathLike, key_fields: tuple[str, ...] = ()):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        """Truncate a torn final line left by a killed writer."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def key(self, row: dict[str, Any]) -> tuple:
        """The identity of a row.

        Args:
            row: a row.

        Returns:
            The JSON-encoded values of `key_fields`.
        """
        return tuple(json.dumps(row.get(k), sort_keys=True, default=str) for k in self.key_fields)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Iterate over the rows written so far.

        Yields:
            One dict per line.
        """
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def read(self) -> list[dict[str, Any]]:
        """All rows written so far.

        Returns:
            The rows, in file order.
        """
        return list(self.rows())

    def done_keys(self) -> set[tuple]:
        """Keys of the rows already written (a rerun skips them).

        Returns:
            The set of `key(row)`.
        """
        return {self.key(r) for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Append one row, flushed and fsync'd (credential-looking keys redacted).

        Args:
            row: a JSON-serialisable dict.
        """
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_scrub(row), ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows one by one.

        Args:
            rows: JSON-serialisable dicts.
        """
        for r in rows:
            self.append(r)
