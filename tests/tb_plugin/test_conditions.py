import math

import pytest
import torch

from tb_plugin.conditions import parse_conditions, select
from tb_plugin.config import ConfigError
from tb_plugin.event_store import MissingFieldError

FIELDS = {
    "track_particle_pt": torch.tensor([500.0, 1000.0, 2500.0, 90000.0]),
    "track_particle_nhits": torch.tensor([3, 5, 8, 12]),
    "track_particle_primary": torch.tensor([1, 0, 1, 1]),
}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"track_particle_pt": [1000, math.inf]}, [False, True, True, True]),
        ({"track_particle_primary": 1}, [True, False, True, True]),
        ({"track_particle_nhits": ["in", [3, 8]]}, [True, False, True, False]),
        ({"track_particle_nhits": ["not_in", [3, 8]]}, [False, True, False, True]),
        ({"track_particle_primary": ["is", 0]}, [False, True, False, False]),
        ({"track_particle_primary": ["is_not", 0]}, [True, False, True, True]),
        ({"track_particle_nhits": ["within", [5, 8]]}, [False, True, True, False]),
        ({"track_particle_nhits": ["not_within", [5, 8]]}, [True, False, False, True]),
        ({"track_particle_pt": [1000, math.inf], "track_particle_primary": 1}, [False, False, True, True]),
    ],
)
def test_acorn_condition_syntax(spec, expected):
    conditions = parse_conditions(spec, "hard_cuts")
    assert select(FIELDS, conditions, 4, "event").tolist() == expected


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"pt": ["bigger", 3]}, r"hard_cuts\.pt: unknown operator 'bigger'"),
        ({"pt": [5, 1]}, r"hard_cuts\.pt: range \[lo, hi\] needs lo <= hi"),
        ({"pt": "high"}, r"hard_cuts\.pt: expected a value"),
        ({"pt": ["in", 3]}, r"hard_cuts\.pt: 'in' needs a list of numbers"),
    ],
)
def test_bad_conditions_name_the_key(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_conditions(spec, "hard_cuts")


def test_condition_on_missing_field_names_field_and_event():
    conditions = parse_conditions({"track_particle_radius": [0, 10]}, "hard_cuts")
    with pytest.raises(MissingFieldError, match=r"event000000001\.pyg: condition on 'track_particle_radius'"):
        select(FIELDS, conditions, 4, "event000000001.pyg")
