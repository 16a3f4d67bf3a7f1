"""Options declared once: a dataclass field with its type, default and help text.

Every setting a user can give ``aevb train`` is a field of a small dataclass declared with
:func:`option`. Its type annotation is the truth about what it accepts (``Literal[...]`` for
choices, ``int | None`` for an optional count); its metadata holds the help text and, where the
command line needs more than the type says, a parser or a metavar. From these declarations
:mod:`aevb.settings` derives the command-line flags (:func:`add_arguments`), the checks of config
files and of keyword arguments (:func:`check_value`) and what a run records. This module knows
nothing of VAEs: it is the machinery only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

MAX_COUNT = 10**15
"""The largest count an option takes: beyond it no size fits in memory or finishes."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    parse: Callable[[str], Any] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    check: Callable[[Any], str | None] | None = None,
    choices: Any = None,
    const: Any = None,
) -> Any:
    """A dataclass field that is a user-facing option.

    ``parse`` turns a command-line string into the value (default: from the type); ``flag`` is
    the flag's name when it is not ``--name-with-dashes``; ``aliases`` are older spellings that
    still work; ``cli=False`` keeps a recorded setting off the command line; ``check`` returns a
    one-line complaint about a value of the right type (a range), or None. ``choices`` names a
    live registry (a dict or tuple read at each check) for the choices a user can extend, such as
    the latent families of :func:`aevb.families.register_family`; fixed choices are a
    ``Literal[...]`` type instead. ``const`` makes the flag's value optional: the flag alone
    gives ``const`` (``--mlflow`` alone, ``--mlflow URI``).
    """
    meta = {
        "help": help,
        "parse": parse,
        "metavar": metavar,
        "flag": flag,
        "aliases": aliases,
        "cli": cli,
        "check": check,
        "choices": choices,
        "const": const,
    }
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a dataclass's fields."""
    return typing.get_type_hints(cls)


def declared(cls: type) -> list[dataclasses.Field]:
    """The option fields of a dataclass (those made with :func:`option`), in order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _literal_choices(hint: Any) -> tuple | None:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            found = _literal_choices(h)
            if found is not None:
                return found
    return None


def choices_of(cls: type, name: str) -> tuple | None:
    """The allowed values of option ``name``: its live registry, or its ``Literal`` type's."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.metadata.get("choices") is not None:
        return tuple(sorted(field.metadata["choices"]))
    return _literal_choices(hints(cls)[name])


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a value (from Python or a config file) has the declared type."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_type_ok(v, h) for v, h in zip(value, args, strict=True))
        )
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_type_ok(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, str | Path)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    """How a type reads in an error message ('an integer or None', 'one of ...')."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(typing.get_args(hint))} integers"
    if typing.get_origin(hint) is list:
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def flag_of(cls: type, name: str, prefix: str = "") -> str:
    """The command-line spelling of option ``name`` (``--latent-dim``)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.metadata.get("flag") or "--" + (prefix + name).replace("_", "-")


def check_value(cls: type, name: str, value: Any, where: str = "", prefix: str = "") -> None:
    """Raise ConfigError (one line) unless ``value`` fits field ``name`` of ``cls``."""
    hint = hints(cls)[name]
    what = f"{where}: " if where else ""
    label = flag_of(cls, name, prefix)
    choices = choices_of(cls, name)
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    live = field.metadata.get("choices") is not None
    wrong = not _type_ok(value, hint) or (
        live and choices is not None and value is not None and value not in choices
    )
    if wrong and choices is not None and isinstance(value, str):
        listed = ", ".join(str(c) for c in choices if c is not None)
        raise ConfigError(f"{what}unknown {label} {value!r}; choose one of {listed}")
    if wrong:
        raise ConfigError(
            f"{what}{label} = {value!r} has the wrong type; expected {_type_name(hint)}"
        )
    check = field.metadata.get("check")
    complaint = check(value) if check is not None and value is not None else None
    if complaint:
        raise ConfigError(f"{what}{label} must be {complaint}, got {value!r}")


def validate(obj: Any, where: str = "") -> None:
    """Check every option field of a dataclass instance (call it from ``__post_init__``)."""
    for f in declared(type(obj)):
        check_value(type(obj), f.name, getattr(obj, f.name), where, getattr(obj, "prefix", ""))


