"""Typed configs: a YAML mapping becomes a dataclass once, where it is loaded.

Every later piece of code receives the dataclass, never the raw dict, so a typo is caught here with
the file and key named, instead of as a KeyError deep inside a stage. Validation raises
`ConfigError`; nothing relies on `assert`, which vanishes under `python -O`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping that cannot become its typed config; the message names file and key."""


class _RepeatedKey(yaml.YAMLError):
    """A key written twice in one mapping; carries what the message needs (the loader has no file name)."""

    def __init__(self, key: object, first_line: int, second_line: int) -> None:
        super().__init__(key, first_line, second_line)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping. PyYAML keeps the last one silently, so a
    pasted block or an edit below an old value would change a run without a word. Keys brought in by a
    merge (`<<: *anchor`) may still be overridden: that is what merging is for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first != key_node.start_mark.line + 1:
                raise _RepeatedKey(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax problems (and repeated keys) into errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _RepeatedKey as err:
        raise ConfigError(
            f"{path}: key '{err.key}' appears twice, at lines {err.first_line} and {err.second_line} "
            f"(YAML would keep only the last); remove one"
        ) from None
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(values).__name__}")
    return values


def nearest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The closest valid spelling of `name`, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(source: str, key: str, valid: typing.Iterable[str], what: str = "key") -> str:
    valid = sorted(valid)
    hint = nearest(key, valid)
    suggestion = f"; did you mean '{hint}'?" if hint else ""
    return f"{source}: unknown {what} '{key}'{suggestion} Valid {what}s: {', '.join(valid)}"


def build(cls: type[T], values: Mapping[str, Any], source: str) -> T:
    """Check `values` against the dataclass `cls` (names, required keys, types) and instantiate it.

    `source` names where the values came from (usually the YAML file) for error messages.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(unknown_key_message(source, str(key), fields))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in values:
            kwargs[name] = coerce(values[name], hints[name], f"{source}: key '{name}'")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{name}' ({describe(hints[name])})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {err}") from None


def describe(tp: Any) -> str:
    """A readable name for a type annotation, used in error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple):
        return f"list of {describe(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {describe(args[1])}" if args else "mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check one value against its annotation, converting only where YAML cannot express the type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except ConfigError as err:
                # a mapping meant for a dataclass or mapping option: its own error names the inner key and choices
                if isinstance(value, Mapping) and (
                    dataclasses.is_dataclass(option) or typing.get_origin(option) is dict
                ):
                    raise
                errors.append(err)
        raise ConfigError(f"{where} must be {describe(tp)}, got {value!r}")
    if origin is Literal:
        return _coerce_literal(value, args, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be {describe(tp)}, got {value!r}")
        item = args[0] if args else Any
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be {describe(tp)}, got {value!r}")
        item = args[1] if args else Any
        return {str(k): coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and (number := _float_text(value)) is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    raise ConfigError(f"{where} must be {describe(tp)}, got {value!r} ({type(value).__name__})")


def _coerce_literal(value: Any, allowed: tuple[Any, ...], where: str) -> Any:
    """One of the allowed values; an int matches its spelling among them (`precision: 32` is YAML's
    int, the allowed value the string '32'), so a config need not quote a number."""
    if value in allowed:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in allowed:
        return str(value)
    choices = ", ".join(repr(a) for a in allowed)
    hint = nearest(str(value), [str(a) for a in allowed])
    suggestion = f"; did you mean '{hint}'?" if hint else ""
    raise ConfigError(f"{where} has value {value!r}{suggestion} Allowed: {choices}")


def _float_text(text: str) -> float | None:
    """The number a string spells, else None. PyYAML 1.1 reads `3e-3` (no dot) and `.inf` forms as
    strings, so a float key accepts numeric text; NaN is refused, as no key means 'not a number'."""
    text = text.strip().lower()
    if text in {"inf", "+inf", "-inf", ".inf", "+.inf", "-.inf"}:
        return -math.inf if text.startswith("-") else math.inf
    try:
        number = float(text)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def to_record(config: Any) -> dict[str, Any]:
    """A plain-types dict of a config, safe to store in event files and JSON (paths become strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
