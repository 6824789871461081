"""ACORN's condition syntax, written once for hard_cuts, target_tracks and weighting.

A condition maps a field name to one of:
  - a single value:            equal to it                (`track_particle_primary: 1`)
  - `[lo, hi]` (two numbers):  lo <= x <= hi              (`track_particle_pt: [1000, .inf]`, MeV)
  - `[op, value]` with op in   in, not_in, is, is_not, within, not_within
The conditions are parsed once when the config is loaded, so a typo in an operator is reported with
its key instead of failing in the middle of an event loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tb_plugin.config import ConfigError
from tb_plugin.event_store import MissingFieldError

OPERATORS = ("equal", "in", "not_in", "is", "is_not", "within", "not_within")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def mask(self, values: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the entries of `values` that satisfy the condition."""
        if self.op in ("equal", "is"):
            return values == self.value
        if self.op == "is_not":
            return values != self.value
        if self.op in ("in", "not_in"):
            inside = torch.isin(values, torch.as_tensor(self.value, dtype=values.dtype))
            return inside if self.op == "in" else ~inside
        lo, hi = self.value
        inside = (values >= lo) & (values <= hi)
        return inside if self.op == "within" else ~inside

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _as_range(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))):
        raise ConfigError(f"{where}: expected a range [lo, hi] of two numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ConfigError(f"{where}: range [lo, hi] needs lo <= hi, got {value!r}")
    return lo, hi


def parse_condition(field: str, spec: Any, where: str) -> Condition:
    """Turn one YAML condition into a `Condition`, naming the key on any mistake."""
    where = f"{where}.{field}"
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and all(map(_is_number, spec)):
            return Condition(field, "within", _as_range(spec, where))
        if len(spec) == 2 and isinstance(spec[0], str):
            op, value = spec
            if op not in OPERATORS[1:]:
                allowed = ", ".join(OPERATORS[1:])
                raise ConfigError(
                    f"{where}: unknown operator '{op}'. Allowed: {allowed}, or [lo, hi], or a single value"
                )
            if op in ("within", "not_within"):
                return Condition(field, op, _as_range(value, where))
            if op in ("in", "not_in"):
                if not isinstance(value, (list, tuple)) or not all(map(_is_number, value)):
                    raise ConfigError(f"{where}: '{op}' needs a list of numbers, got {value!r}")
                return Condition(field, op, list(value))
            if not (_is_number(value) or isinstance(value, bool)):
                raise ConfigError(f"{where}: '{op}' needs a number or boolean, got {value!r}")
            return Condition(field, op, value)
        raise ConfigError(f"{where}: expected a value, [lo, hi] or [operator, value], got {spec!r}")
    if _is_number(spec) or isinstance(spec, bool):
        return Condition(field, "equal", spec)
    raise ConfigError(f"{where}: expected a value, [lo, hi] or [operator, value], got {spec!r}")


def parse_conditions(specs: Mapping[str, Any] | None, where: str) -> list[Condition]:
    if not specs:
        return []
    return [parse_condition(str(field), spec, where) for field, spec in specs.items()]


def select(fields: Mapping[str, torch.Tensor], conditions: list[Condition], size: int, source: str) -> torch.Tensor:
    """AND of all conditions over tensors of length `size`; a missing field names the field and source."""
    mask = torch.ones(size, dtype=torch.bool)
    for condition in conditions:
        if condition.field not in fields:
            available = ", ".join(sorted(fields))
            raise MissingFieldError(
                f"{source}: condition on '{condition.field}', which the event does not have. Available: {available}"
            )
        mask &= condition.mask(fields[condition.field])
    return mask
