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
        (
            {"accelerator": "gpus"},
            r"key 'accelerator' has value 'gpus'; did you mean 'gpu'\? Allowed: 'cpu', 'gpu', 'auto'",
        ),
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


def test_a_repeated_yaml_key_is_refused_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("stage_dir: x\nlr: 0.1\nmax_epochs: 2\nlr: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert (
        str(err.value)
        == f"{path}: key 'lr' appears twice, at lines 2 and 4 (YAML would keep only the last); remove one"
    )


def test_repeated_keys_in_nested_mappings_are_refused_but_merge_keys_may_override(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("hard_cuts:\n  pt: [1, 2]\n  pt: [3, 4]\n")
    with pytest.raises(ConfigError, match=r"nested\.yaml: key 'pt' appears twice, at lines 2 and 3"):
        load_yaml(nested)
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 0.1, max_epochs: 2}\nrun:\n  <<: *b\n  lr: 0.5\n")
    assert load_yaml(merged)["run"] == {"lr": 0.5, "max_epochs": 2}


@pytest.mark.parametrize(
    "text, expected", [("3e-3", 3e-3), ("1E4", 1e4), (" 0.5 ", 0.5), ("-2", -2.0), ("-.inf", -math.inf)]
)
def test_numeric_text_is_a_float(text, expected):
    # PyYAML reads `lr: 3e-3` (no dot) as the string '3e-3'
    assert build(Example, {"stage_dir": "x", "lr": text}, "cfg.yaml").lr == expected


@pytest.mark.parametrize("text", ["fast", "nan", ""])
def test_non_numeric_text_is_not_a_float(text):
    with pytest.raises(ConfigError, match=r"cfg\.yaml: key 'lr' must be float"):
        build(Example, {"stage_dir": "x", "lr": text}, "cfg.yaml")


def test_an_integer_matches_its_spelling_among_allowed_strings():
    @dataclass
    class Precision:
        precision: Literal["32-true", "32", "16-mixed"] = "32-true"

    assert build(Precision, {"precision": 32}, "cfg.yaml").precision == "32"
    with pytest.raises(ConfigError, match=r"key 'precision' has value 16"):
        build(Precision, {"precision": 16}, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"key 'precision' has value True"):
        build(Precision, {"precision": True}, "cfg.yaml")
