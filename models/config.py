"""One way for a config dataclass to become a plain dict and back, and to check its values.

Every config (`RQVAEConfig`, `RouterConfig`, `GeneratorConfig`, the training schedules,
...) derives from `Config`: `to_dict` is `dataclasses.asdict` (what bundles and run
directories store, so the stored format does not depend on this module), and `from_dict`
is its inverse for JSON or TOML input: unknown keys are refused with the list of valid
ones, nested config dicts become their dataclasses and lists become tuples where the
field is a tuple. The `check_*` helpers are the range checks `__post_init__`s call, so
every config words its errors the same way: `RouterConfig.budget must be a positive int,
got 0`.

Pure data handling: no file I/O here (models/ never reads files; readers live in
training/ and the bundle reader).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for config dataclasses: `to_dict` / `from_dict` (see the module docstring)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        return from_dict(cls, data)


def field_names(cls: type) -> list[str]:
    """The fields a config is built from, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def required_fields(cls: type) -> list[str]:
    """The fields without a default (a dict for `from_dict` must hold them)."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def check_keys(cls: type, keys: Iterable[str], where: str = "") -> None:
    """ValueError naming the unknown keys and the valid ones. `where` says where the keys
    came from (a file and section), so the message points at what to edit."""
    known = field_names(cls)
    unknown = sorted(set(keys) - set(known))
    if unknown:
        place = f"{where}: " if where else ""
        raise ValueError(
            f"{place}{cls.__name__}: unknown keys {unknown}; valid keys: {', '.join(known)}"
        )


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """`cls` built from a dict of field values (the inverse of `to_dict`).

    ValueError on unknown or missing keys (the message lists the valid ones); nested
    dataclass fields take dicts, tuple fields take lists. Range checks are the
    dataclass's own (`__post_init__`).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping of field values, got {data!r}")
    check_keys(cls, data)
    missing = [name for name in required_fields(cls) if name not in data]
    if missing:
        raise ValueError(
            f"{cls.__name__}: missing keys {missing}; valid keys: {', '.join(field_names(cls))}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(hints[name], value) for name, value in data.items()})


def _convert(hint: Any, value: Any) -> Any:
    """A JSON/TOML value as the field typed `hint` takes it: dict -> nested dataclass,
    list -> tuple. Anything else is left for the dataclass's checks."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(value)
    return value


# --- checks for __post_init__ ------------------------------------------------------------


def _name(config: object, field: str) -> str:
    return f"{type(config).__name__}.{field}"


def is_int(value: object) -> bool:
    """An int (or NumPy integer), not a bool."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def is_number(value: object) -> bool:
    """A real number (int, float or NumPy scalar), not a bool."""
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def check_positive_ints(config: object, *fields: str) -> None:
    """Each field is an int >= 1."""
    for field in fields:
        value = getattr(config, field)
        if not is_int(value) or value < 1:
            raise ValueError(f"{_name(config, field)} must be a positive int, got {value!r}")


def check_positive_int_tuple(config: object, field: str) -> None:
    """The field is a tuple of ints >= 1 (layer widths)."""
    value = getattr(config, field)
    if not isinstance(value, tuple) or not all(is_int(v) and v >= 1 for v in value):
        raise ValueError(f"{_name(config, field)} must be positive ints, got {value!r}")


def check_range(
    config: object,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    integer: bool = False,
    hint: str = "",
) -> None:
    """The field is a number in the interval from `low` to `high` (None: unbounded),
    closed unless `low_open` / `high_open`; `optional` lets None through, `integer`
    wants an int. `hint` follows the message (what the values mean)."""
    value = getattr(config, field)
    if value is None and optional:
        return
    kind = "an int" if integer else "a number"
    ok = is_int(value) if integer else is_number(value) and not math.isnan(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        interval = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        interval = f"{'<' if high_open else '<='} {high:g}"
    else:
        interval = kind
    if low is not None or high is not None:
        interval = f"{kind} {interval}"
    none = " or None" if optional else ""
    extra = f" {hint}" if hint else ""
    raise ValueError(f"{_name(config, field)} must be {interval}{none}{extra}, got {value!r}")


def check_choice(config: object, field: str, choices: Iterable[object]) -> None:
    """The field is one of `choices`."""
    value = getattr(config, field)
    options = tuple(choices)
    if value not in options:
        raise ValueError(
            f"{_name(config, field)}={value!r} is not supported; choose from {options}"
        )
