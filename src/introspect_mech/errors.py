"""`DataError`, the one-line bad-input error, and `ModelLoadError`, in the lowest module (`runs` and `data` raise
the first; `models` and `layers.decoder_layers` the second).

`introspect_mech.data.records.DataError` is the same class (imported from here).
"""

from __future__ import annotations

__all__ = ["DataError", "ModelLoadError"]


class DataError(ValueError):
    """Bad input data; the message is one line naming file, line and field.

    Args:
        source: the file (or a `<name>` for in-memory data).
        line: the 1-based line number, or None.
        field: the field at fault (e.g. `messages[1].role`).
        problem: what is wrong.
    """

    def __init__(self, source: str, line: int | None, field: str, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field, problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {problem}")


class ModelLoadError(ValueError):
    """A model, GGUF or adapter that cannot be loaded; the message says what was given and accepted."""
