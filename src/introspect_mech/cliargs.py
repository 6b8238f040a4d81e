"""Command-line options generated from config dataclasses: one source of truth per option.

    p = argparse.ArgumentParser()
    add_dataclass_args(p, TrainConfig)                 # --lr, --batch-size, --use-rslora/--no-use-rslora, ...
    cfg = preset("em", **dataclass_overrides(p.parse_args(argv), TrainConfig))

Each field becomes `--field-name`; its help is the field's trailing `# comment` in the class source (or a
`help` entry in the field's metadata); options that are not given stay absent from the namespace, so
`dataclass_overrides` returns only what the user set and a preset's values are kept otherwise.
Types: `bool` -> `--x/--no-x`; `int`, `float`, `str`; `X | None` accepts `none`; tuples and lists take
several values; `Literal[...]` becomes `choices`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable, Iterable

_COMMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:[^#]*#\s*(.+?)\s*$")


def field_help(cls: type) -> dict[str, str]:
    """Help text per field: the `help` metadata entry, else the field's trailing `# comment` in the source."""
    out: dict[str, str] = {}
    try:
        for line in inspect.getsource(cls).splitlines():
            if m := _COMMENT.match(line):
                out[m.group(1)] = m.group(2)
    except (OSError, TypeError):
        pass
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            out[f.name] = str(f.metadata["help"])
    return out


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _scalar(tp: Any, name: str) -> Callable[[str], Any]:
    if tp in (int, float, str):
        return tp
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and set(args) <= {int, float}:
        def num(s: str) -> int | float:
            try:
                return int(s)
            except ValueError:
                return float(s)
        return num
    raise TypeError(f"{name}: no command-line type for {tp!r}")


def _none_or(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null") else fn(s)
    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                       title: str | None = None) -> list[str]:
    """Add one option per field of the dataclass `cls` to `parser`.

    Args:
        parser: the parser (or subparser) to extend.
        cls: a dataclass type; its defaults are shown in the help but not stored (absent options stay absent).
        exclude: field names to leave out (options the command names itself).
        title: an argument-group title (default: the class name).

    Returns:
        The field names added (the namespace attribute of each is the field name).
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} fields")
    added = []
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _optional_inner(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{helps.get(f.name, '')} (default: {default!r})".strip()}
        flag = "--" + f.name.replace("_", "-")
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
            kw["type"] = type(kw["choices"][0])
        elif origin in (tuple, list):
            targs = typing.get_args(tp)
            elems = [a for a in targs if a is not Ellipsis]
            fn = _scalar(elems[0] if elems else str, f.name)
            fixed = origin is tuple and Ellipsis not in targs and len(elems) > 1 and not optional
            kw["nargs"] = len(elems) if fixed else "+"
            kw["type"] = _none_or(fn) if optional else fn
        else:
            fn = _scalar(tp, f.name)
            kw["type"] = _none_or(fn) if optional else fn
        group.add_argument(flag, **kw)
        added.append(f.name)
    return added


def dataclass_overrides(ns: argparse.Namespace, cls: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of `cls` the user set on the command line (lists turned into the field's tuple type;
    a single `none` into None)."""
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not hasattr(ns, f.name):
            continue
        v = getattr(ns, f.name)
        tp, optional = _optional_inner(hints[f.name])
        if isinstance(v, list):
            if optional and v == [None]:
                v = None
            elif None in v:
                raise ValueError(f"--{f.name.replace('_', '-')}: 'none' must be the only value")
            elif typing.get_origin(tp) is tuple:
                v = tuple(v)
        out[f.name] = v
    return out
