"""Resumable results: an append-only JSONL file whose rows carry a key, so a killed run skips what is done."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError
from .writer import _open_nofollow, _unsafe, append_text, safe_target


class JsonlLog:
    """Append-only JSONL results file with resume.

    `key_fields` name the row fields that identify a unit of work; `done_keys()` returns the set of
    keys already written, so a rerun skips them, and `read()` returns each key once (the first row;
    a duplicated row is neither judged twice nor counted twice). Each `append` goes through the
    writer (no symlink followed, nothing outside `root`) and is fsync'd. Rows are data: they are
    written as given, never scrubbed.

    Reading never rewrites the file: a torn last line (a killed writer) is skipped when read and cut
    only before the next append; a valid last row without its newline is kept (and completed).

    Args:
        path: the JSONL file.
        key_fields: row fields that identify a unit of work.
        root: the run directory the file must stay in (default: its folder).
    """

    def __init__(self, path: str | os.PathLike, key_fields: tuple[str, ...] = (), *,
                 root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.root = Path(root) if root is not None else self.path.parent
        self._checked_tail = False

    def _repair(self) -> None:
        """Before the first append: cut a torn final line, or complete a valid one with its newline."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        safe_target(self.path, self.root)
        fd = _open_nofollow(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return
            os.lseek(fd, max(0, size - (1 << 20)), os.SEEK_SET)
            tail = os.read(fd, 1 << 20)
            if tail.endswith(b"\n"):
                return
            start = tail.rfind(b"\n") + 1
            last = tail[start:]
            try:
                ok = isinstance(json.loads(last.decode("utf-8")), dict)
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
            if ok:
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, b"\n")
            else:
                os.ftruncate(fd, size - len(last))
            os.fsync(fd)
        finally:
            os.close(fd)

    def key(self, row: dict[str, Any]) -> tuple:
        """The identity of a row.

        Args:
            row: a row.

        Returns:
            The JSON-encoded values of `key_fields`.
        """
        return tuple(json.dumps(row.get(k), sort_keys=True, default=str) for k in self.key_fields)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Iterate over the rows written so far, in file order (duplicates included; see `read`).

        Yields:
            One dict per line.

        Raises:
            DataError: a line that is not UTF-8 or not a JSON object (file and line named); a torn
                last line (no newline, not valid JSON) is skipped.
        """
        if not self.path.exists():
            return
        src = str(self.path)
        if not self.path.resolve().is_relative_to(self.root.resolve()):
            raise _unsafe(self.path, f"resolves outside the run directory {self.root} (a symlink?); refusing to read it")
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                torn = not raw.endswith(b"\n")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if torn:
                        return
                    raise DataError(src, n, "line", f"not UTF-8 text (byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    if torn:
                        return  # a killed writer's last line: not a row
                    raise DataError(src, n, "json", f"invalid JSON ({e.msg} at column {e.colno}); "
                                    "the file is corrupt (delete it or the line to redo that work)") from None
                if not isinstance(row, dict):
                    raise DataError(src, n, "json", f"expected a JSON object, got {type(row).__name__}")
                yield row

    def read(self) -> list[dict[str, Any]]:
        """All rows written so far, each key once (the first row with it) when `key_fields` are set.

        Returns:
            The rows, in file order.
        """
        if not self.key_fields:
            return list(self.rows())
        seen: set[tuple] = set()
        out = []
        for r in self.rows():
            k = self.key(r)
            if k not in seen:
                seen.add(k)
                out.append(r)
        return out

    def done_keys(self) -> set[tuple]:
        """Keys of the rows already written (a rerun skips them).

        Returns:
            The set of `key(row)`.
        """
        return {self.key(r) for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Append one row through the writer, fsync'd (written as given: rows are data, never scrubbed).

        Args:
            row: a JSON-serialisable dict.
        """
        if not self._checked_tail:
            self._repair()
            self._checked_tail = True
        append_text(self.path, json.dumps(row, ensure_ascii=False, default=str) + "\n", root=self.root)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows one by one.

        Args:
            rows: JSON-serialisable dicts.
        """
        for r in rows:
            self.append(r)
