import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tb_plugin.config import ConfigError, build, load_yaml, to_record


@dataclass(kw_only=True)
class Example:
    stage_dir: Path
    node_features: list[str] = field(default_factory=list)
    lr: float = 1e-3
    max_epochs: int = 1
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"key 'max_epochs' must be at least 1, got {self.max_epochs}")


def test_builds_typed_object_and_converts_paths_and_ints_to_float():
    cfg = build(Example, {"stage_dir": "runs/x", "lr": 1, "node_features": ["hit_r", "hit_z"]}, "cfg.yaml")
    assert cfg.stage_dir == Path("runs/x")
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert cfg.node_features == ["hit_r", "hit_z"]
    assert to_record(cfg)["stage_dir"] == "runs/x"


def test_unknown_key_names_key_file_and_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"cfg\.yaml: unknown key 'node_feature'; did you mean 'node_features'\?"):
        build(Example, {"stage_dir": "x", "node_feature": []}, "cfg.yaml")


def test_missing_required_key_names_key_and_file():
    with pytest.raises(ConfigError, match=r"cfg\.yaml: missing required key 'stage_dir'"):
        build(Example, {}, "cfg.yaml")


@pytest.mark.parametrize(
    "values, pattern",
    [
        ({"max_epochs": "ten"}, r"key 'max_epochs' must be int, got 'ten'"),
        ({"max_epochs": True}, r"key 'max_epochs' must be int"),
        ({"node_features": "hit_r"}, r"key 'node_features' must be list of str"),
        ({"node_features": ["hit_r", 3]}, r"key 'node_features'\[1\] must be str"),
        ({"accelerator": "gpus"}, r"key 'accelerator' has value 'gpus'; did you mean 'gpu'\? Allowed: 'cpu', 'gpu', 'auto'"),
        ({"max_epochs": 0}, r"cfg\.yaml: key 'max_epochs' must be at least 1, got 0"),
    ],
)
def test_wrong_types_and_values_name_the_key(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(Example, {"stage_dir": "x", **values}, "cfg.yaml")


def test_yaml_inf_is_a_float():
    cfg = build(Example, {"stage_dir": "x", "lr": float("inf")}, "cfg.yaml")
    assert math.isinf(cfg.lr)


def test_load_yaml_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: data_reading\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line \d+"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        load_yaml(listing)
