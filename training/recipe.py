"""Recipe files: one TOML file holding a run's dataset options and stage settings.

    [data]             dataset options: the fields of `training.cli_options.DataOptions`
    [sasrec]           models.sasrec.SASRecConfig (all but n_items, which the data sets)
    [sasrec_train]     training.stages.sasrec.SASRecTrainConfig
    [tokenizer]        training.stages.tokenizer.TokenizerSpec
    [tokenizer_train]  training.stages.tokenizer.TokenizerTrainConfig
    [generator_train]  training.stages.generator.GeneratorTrainConfig

Keys are the dataclass field names. `read_recipe` refuses unknown sections and keys
(naming the valid ones), values of the wrong type, and values the config's own range
checks reject, so a typo fails at once rather than after stage A has trained. TOML has no
null: a field whose default is None (e.g. TokenizerSpec.codebook_size) is left out to
keep it. Which sections apply is the command's business (`flexcode train sasrec` reads
[data], [sasrec] and [sasrec_train]); command-line flags win over the file
(`training.cli_options.CommandSettings`).
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import check_keys, field_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pyproject pins tomli on 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Section:
    """What one recipe section fills: a config dataclass, minus the fields the run sets
    itself (`fixed`, e.g. SASRecConfig.n_items, with the stand-in value used to
    validate the section before the data is read)."""

    config: type
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return [name for name in field_names(self.config) if name not in self.fixed]


@dataclass(frozen=True)
class Recipe:
    """A recipe's values by section (only the keys the file sets)."""

    path: Path | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def values(self, section: str) -> dict[str, Any]:
        return dict(self.sections.get(section, {}))


def read_recipe(path: Path, schema: Mapping[str, Section]) -> Recipe:
    """The recipe in `path`, checked against `schema` (section name -> Section).

    ValueError (the file and section in the message) on an unreadable file, an unknown
    section or key, a value of the wrong type or out of its range.
    """
    path = Path(path).expanduser()
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"recipe {path} not found (recipes/ holds the shipped ones)") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"recipe {path} is not valid TOML: {error}") from None
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ValueError(
            f"recipe {path}: unknown section(s) {unknown}; valid sections: {', '.join(schema)}"
        )
    sections = {}
    for name, values in raw.items():
        where = f"recipe {path} [{name}]"
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a table of settings, got {values!r}")
        sections[name] = _section_values(schema[name], values, where)
    return Recipe(path, sections)


def _section_values(section: Section, values: dict[str, Any], where: str) -> dict[str, Any]:
    """The section's values as the config's fields take them, checked by the config."""
    fixed = [key for key in values if key in section.fixed]
    if fixed:
        raise ValueError(f"{where}: {fixed} are set by the run, not the recipe")
    check_keys(section.config, values, where)
    hints = typing.get_type_hints(section.config)
    converted = {key: _typed(hints[key], value, f"{where} {key}") for key, value in values.items()}
    try:
        section.config(**section.fixed, **converted)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return converted


# Field type -> the TOML value types it takes.
_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
}


def _typed(hint: Any, value: Any, where: str) -> Any:
    """A TOML value as a field typed `hint` takes it (int -> float, str -> Path, list ->
    tuple); ValueError naming the key when the type does not fit."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML cannot say None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        (item, *_) = typing.get_args(hint)
        return tuple(_typed(item, v, where) for v in value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    accepted = _SCALARS.get(hint)
    if accepted is not None and isinstance(value, accepted):
        if isinstance(value, bool) and hint is not bool:
            pass  # true/false is no number
        else:
            return float(value) if hint is float else value
    name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{where} must be {name}, got {value!r}")
