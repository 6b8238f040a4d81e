"""Command-line options generated from config dataclasses: one source of truth per option.

    p = argparse.ArgumentParser()
    add_dataclass_args(p, TrainConfig)                 # --lr, --batch-size, --use-rslora/--no-use-rslora, ...
    cfg = preset("em", **dataclass_overrides(p.parse_args(argv), TrainConfig))

Each field becomes `--field-name`; its help is the field's trailing `# comment` in the class source (or a
`help` entry in the field's metadata); options that are not given stay absent from the namespace, so
`dataclass_overrides` returns only what the user set and a preset's values are kept otherwise.
Types: `bool` -> `--x/--no-x`; `int`, `float`, `str`; `X | None` accepts `none`; tuples and lists take
several values; `Literal[...]` (also as a tuple's element type) becomes `choices`.

A whole command from a config class and its presets (`add_config_args` + `config_from_args`):

    p = argparse.ArgumentParser()
    add_config_args(p, EMConfig, presets=PRESETS, default_preset="cpu")   # --preset and every field
    cfg = config_from_args(p.parse_args(argv), EMConfig, presets=PRESETS)  # the preset, then the options given
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable, Iterable, Sequence

_COMMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:[^#]*#\s*(.+?)\s*$")


def field_help(cls: type) -> dict[str, str]:
    """Help text per field: the `help` metadata entry, else the field's trailing `# comment` in the source
    (of the class, or of the base class that declares it with a comment).

    Args:
        cls: a dataclass (its source, and its dataclass bases' sources, are read for the comments when available).

    Returns:
        `{field name: help text}` for the fields that have one.
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first: a subclass's own comment wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            for line in inspect.getsource(klass).splitlines():
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
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and set(args) <= {int, float, str}:
        order = [t for t in (int, float, str) if t in args]

        def value(s: str) -> int | float | str:
            for t in order:
                try:
                    return t(s)
                except ValueError:
                    continue
            raise argparse.ArgumentTypeError(f"invalid value {s!r} (expected {' or '.join(t.__name__ for t in order)})")
        value.__name__ = "|".join(t.__name__ for t in order)
        return value
    raise TypeError(f"{name}: no command-line type for {tp!r}")


def _split_union(tp: Any) -> tuple[Any, Any | None]:
    """(scalar part, sequence part) of a union such as `int | str | tuple[int, ...]`."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp, None
    seqs = [a for a in typing.get_args(tp) if typing.get_origin(a) in (tuple, list)]
    if not seqs:
        return tp, None
    scalars = [a for a in typing.get_args(tp) if a not in seqs]
    return (typing.Union[tuple(scalars)] if len(scalars) > 1 else scalars[0]) if scalars else None, seqs[0]


def _none_or(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null") else fn(s)
    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def typed(value: Any, flag: str | None = None) -> str:
    """A value as a user types it on the command line: `none`, `0.5 1.0` for a tuple, a string
    unquoted, `--x` / `--no-x` for a boolean (with `flag`, the option's name).

    Args:
        value: the value (a default, a preset's field).
        flag: the boolean option's flag (e.g. "--use-rslora"); without it a bool prints as true/false.

    Returns:
        The text.
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        if flag:
            return flag if value else "--no-" + flag.removeprefix("--")
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return " ".join(typed(v) for v in value) if value else "(empty)"
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value)
    return str(value)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                       title: str | None = None, shown: Any = None, description: str | None = None) -> list[str]:
    """Add one option per field of the dataclass `cls` to `parser`.

    Args:
        parser: the parser (or subparser) to extend.
        cls: a dataclass type; its defaults are shown in the help but not stored (absent options stay absent);
            a field without a default becomes a required option.
        exclude: field names to leave out (options the command names itself).
        title: an argument-group title (default: the class name).
        shown: an instance of `cls` whose values the help shows as the defaults (e.g. the default preset);
            None: the class defaults.
        description: a sentence shown under the group's title.

    Returns:
        The field names added (the namespace attribute of each is the field name).
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} fields", description)
    added = []
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _optional_inner(hints[f.name])
        scalar_part, seq_part = _split_union(tp)
        if seq_part is not None:  # e.g. int | str | tuple[int, ...]: one value or several
            elems = [a for a in typing.get_args(seq_part) if a is not Ellipsis]
            parts = set(typing.get_args(scalar_part)) if typing.get_args(scalar_part) else {scalar_part}
            parts |= set(elems)
            parts.discard(None)
            tp = tuple[typing.Union[tuple(parts)] if len(parts) > 1 else parts.pop(), ...]  # type: ignore[misc]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if shown is not None:
            default, required = getattr(shown, f.name), False
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "")
        if optional:  # the user types `none`
            text = re.sub(r"\bNone\b", "none", text)
        shown_default = typed(default, flag if tp is bool else None)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{text} ({'required' if required else f'default: {shown_default}'})"
                                      .strip().replace("%", "%%")}  # argparse formats help with %
        if required:
            kw["required"] = True
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
            kw["type"] = type(kw["choices"][0])
        elif origin in (tuple, list):
            targs = typing.get_args(tp)
            elems = [a for a in targs if a is not Ellipsis]
            fn: Callable[[str], Any]
            if elems and typing.get_origin(elems[0]) is typing.Literal:  # e.g. tuple[Literal["a", "b"], ...]
                kw["choices"] = list(typing.get_args(elems[0]))
                fn = type(kw["choices"][0])
            else:
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
    """The fields of `cls` the user set on the command line.

    Args:
        ns: the parsed namespace (options added by `add_dataclass_args`; unset ones are absent).
        cls: the dataclass.
        exclude: field names to leave out.

    Returns:
        `{field: value}` with lists turned into the field's tuple type, a single value kept for a
        scalar-or-tuple field, and a lone `none` into None.

    Raises:
        ValueError: `none` given together with other values.
    """
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
            else:
                scalar_part, seq_part = _split_union(tp)
                scalars = set(typing.get_args(scalar_part) or (scalar_part,)) if seq_part is not None else set()
                if seq_part is not None and len(v) == 1 and type(v[0]) in scalars:
                    v = v[0]  # e.g. `--layers all` or `--layers 15` for `int | str | tuple[int, ...]`
                elif seq_part is not None:
                    elems = {a for a in typing.get_args(seq_part) if a is not Ellipsis}
                    if odd := [x for x in v if type(x) not in elems]:  # e.g. `--layers 3 all`
                        raise ValueError(f"--{f.name.replace('_', '-')}: {odd[0]!r} must be the only value")
                    v = tuple(v)
                elif typing.get_origin(tp) is tuple:
                    v = tuple(v)
        out[f.name] = v
    return out


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, presets: dict[str, Any] | None = None,
                    default_preset: str | None = None, exclude: Iterable[str] = (), title: str | None = None) -> list[str]:
    """`--preset` (when `presets` is given) and one option per field of `cls`.

    Args:
        parser: the parser to extend.
        cls: the config dataclass.
        presets: name -> instance of `cls`; the options given on the command line override the preset's fields.
        default_preset: the preset used when `--preset` is not given (default: none, i.e. `cls()`).
        exclude: fields the command names itself.
        title: the argument-group title.

    Returns:
        The field names added.
    """
    if presets:
        parser.add_argument("--preset", default=default_preset, choices=sorted(presets),
                            help=f"start from this configuration; options given override its fields (default: {default_preset})")
    shown = presets[default_preset] if presets and default_preset is not None else None
    return add_dataclass_args(parser, cls, exclude=exclude, title=title or (
        f"{cls.__name__} fields (defaults: the {default_preset} preset's)" if shown is not None else None), shown=shown)


def config_from_args(ns: argparse.Namespace, cls: type, *, presets: dict[str, Any] | None = None,
                     exclude: Iterable[str] = (), **fixed: Any) -> Any:
    """The config the command line asks for: the preset (or `cls()`), with the fields the user set replaced.

    Args:
        ns: the parsed namespace (from a parser extended by `add_config_args`).
        cls: the config dataclass.
        presets: the same mapping given to `add_config_args`.
        exclude: fields left out of the parser.
        **fixed: fields the command sets itself (applied last).

    Returns:
        An instance of `cls`.
    """
    name = getattr(ns, "preset", None)
    base = presets[name] if presets and name is not None else cls()
    return dataclasses.replace(base, **dataclass_overrides(ns, cls, exclude=exclude), **fixed)


def config_parser(cls: type, *, description: str, out: str, out_help: str = "run directory (rerun the same command to resume)",
                  presets: dict[str, Any] | None = None, default_preset: str | None = None, exclude: Iterable[str] = (),
                  title: str | None = None, groups: Sequence[tuple[type, str] | tuple[type, str, str]] = (),
                  prog: str | None = None) -> argparse.ArgumentParser:
    """A study's command line: `--out`, `--preset`, one option per field of `cls`, and extra option groups.

    Args:
        cls: the study's config dataclass.
        description: the parser's description (a study passes its module docstring's first line).
        out: the default run directory.
        out_help: the help of `--out`.
        presets: name -> instance of `cls` (see `add_config_args`).
        default_preset: the preset used when `--preset` is not given.
        exclude: fields of `cls` left out.
        title: the title of `cls`'s option group.
        groups: (dataclass, title) or (dataclass, title, description) of further option groups, e.g.
            `(JudgeOptions, "judge", "with --judge none (the default) ...")`: a plain title, and what the
            default means in the description below it.
        prog: the program name shown in the usage line.

    Returns:
        The parser; `parse_config` turns its result into the config and one instance per group.
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", default=out, help=out_help)
    add_config_args(p, cls, presets=presets, default_preset=default_preset, exclude=exclude, title=title)
    for group_cls, group_title, *about in groups:
        add_dataclass_args(p, group_cls, title=group_title, description=about[0] if about else None)
    return p


def parse_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None, cls: type, *,
                 presets: dict[str, Any] | None = None, exclude: Iterable[str] = (),
                 groups: Sequence[type] = (), usage_errors: bool = True) -> tuple[argparse.Namespace, Any, list[Any]]:
    """Parse `argv` with a `config_parser` and build the config and the group instances.

    Args:
        parser: the parser from `config_parser`.
        argv: the arguments (None: `sys.argv[1:]`).
        cls: the config dataclass.
        presets: the same mapping given to `config_parser`.
        exclude: the same fields left out.
        groups: the group dataclasses, in the order wanted back.
        usage_errors: turn a `ValueError` from a dataclass's own checks into a usage error (the one-line
            message, exit status 2); False lets it propagate (a notebook caller sees the exception).

    Returns:
        (namespace, config, [one instance per group]).
    """
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_args(ns, cls, presets=presets, exclude=exclude)
        return ns, cfg, [g(**dataclass_overrides(ns, g)) for g in groups]
    except ValueError as e:
        if not usage_errors:
            raise
        parser.error(str(e))
