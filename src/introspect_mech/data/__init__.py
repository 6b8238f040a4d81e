"""Data layer: chat-record validation, the canonical dataset registry, and the project's generators."""

from . import generators
from .records import DataError, check_record, read_jsonl, validate_records, write_jsonl
from .registry import DatasetInfo, info, load, locate, names

__all__ = [
    "DataError", "check_record", "read_jsonl", "validate_records", "write_jsonl",
    "DatasetInfo", "info", "load", "locate", "names", "generators",
]
