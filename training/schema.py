"""Typed preset sections: a TOML table checked against its dataclass, key by key, before anything runs.

A section's dataclass is its schema. Each value is checked against the field's type hint (``int``, ``float``
(an integer is accepted), ``bool``, ``str``, ``Literal[...]``, enums, ``X | None``, ``tuple[X, ...]``,
``list[X]``, ``dict[K, V]``, nested dataclasses) and against the rule declared next to the field in its metadata:

    max_steps: int = field(default=-1, metadata=bounds(ge=1, also=(-1,)))
    alphas: tuple[float, ...] = field(default=(0.0, 1.0), metadata=bounds(nonempty=True))

A TOML table cannot say NaN or infinity where a number is meant: every ``float`` must be finite. Whatever is
wrong is one sentence naming the key, the value and what is valid, e.g.
``preset 'smoke' [sft] learning_rate = "fast": expected a finite number > 0``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from training.errors import PresetError

VALID = "valid"  # the metadata key of a field's rule


@dataclass(frozen=True)
class Range:
    """Allowed numbers (bounds, plus special values outside them) and, for lists, tables and strings, emptiness.

    For a list or table the bounds apply to each item and ``nonempty`` to the container.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()
    nonempty: bool = False

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is within the bounds (or one of ``also``); values that are not numbers pass.

        Args:
            value: The value (a number, or anything else).

        Returns:
            False only for a number outside the bounds and not in ``also``.

        Example:
            >>> from training.schema import Range
            >>> Range(ge=1, also=(-1,)).ok(-1), Range(ge=1, also=(-1,)).ok(0)
            (True, False)
        """
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value in self.also:
            return True
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    @property
    def text(self) -> str:
        """The bounds in words, e.g. ``in [0, 1]``, ``≥ 1, or -1``; empty when there are none."""
        lo = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        hi = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            out = f"in {lo}, {hi}"
        elif lo:
            out = f"≥ {lo[1:]}" if lo[0] == "[" else f"> {lo[1:]}"
        elif hi:
            out = f"≤ {hi[:-1]}" if hi[-1] == "]" else f"< {hi[:-1]}"
        else:
            out = ""
        if out and self.also:
            out += ", or " + " or ".join(toml_repr(v) for v in self.also)
        return out


@dataclass(frozen=True)
class Matches:
    """A string matching ``pattern`` in full; ``text`` says which strings those are."""

    pattern: str
    text: str

    def ok(self, value: Any) -> bool:
        """Whether ``value`` matches ``pattern`` in full; values that are not strings pass.

        Args:
            value: The value.

        Returns:
            False only for a string that does not match.

        Example:
            >>> from training.schema import Matches
            >>> Matches(r"cpu|cuda", "cpu or cuda").ok("gpu")
            False
        """
        return not isinstance(value, str) or re.fullmatch(self.pattern, value) is not None


def bounds(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           also: tuple = (), nonempty: bool = False) -> dict:
    """Field metadata declaring a `Range`.

    Args:
        ge, gt, le, lt: Bounds on the number (on each item of a list or table).
        also: Values allowed outside the bounds (e.g. ``-1`` for "not set").
        nonempty: A list, table or string must not be empty.

    Returns:
        The ``metadata`` mapping for ``dataclasses.field``.

    Example:
        >>> lora_r: int = field(default=64, metadata=bounds(ge=1))  # doctest: +SKIP
    """
    return {VALID: Range(ge=ge, gt=gt, le=le, lt=lt, also=tuple(also), nonempty=nonempty)}


def matches(pattern: str, text: str) -> dict:
    """Field metadata declaring that a string must match ``pattern`` (``text`` names the valid strings).

    Args:
        pattern: A regular expression the whole string must match.
        text: The valid strings in words, for error messages.

    Returns:
        The ``metadata`` mapping for ``dataclasses.field``.

    Example:
        >>> device: str = field(default="cpu", metadata=matches(r"auto|cpu|cuda(:\\d+)?", "auto, cpu, cuda or cuda:<n>"))  # doctest: +SKIP
    """
    return {VALID: Matches(pattern, text)}


PROBABILITY = bounds(ge=0, le=1)
POSITIVE = bounds(gt=0)
AT_LEAST_ONE = bounds(ge=1)
NON_NEGATIVE = bounds(ge=0)
NON_EMPTY = bounds(nonempty=True)


def toml_repr(value: Any) -> str:
    """``value`` as it would be written in a preset (strings quoted, ``true``, ``nan``, ``[1, 2]``).

    Args:
        value: A value read from TOML (or any other, shown with ``str``).

    Returns:
        Its TOML spelling.

    Example:
        >>> from training.schema import toml_repr
        >>> print(toml_repr([1, "a", True, float("nan")]), toml_repr({"lr": 0.1}))
        [1, "a", true, nan] { lr = 0.1 }
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_repr(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + " }" if value else "{}"
    return str(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class _Mismatch(Exception):
    """A value that does not fit a type; ``item`` locates the offending part of a list or table."""

    def __init__(self, item: str = "") -> None:
        super().__init__(item)
        self.item = item


def _union_arms(hint: Any) -> list | None:
    if get_origin(hint) in (Union, types.UnionType):
        return [a for a in get_args(hint) if a is not type(None)]
    return None


def describe(hint: Any, rule: Range | Matches | None = None, *, plural: bool = False) -> str:
    """What a value of type ``hint`` under ``rule`` looks like, in words (``an integer ≥ 1``).

    Args:
        hint: The field's type hint.
        rule: The field's `Range` or `Matches` (``None``: no rule).
        plural: Describe several values (``integers``, not ``an integer``), as inside a list.

    Returns:
        The phrase.

    Example:
        >>> from training.schema import Range, describe
        >>> describe(int, Range(ge=1)), describe(tuple[float, ...], Range(nonempty=True))
        ('an integer ≥ 1', 'a non-empty list of finite numbers')
    """
    rng = rule.text if isinstance(rule, Range) else ""
    if isinstance(rule, Matches):
        return rule.text
    arms = _union_arms(hint)
    if arms is not None:
        return " or ".join(describe(a, rule, plural=plural) for a in arms)
    origin, args = get_origin(hint), get_args(hint)
    container = origin in (tuple, list, dict) or hint in (tuple, list, dict)
    if container:
        nonempty = "non-empty " if isinstance(rule, Range) and rule.nonempty else ""
        each = f", each {rng}" if rng else ""
        if origin is dict or hint is dict:
            inner = describe(args[1], plural=True) if args else "values"
            return f"{'' if plural else 'a '}{nonempty}table{'s' if plural else ''} of {inner}{each}"
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)}: " + ", ".join(describe(a) for a in args)
        inner = describe(args[0], plural=True) if args else "values"
        return f"{'' if plural else 'a '}{nonempty}list{'s' if plural else ''} of {inner}{each}"
    if origin is Literal:
        return "one of " + ", ".join(toml_repr(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(toml_repr(m.value) for m in hint)
    if dataclasses.is_dataclass(hint):
        return f"{'' if plural else 'a '}table{'s' if plural else ''} with keys {sorted(_field_map(hint))}"
    words = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
             float: ("a finite number", "finite numbers"), str: ("a string", "strings"),
             Path: ("a path (a string)", "paths (strings)")}
    if hint in words:
        base = words[hint][1 if plural else 0]
        if hint is str and isinstance(rule, Range) and rule.nonempty:
            base = "non-empty " + base if plural else "a non-empty string"
        return f"{base} {rng}" if rng and hint in (int, float) and not plural else base
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, rule: Range | Matches | None) -> Any:
    """``value`` as type ``hint`` (tuples for tuple fields, floats for float fields), or raise `_Mismatch`."""
    if hint is Any or hint is object:
        return value
    arms = _union_arms(hint)
    if arms is not None:
        for arm in arms:
            try:
                return _convert(value, arm, rule)
            except _Mismatch:
                continue
        raise _Mismatch()
    origin, args = get_origin(hint), get_args(hint)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch()
        if isinstance(rule, Range) and rule.nonempty and not value:
            raise _Mismatch("it is empty")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch(f"it has {len(value)} items")
            hints = list(args)
        else:
            hints = [args[0] if args else Any] * len(value)
        out = [_item(v, h, rule, f"item {i + 1}") for i, (v, h) in enumerate(zip(value, hints))]
        return tuple(out) if (origin is tuple or hint is tuple) else out
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch()
        if isinstance(rule, Range) and rule.nonempty and not value:
            raise _Mismatch("it is empty")
        vhint = args[1] if args else Any
        return {k: _item(v, vhint, rule, f"key {k}") for k, v in value.items()}
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise _Mismatch()
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise _Mismatch() from None
    if dataclasses.is_dataclass(hint):  # inside a list or table (a section's own nested table is parsed directly)
        if not isinstance(value, Mapping):
            raise _Mismatch()
        try:
            return parse_section(hint, value, "")
        except PresetError as e:
            raise _Mismatch(str(e).lstrip(": ")) from None
    out = _scalar(value, hint)
    if rule is not None and not rule.ok(out):
        raise _Mismatch()
    if isinstance(rule, Range) and rule.nonempty and out == "":
        raise _Mismatch("it is empty")
    return out


