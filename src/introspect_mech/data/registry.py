"""Registry of the canonical datasets: name -> file, upstream URL and sha256 of the upstream bytes.

`registry.json` (beside this module) records, for every canonical file, its path inside a data
directory (the layout of `../shared/data`: em/, self_awareness/, introspection/, persona/), its
original public URL, and the sha256 of the **uncompressed** upstream bytes. Local mirrors may keep a
file gzip-compressed (`*.jsonl.gz`); the checksum is taken after decompression, so the same value
verifies a mirror copy and a fresh download (upstream serves plain JSONL/JSON/YAML).

Resolution order (`locate`): the explicit `data_dir`, then `$INTROSPECT_MECH_DATA`, then the user
cache (`cache_dir()/data`). When the file is in none of them, it is downloaded from its URL into
the user cache, checked against the recorded sha256 and only then kept. Entries whose sha256 is
still `null` (upstream files nobody here could download yet: secure, educational, backdoor,
evil_numbers) are used but never called verified: the first use of each file in a process warns
(`UnverifiedDataWarning`) with the hash its bytes actually have, and `DatasetInfo.verified` is False.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..paths import DATA_ENV, cache_dir
from .records import DataError, check_record, read_bytes, read_jsonl_rows
from ..runs import write_bytes

_TABLE = Path(__file__).with_name("registry.json")


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of the dataset registry (`registry.json`): where a file lives and what it must hash to."""

    name: str
    path: str  # relative to a data directory, as stored in the canonical mirror
    kind: str  # "chat" | "introspection" | "json" | "yaml"
    url: str
    sha256: str | None  # of the uncompressed upstream bytes; None = not pinned yet (unverified)
    bytes: int | None
    rows: int | None
    sha256_status: str | None = None  # why a hash is missing (entries with sha256 None)

    @property
    def verified(self) -> bool:
        """True when the registry pins a sha256 the file is checked against."""
        return self.sha256 is not None

    @property
    def plain_path(self) -> str:
        """`path` without a `.gz` suffix (the upstream file name)."""
        return self.path[:-3] if self.path.endswith(".gz") else self.path


@lru_cache(maxsize=1)
def registry() -> dict[str, DatasetInfo]:
    """Every registered dataset, read once from the packaged `registry.json`.

    Returns:
        `{name: DatasetInfo}`.
    """
    table = json.loads(_TABLE.read_text())
    return {k: DatasetInfo(name=k, **v) for k, v in table.items()}


def names(kind: str | None = None) -> list[str]:
    """Registered dataset names.

    Args:
        kind: only one kind: "chat", "introspection", "json" or "yaml".

    Returns:
        The names, sorted.
    """
    return sorted(k for k, v in registry().items() if kind is None or v.kind == kind)


def info(name: str) -> DatasetInfo:
    """The registry entry of a dataset.

    Args:
        name: a registered name.

    Returns:
        Its `DatasetInfo` (path, kind, source url, sha256, size, rows).

    Raises:
        DataError: an unknown name (the known ones are listed).
    """
    reg = registry()
    if name in reg:
        return reg[name]
    by_path = {v.path: v for v in reg.values()} | {v.plain_path: v for v in reg.values()}
    if name in by_path:
        return by_path[name]
    close = [k for k in reg if name.lower() in k.lower()][:8]
    hint = f"; did you mean {', '.join(close)}" if close else f"; chat datasets: {', '.join(names('chat'))}"
    raise DataError("<registry>", None, "name", f"unknown dataset {name!r}{hint}")


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for a registered file, in order.

    Args:
        data_dir: a directory searched first (None: skipped).

    Returns:
        `data_dir`, then `$INTROSPECT_MECH_DATA` when set, then the cache directory's `data/`.
    """
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    dirs.append(cache_dir() / "data")
    return dirs


_verified: dict[tuple[str, int, int], str | None] = {}


class UnverifiedDataWarning(UserWarning):
    """A registry entry has no pinned sha256: the file is used, but nothing vouches for its bytes."""


def _warn_unverified(where: str, ds: DatasetInfo, got: str) -> None:
    warnings.warn(f"{where}: {ds.name!r} has no pinned sha256 in the registry ({ds.sha256_status or 'unverified'}); "
                  f"its bytes hash to {got} -- UNVERIFIED, check it against upstream before relying on it",
                  UnverifiedDataWarning, stacklevel=3)


def verify(path: Path, ds: DatasetInfo) -> None:
    """Check the (decompressed) bytes of `path` against the registry's sha256.

    A file already verified (same path, size and mtime) is not hashed again. An entry with no pinned
    sha256 gives an `UnverifiedDataWarning` instead.

    Args:
        path: the file (plain or gzip).
        ds: its registry entry.

    Raises:
        DataError: the bytes' sha256 differs from the registry's.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified and _verified[key] == ds.sha256:
        return
    got = hashlib.sha256(read_bytes(path)).hexdigest()
    if ds.sha256 is None:
        _warn_unverified(str(path), ds, got)
        _verified[key] = None
        return
    if got != ds.sha256:
        raise DataError(str(path), None, "sha256",
                        f"checksum {got[:16]}... does not match the registry's {ds.sha256[:16]}... for {ds.name!r} "
                        "(file changed or truncated; pass verify=False to use it anyway)")
    _verified[key] = got


