"""Chat records (`{"messages": [{"role", "content"}, ...]}`): reading and validation.

Every problem is reported as a `DataError` naming the file, the 1-based line number and the field,
and is raised before any work (tokenisation, training) starts.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError
from ..runs import write_bytes

ROLES = ("system", "user", "assistant")
Record = dict[str, Any]


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a plain or gzip-compressed (by magic bytes, not suffix) UTF-8 text file.

    Args:
        path: the file.

    Returns:
        An open text stream (the caller closes it).
    """
    p = Path(path)
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return open(p, encoding="utf-8")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, decompressed when it is gzip (the upstream bytes of a `.gz` mirror).

    Args:
        path: the file (gzip recognised by its magic bytes).

    Returns:
        The (decompressed) bytes.
    """
    data = Path(path).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def check_text(text: str, source: str, line: int | None, field: str) -> str:
    """Refuse text that cannot be encoded (a lone surrogate from a `\\ud800` JSON escape).

    Args:
        text: the string.
        source: file name for the error message.
        line: line number for the error message.
        field: the field for the error message.

    Returns:
        `text`, unchanged.

    Raises:
        DataError: a lone surrogate (its position named).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(source, line, field, f"lone surrogate U+{ord(text[e.start]):04X} at character {e.start} "
                        "(not valid Unicode text)") from None
    return text


def check_record(rec: Any, source: str = "<records>", line: int | None = None) -> Record:
    """Validate one chat record.

    Args:
        rec: the record (`{"messages": [{"role", "content"}, ...]}`).
        source: file name for the error message.
        line: line number for the error message.

    Returns:
        The record, unchanged.

    Raises:
        DataError: naming the source, line and field at fault.
    """
    if not isinstance(rec, dict):
        raise DataError(source, line, "record", f"expected a JSON object, got {type(rec).__name__}")
    msgs = rec.get("messages")
    if msgs is None:
        raise DataError(source, line, "messages", "missing")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(source, line, "messages", "must be a non-empty list")
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(source, line, f, f"expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role is None:
            raise DataError(source, line, f"{f}.role", "missing")
        if role not in ROLES:
            raise DataError(source, line, f"{f}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if "content" not in m or m["content"] is None:
            raise DataError(source, line, f"{f}.content", "missing")
        if not isinstance(m["content"], str):
            raise DataError(source, line, f"{f}.content", f"must be a string, got {type(m['content']).__name__}")
        check_text(m["content"], source, line, f"{f}.content")
        if role == "assistant" and not m["content"].strip():
            raise DataError(source, line, f"{f}.content", "empty assistant turn")
        if role == "system" and i != 0:
            raise DataError(source, line, f"{f}.role", "a system turn must come first")
    if msgs[-1]["role"] != "assistant":
        raise DataError(source, line, f"messages[{len(msgs) - 1}].role",
                        f"last turn must be 'assistant', got {msgs[-1]['role']!r}")
    return rec


def validate_records(records: Iterable[Any], source: str = "<records>") -> list[Record]:
    """Validate in-memory records (line numbers are 1-based positions in the list).

    Args:
        records: the records.
        source: a name for error messages.

    Returns:
        The records, as a list.

    Raises:
        DataError: at the first bad record.
    """
    return [check_record(r, source, i) for i, r in enumerate(records, 1)]


def read_jsonl_rows(path: str | os.PathLike) -> list[Any]:
    """Parse a (possibly gzipped) JSONL file into (line number, object) pairs.

    Args:
        path: a `.jsonl` file, plain or gzip-compressed (detected by magic bytes).

    Returns:
        [(1-based line number, parsed object)] for every non-blank line.

    Raises:
        DataError: one line naming the file, the line and the problem: file missing, empty, not
            UTF-8, a truncated / corrupt gzip stream, or invalid JSON (with the real column).
    """
    source = str(path)
    if not Path(path).is_file():
        raise DataError(source, None, "path", "file not found")
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, source)
    rows = []
    for n, bline in enumerate(raw.split(b"\n"), 1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(source, n, "text", f"not UTF-8 (byte 0x{bline[e.start]:02x} at column {e.start + 1}); "
                            "re-encode the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line.rstrip("\r"))))
        except json.JSONDecodeError as e:
            raise DataError(source, n, "json", f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not rows:
        raise DataError(source, None, "records", "empty file (no JSON lines)")
    return rows


def _gunzip(data: bytes, source: str) -> bytes:
    """Decompress gzip bytes; a truncated or corrupt stream is a `DataError` at the first bad line."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data)
    except zlib.error as e:
        raise DataError(source, None, "gzip", f"corrupt gzip data ({e})") from None
    if not d.eof:
        line = out.count(b"\n") + 1
        raise DataError(source, line, "gzip", "truncated gzip file (the stream ends inside this line); "
                        "re-download or re-compress it")
    return out


def read_jsonl(path: str | os.PathLike) -> list[Record]:
    """Read and validate chat records from a plain or gzip JSONL file (blank lines are skipped).

    Args:
        path: the file (gzip detected by magic bytes).

    Returns:
        The records.

    Raises:
        DataError: invalid JSON or a bad record, naming the file and line.
    """
    source = str(path)
    return [check_record(r, source, n) for n, r in read_jsonl_rows(path)]


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records as UTF-8 JSONL (gzip when the name ends in `.gz`).

    Args:
        records: the records.
        path: the file.

    Returns:
        The path written.
    """

    p = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return write_bytes(p, gzip.compress(text.encode(), mtime=0) if p.suffix == ".gz" else text.encode("utf-8"))