def _item(value: Any, hint: Any, rule: Range | Matches | None, where: str) -> Any:
    item_rule = rule if isinstance(rule, Matches) else (dataclasses.replace(rule, nonempty=False) if rule else None)
    try:
        return _convert(value, hint, item_rule)
    except _Mismatch as e:
        raise _Mismatch(f"{where} is {toml_repr(value)}" + (f" ({e.item})" if e.item else "")) from None


def _scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Mismatch()
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        raise TypeError(f"the preset schema cannot check type {hint!r}; give the field a supported type hint")
    raise _Mismatch()


@cache
def _field_map(cls: type) -> dict[str, tuple[Any, Range | Matches | None]]:
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get(VALID)) for f in dataclasses.fields(cls) if f.init}


def parse_section(cls: type, raw: Any, where: str) -> Any:
    """The table ``raw`` as an instance of dataclass ``cls``, every value checked; missing keys take defaults.

    Args:
        cls: The section's dataclass (its type hints and field metadata are the schema).
        raw: The TOML table (a dict).
        where: How errors name the section, e.g. ``"preset 'smoke' [sft]"``.

    Returns:
        ``cls(**values)`` with the values converted (lists to tuples for tuple fields, ints to floats for floats).

    Raises:
        PresetError: one sentence naming the key, the value and what is valid.

    Example:
        >>> from training.sft import Stage1Config
        >>> parse_section(Stage1Config, {"learning_rate": 1e-4}, "preset 'mine' [sft]").learning_rate
        0.0001
    """
    if not isinstance(raw, Mapping):
        raise PresetError(f"{where} must be a table of keys, got {toml_repr(raw)}")
    fields = _field_map(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise PresetError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    values = {}
    for key, value in raw.items():
        hint, rule = fields[key]
        nested = _nested_dataclass(hint)
        if nested is not None and isinstance(value, Mapping):
            values[key] = parse_section(nested, value, f"{where} {key}")
            continue
        try:
            values[key] = _convert(value, hint, rule)
        except _Mismatch as e:
            detail = f"; {e.item}" if e.item else ""
            raise PresetError(f"{where} {key} = {toml_repr(value)}: expected {describe(hint, rule)}{detail}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PresetError(f"{where}: {e}") from e


def _nested_dataclass(hint: Any) -> type | None:
    for h in _union_arms(hint) or [hint]:
        if dataclasses.is_dataclass(h):
            return h
    return None


def non_finite(data: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number anywhere in ``data``, or None.

    Args:
        data: A value, table or list (nested), as read from TOML.
        path: The dotted path of ``data`` itself (empty at the top).

    Returns:
        The path (``sft.lr``, ``phases[2].budget``: items counted from 1), or ``None`` when every number is finite.

    Example:
        >>> from training.schema import non_finite
        >>> non_finite({"internalize": {"phases": [{"budget": 1.0}, {"budget": float("inf")}]}})
        'internalize.phases[2].budget'
    """
    if isinstance(data, float) and not math.isfinite(data):
        return path
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for k, v in items:
        found = non_finite(v, (f"{path}.{k}" if path else k) if isinstance(k, str) else f"{path}[{k + 1}]")
        if found is not None:
            return found
    return None
