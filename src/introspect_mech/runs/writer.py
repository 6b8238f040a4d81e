"""The one writer: every file a run writes goes through these functions.

They never follow a symlink at the target (O_NOFOLLOW), refuse a target whose folder resolves outside
`root` (the run directory), make their own temp files (O_EXCL, in the target's folder) and publish them with
an atomic `os.replace`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError


class UnsafePathError(DataError):
    """A write (or read) that would follow a symlink or land outside its run directory."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _unsafe(path: Path, problem: str) -> UnsafePathError:
    return UnsafePathError(str(path), None, "path", problem)


def safe_target(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Check that `path` may be written: not a symlink, and its folder inside `root`.

    The folder is created (after the check, so a symlinked folder is never created through).

    Args:
        path: the file to write.
        root: the run directory it must stay in (default: the file's own folder).

    Returns:
        `path` as a `Path`.

    Raises:
        UnsafePathError: `path` is a symlink, not a regular file, or resolves outside `root`.
    """
    p = Path(path)
    parent = p.parent
    base = Path(root) if root is not None else parent
    rbase = base.resolve()
    if not parent.resolve().is_relative_to(rbase):
        raise _unsafe(p, f"resolves outside the run directory {base} (a symlinked folder?); refusing to write")
    parent.mkdir(parents=True, exist_ok=True)
    if not parent.resolve().is_relative_to(rbase):  # created through a link planted meanwhile
        raise _unsafe(p, f"resolves outside the run directory {base}; refusing to write")
    if p.is_symlink():
        raise _unsafe(p, "is a symlink; refusing to write through it (remove it or use another output directory)")
    if p.exists() and not p.is_file():
        raise _unsafe(p, "exists and is not a regular file; refusing to write")
    return p


def _open_nofollow(p: Path, flags: int, mode: int = 0o644) -> int:
    try:
        fd = os.open(p, flags | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise _unsafe(p, "is a symlink; refusing to write through it") from None
        if e.errno == errno.ENXIO:
            raise _unsafe(p, "is not a regular file; refusing to write") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unsafe(p, "is not a regular file; refusing to write")
    return fd


def append_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None,
                fsync: bool = True) -> None:
    """Append `text` to a file (created if missing), never through a symlink.

    Args:
        path: the file.
        text: UTF-8 text (usually whole lines ending in a newline).
        root: the run directory it must stay in (default: its folder).
        fsync: flush to disk before returning.
    """
    p = safe_target(path, root)
    fd = _open_nofollow(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = text.encode("utf-8")
        while data:
            n = os.write(fd, data)
            data = data[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None,
                fsync: bool = True) -> Path:
    """Replace a file's content atomically: a temp file the writer makes itself, then os.replace.

    A reader sees the old content or the new, never a half file; a symlink at `path` is refused,
    never followed.

    Args:
        path: the file.
        data: its new content.
        root: the run directory it must stay in (default: its folder).
        fsync: flush the temp file before the rename.

    Returns:
        `path`.
    """
    p = safe_target(path, root)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")  # O_EXCL | O_NOFOLLOW
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if p.is_symlink():  # planted between the check and now: rename would replace the link, not follow it
            raise _unsafe(p, "is a symlink; refusing to write through it")
        os.replace(tmp, p)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    return p


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)


def write_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> Path:
    """`write_bytes` of UTF-8 text.

    Args:
        path: the file.
        text: its new content.
        root: the run directory it must stay in.

    Returns:
        `path`.
    """
    return write_bytes(path, text.encode("utf-8"), root=root)


def write_json(path: str | os.PathLike, obj: Any, *, root: str | os.PathLike | None = None, indent: int | None = 2,
               default: Any = str) -> Path:
    """`write_bytes` of a JSON document.

    Args:
        path: the file.
        obj: JSON-serialisable object.
        root: the run directory it must stay in.
        indent: JSON indent.
        default: `json.dumps`' default for other objects.

    Returns:
        `path`.
    """
    return write_text(path, json.dumps(obj, indent=indent, default=default, ensure_ascii=False), root=root)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any], *, root: str | os.PathLike | None = None,
                default: Any = str) -> Path:
    """Replace a JSONL file atomically with `rows` (one JSON value per line).

    Args:
        path: the file.
        rows: JSON-serialisable rows.
        root: the run directory it must stay in.
        default: `json.dumps`' default for other objects.

    Returns:
        `path`.
    """
    return write_text(path, "".join(json.dumps(r, default=default, ensure_ascii=False) + "\n" for r in rows),
                      root=root)


def save_tensors(path: str | os.PathLike, tensors: dict[str, Any], *, metadata: dict[str, str] | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Save tensors as safetensors through the writer (atomic, no symlink followed; never pickle).

    Args:
        path: the `.safetensors` file.
        tensors: name -> tensor (made contiguous).
        metadata: safetensors string metadata.
        root: the run directory it must stay in.

    Returns:
        `path`.
    """
    from safetensors.torch import save

    return write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata), root=root)


class staged_dir:
    """Build a directory under a temp name (made by the writer) and publish it with a rename.

    `with staged_dir(dest, root=run) as tmp: model.save_pretrained(tmp)`: files are written into a
    fresh folder nobody else could have planted links in; on success an existing `dest` (a real
    folder, never a symlink) is replaced.

    Args:
        dest: the directory to publish.
        root: the run directory it must stay in (default: its parent).
    """

    def __init__(self, dest: str | os.PathLike, *, root: str | os.PathLike | None = None):
        self.dest = Path(dest)
        self.root = root
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.dest.is_symlink():
            raise _unsafe(self.dest, "is a symlink; refusing to write through it")
        parent = self.dest.parent
        base = Path(self.root) if self.root is not None else parent
        if not parent.resolve().is_relative_to(base.resolve()):
            raise _unsafe(self.dest, f"resolves outside the run directory {base}; refusing to write")
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.dest.name}.", suffix=".tmp"))
        return self.tmp

    def __exit__(self, et: Any, e: Any, tb: Any) -> None:
        assert self.tmp is not None
        if et is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.dest.is_symlink():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise _unsafe(self.dest, "is a symlink; refusing to write through it")
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.dest)


def read_inside(path: str | os.PathLike, root: str | os.PathLike) -> bytes:
    """Read a file that must be what it claims: a regular file inside `root`, not a symlink out.

    Args:
        path: the file.
        root: the run directory.

    Returns:
        Its bytes.

    Raises:
        UnsafePathError: `path` resolves outside `root` or is not a regular file.
    """
    p = Path(path)
    if not p.resolve().is_relative_to(Path(root).resolve()):
        raise _unsafe(p, f"resolves outside the run directory {root} (a symlink?); refusing to read it")
    fd = os.open(p, os.O_RDONLY | _CLOEXEC | (_NOFOLLOW if not p.is_symlink() else 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _unsafe(p, "is not a regular file; refusing to read it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)