def unknown_key(key: str, valid: Iterable[str], where: str) -> ConfigError:
    """The error for an unknown option, naming the closest valid one."""
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (see 'aevb train --help')")


# --------------------------------------------------------------------------- value checks


def at_least(lo: float) -> Callable[[Any], str | None]:
    """A range check: the value must be finite and >= lo."""
    return lambda v: None if math.isfinite(float(v)) and v >= lo else f"a number >= {lo:g}"


def above(lo: float) -> Callable[[Any], str | None]:
    """A range check: the value must be > lo (inf allowed: 'never')."""
    return lambda v: None if float(v) > lo else "positive" if lo == 0 else f"above {lo:g}"


def between(lo: int, hi: int) -> Callable[[Any], str | None]:
    """A range check for counts: lo <= value <= hi."""
    return lambda v: None if lo <= v <= hi else f"an integer from {lo:,} to {hi:,}"


def positive(v: Any) -> str | None:
    """A range check for counts: 1 <= value <= 10^15."""
    return None if 1 <= v <= MAX_COUNT else "a positive integer up to 10^15"


# --------------------------------------------------------------------------- command-line parsers


def positive_int(text: str) -> int:
    """A count from 1 to 10^15; '1e6' is accepted."""
    try:
        v = int(float(text)) if "e" in text.lower() else int(text)
    except (ValueError, OverflowError):  # "1e999" is inf, which no integer is
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to 10^15, got {text!r}")
    return v


def bounded_int(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """A parser of integers from lo to hi, described as ``what`` in its error."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    parse.__name__ = "int"
    return parse


def comma_list(text: str) -> list[str | int]:
    """'a,b,3' -> ['a', 'b', 3]: names, or 0-based indices written as integers."""
    items = [c.strip() for c in text.split(",") if c.strip()]
    return [int(c) if c.lstrip("-").isdigit() else c for c in items]


def _parser_for(f: dataclasses.Field, hint: Any) -> Callable[[str], Any] | None:
    if f.metadata.get("parse") is not None:
        return f.metadata["parse"]
    base = {h for h in typing.get_args(hint) if h is not type(None)} or {hint}
    if base == {int}:
        return positive_int
    if base == {float}:
        return float
    if typing.get_origin(hint) is list or any(typing.get_origin(h) is list for h in base):
        return comma_list
    return None


def _help_text(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    shown = f.default not in (None, dataclasses.MISSING) and not isinstance(f.default, bool)
    if "default" not in text and shown:
        text += f" (default {f.default})"
    return text


def _tuple_lengths(hint: Any) -> set[int]:
    """The lengths of the fixed-size tuples a type allows (``tuple[int, int] | None``: {2})."""
    found = [hint, *typing.get_args(hint)]
    return {len(typing.get_args(h)) for h in found if typing.get_origin(h) is tuple}


def add_arguments(parser: Any, cls: type, prefix: str = "") -> None:
    """Add a flag per option field of ``cls`` to an argparse parser or group.

    Defaults are left out of the namespace (``argparse.SUPPRESS``) so that a caller can tell the
    flags given from the rest: config files, then flags, override the declared defaults.
    """
    for f in declared(cls):
        if not f.metadata["cli"]:
            continue
        name = f"{prefix}{f.name}"
        hint = hints(cls)[f.name]
        flag = f.metadata["flag"] or "--" + name.replace("_", "-")
        names = [flag, *f.metadata["aliases"]]
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help_text(f)}
        if hint is bool:
            if f.default:  # on by default: the flag turns it off
                names = [f.metadata["flag"] or "--no-" + name.replace("_", "-")]
                kw.update(action="store_false")
            else:
                kw.update(action="store_true")
            parser.add_argument(*names, **kw)
            continue
        choices = choices_of(cls, f.name)
        if choices is not None and f.metadata.get("parse") is None:
            kw["choices"] = [c for c in choices if c is not None]
        elif lengths := _tuple_lengths(hint):  # H W, or H W C: checked by check_value
            kw.update(nargs=lengths.pop() if len(lengths) == 1 else "+", type=positive_int)
        else:
            kw["type"] = _parser_for(f, hint)
        if f.metadata.get("const") is not None:  # the flag alone means const
            kw.update(nargs="?", const=f.metadata["const"])
        if f.metadata["metavar"] is not None:
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(*names, **{k: v for k, v in kw.items() if v is not None})