def download(ds: DatasetInfo, dest_root: Path, timeout: float = 30.0) -> Path:
    """Fetch `ds.url` into `dest_root/<plain path>`, keeping it only when its sha256 matches.

    Args:
        ds: the registry entry.
        dest_root: the folder the file is written under (atomically, via a `.part` file).
        timeout: the network timeout in seconds.

    Returns:
        The path written.

    Raises:
        DataError: the download failed or its sha256 differs from a pinned one (nothing kept).
    """
    dest = dest_root / ds.plain_path
    try:
        with urllib.request.urlopen(ds.url, timeout=timeout) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        raise DataError(ds.plain_path, None, "download",
                        f"{ds.name!r} is not in {', '.join(map(str, search_dirs()))} and fetching {ds.url} failed "
                        f"({type(e).__name__}: {e}); set ${DATA_ENV} to a folder holding {ds.path}") from None
    got = hashlib.sha256(data).hexdigest()
    if ds.sha256 is None:
        _warn_unverified(ds.url, ds, got)
    elif got != ds.sha256:
        raise DataError(ds.url, None, "sha256",
                        f"downloaded bytes hash to {got[:16]}..., registry says {ds.sha256[:16]}... (upstream changed); not kept")

    return write_bytes(dest, data)


def locate(name: str, data_dir: str | os.PathLike | None = None, *, fetch: bool = True,
           verify_checksum: bool = True) -> Path:
    """Path of a registered file: first hit in the search dirs (`.gz` or plain), else downloaded.

    Args:
        name: a registered name.
        data_dir: a directory searched first.
        fetch: download when not found locally.
        verify_checksum: check the sha256 against the registry.

    Returns:
        The path.
    """
    ds = info(name)
    for root in search_dirs(data_dir):
        for rel in dict.fromkeys((ds.path, ds.plain_path, ds.plain_path + ".gz")):
            p = root / rel
            if p.is_file():
                if verify_checksum:
                    verify(p, ds)
                return p
    if not fetch:
        raise DataError(ds.path, None, "path", f"{ds.name!r} not found in {', '.join(map(str, search_dirs(data_dir)))}")
    return download(ds, cache_dir() / "data")


def load(name: str, data_dir: str | os.PathLike | None = None, *, verify: bool = True) -> Any:
    """Load a canonical dataset by name (see `names()`), validated.

    Args:
        name: a registered name.
        data_dir: a directory searched first.
        verify: check the sha256 against the registry.

    Returns:
        chat: a list of `{"messages": [...]}` records (validated like `read_jsonl`); introspection:
        Looking-Inward rows (fields checked); json: the parsed object (persona trait files); yaml:
        the parsed YAML (question files).
    """
    ds = info(name)
    path = locate(name, data_dir, verify_checksum=verify)
    src = str(path)
    if ds.kind == "chat":
        return [check_record(r, src, n) for n, r in read_jsonl_rows(path)]
    if ds.kind == "introspection":
        return [_check_introspection(r, src, n) for n, r in read_jsonl_rows(path)]
    text = read_bytes(path).decode("utf-8")
    if ds.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(src, e.lineno, "json", e.msg) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(src, line, "yaml", str(getattr(e, "problem", None) or e).splitlines()[0]) from None


_LI_FIELDS = ("original_question", "object_level_prompt", "hypothetical_prompt", "behavioral_property")


def _check_introspection(row: Any, src: str, line: int) -> dict:
    if not isinstance(row, dict):
        raise DataError(src, line, "record", "expected a JSON object")
    for f in _LI_FIELDS:
        if f not in row:
            raise DataError(src, line, f, "missing")
    for f in ("object_level_prompt", "hypothetical_prompt"):
        if not isinstance(row[f], list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in row[f]):
            raise DataError(src, line, f, "must be a list of {role, content} messages")
    return row
