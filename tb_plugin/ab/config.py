"""The A/B config (`tb ab AB.yaml`): which pipeline is the baseline, which TrackingBERT stage the other
arm adds, and what it adds downstream. Validated once here; the runner only sees `ABConfig`.

    ab_dir: runs/demo/ab                      # everything the A/B writes (relative to where tb runs)
    pipeline: ../pipelines/demo_baseline.yaml # the baseline arm (relative to this file); data reading first
    tracking_bert: ../tracking_bert/demo.yaml # the stage the trackingbert arm inserts after data reading
    tracking_bert_dir: null                   # its stage_dir (null: ab_dir/tracking_bert); share one across A/Bs
    reuse_ab_dir: null                        # another A/B's ab_dir: its finished stages of the same config are reused
    seeds: [0, 1, 2]                          # K seeds of the downstream stages, the same in both arms
    trackingbert_features:                    # appended to every downstream stage that has the key
      node_features: [hit_tb_emb]
      node_scales: [1.0]
      edge_features: [tb_sim]
      edge_scales: [1.0]
    trackingbert_keys:                        # keys set on the trackingbert arm's stages, by model
      ModuleMap: {prior: {scorer: tb}}        # (a stage's tracking_bert_dir defaults to the A/B's own)
    baseline_keys: {}                         # the same for the baseline arm (e.g. a geometry-only control)
    low_label: {n_labelled: [1, 2, 4, 8], seeds: [0], run: false}   # `tb ab --low-label` runs it
    bootstrap: {samples: 2000, confidence: 0.95, seed: 0}
    timing_events: 5                          # test events whose in-memory inference is timed
    jobs: 1                                   # worker processes for the stage runs (2 on a 2-core machine)

Any number of arms besides the baseline (`arms:`, replacing trackingbert_keys; without it the one arm
is `trackingbert`, source pretrained, with the keys above, today's two-arm A/B):

    arms:
      pretrained: {source: pretrained}        # TrackingBERT's table, as pretrained
      random: {source: random}                # the same model untrained: a code per module, no content
      shuffled: {source: shuffled, compare_to: random}   # rows permuted within each volume
      geometry: {source: geometry}            # module descriptors from detectors.csv
      learned: {source: learned}              # a trainable per-module vector inside the filter and GNN
      finetune: {source: finetune, compare_to: learned}  # the same, starting from the pretrained table
      stitch_random: {source: random, features: null, keys: {Walkthrough: {stitch: tb}}}

Each arm is compared with the baseline and, when it names one, with its `compare_to` arm.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tb_plugin.config import ConfigError, build, load_yaml


@dataclass(kw_only=True)
class FeatureAddition:
    """What the trackingbert arm appends to the downstream stages' feature lists."""

    node_features: list[str] = field(default_factory=lambda: ["hit_tb_emb"])
    node_scales: list[float] = field(default_factory=lambda: [1.0])
    edge_features: list[str] = field(default_factory=lambda: ["tb_sim"])
    edge_scales: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        if len(self.node_scales) != len(self.node_features):
            raise ValueError(
                f"key 'trackingbert_features.node_scales' needs one scale per node feature "
                f"({len(self.node_features)}), got {self.node_scales}"
            )
        if len(self.edge_scales) != len(self.edge_features):
            raise ValueError(
                f"key 'trackingbert_features.edge_scales' needs one scale per edge feature "
                f"({len(self.edge_features)}), got {self.edge_scales}"
            )
        if not self.node_features and not self.edge_features:
            raise ValueError("key 'trackingbert_features' adds no feature: the two arms would be identical")


# Where an arm's per-module vectors come from (the `source` of an arm):
#   pretrained  the tracking_bert stage's table, pretrained (today's trackingbert arm)
#   random      the same model at its untrained initialisation, normalised and reduced the same way
#   shuffled    the pretrained table with its rows permuted among the modules of each volume
#   geometry    module descriptors from detectors.csv (centre, normal, pitches, thickness, volume, layer)
#   learned     a trainable per-module vector of the same width inside each edge classifier, from scratch
#   finetune    the same, initialised from the pretrained table
#   none        no vectors: an arm of keys only (e.g. a geometry-only control of a track builder)
Source = Literal["pretrained", "random", "shuffled", "geometry", "learned", "finetune", "none"]
SOURCES: tuple[str, ...] = ("pretrained", "random", "shuffled", "geometry", "learned", "finetune", "none")
TABLE_SOURCES = ("pretrained", "random", "shuffled", "geometry")  # a tracking_bert stage writes hit_tb_emb
MODEL_SOURCES = ("learned", "finetune")  # the vectors are trained inside the downstream stages
BASELINE = "baseline"


@dataclass(kw_only=True)
class ArmSpec:
    """One arm besides the baseline: its embedding source, the features it adds, its keys, its control."""

    source: Source = "pretrained"
    # appended to each downstream stage that has the key; `default`: the A/B's trackingbert_features;
    # null: none (an arm whose keys use the model, e.g. stitch: tb, or a `source: none` arm)
    features: FeatureAddition | Literal["default"] | None = "default"
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> keys set in this arm only
    compare_to: str | list[str] | None = None  # other arms this one is also compared with (its controls)

    @property
    def controls(self) -> list[str]:
        """The arms named by compare_to, as a list."""
        if self.compare_to is None:
            return []
        return [self.compare_to] if isinstance(self.compare_to, str) else list(self.compare_to)

    def resolved(self, default: FeatureAddition | None) -> ArmSpec:
        """This arm with `features: default` replaced by the A/B's trackingbert_features; a `none` arm
        has no features whatever the default."""
        if self.source == "none" and isinstance(self.features, FeatureAddition):
            raise ValueError(f"source none adds no vectors, so it takes no features (got {self.features})")
        features = default if self.features == "default" else self.features
        return dataclasses.replace(self, features=None if self.source == "none" else features)

    def check(self, name: str) -> None:
        """Once the features are resolved: an arm must differ from the baseline, and its parts must fit."""
        where = f"key 'arms.{name}'"
        if self.source in MODEL_SOURCES and self.features is None:
            raise ValueError(
                f"{where}: source {self.source} trains vectors in place of the features, so it needs them "
                "(features, or the A/B's trackingbert_features)"
            )
        if self.features is None and not self.keys:
            raise ValueError(
                f"{where}: no features and no keys: the arm would be the baseline; add features, or keys that "
                "use the model (e.g. keys: {Walkthrough: {stitch: tb}})"
            )


@dataclass(kw_only=True)
class LowLabelConfig:
    """The low-label sweep: the gradient-trained downstream stages retrained on the first n labelled
    training events (plus all of them), with as many optimiser steps as the full run."""

    n_labelled: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    seeds: list[int] | None = None  # default: the A/B seeds
    run: bool = False  # also run it with every `tb ab` (else only with --low-label)

    def __post_init__(self) -> None:
        if not self.n_labelled or any(n < 1 for n in self.n_labelled):
            raise ValueError(f"key 'low_label.n_labelled' must list event counts >= 1, got {self.n_labelled}")
        if self.seeds is not None and not self.seeds:
            raise ValueError("key 'low_label.seeds' must list at least one seed (or be null: the A/B seeds)")


@dataclass(kw_only=True)
class BootstrapConfig:
    samples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 100:
            raise ValueError(f"key 'bootstrap.samples' must be at least 100, got {self.samples}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"key 'bootstrap.confidence' must be in [0.5, 1), got {self.confidence}")


@dataclass(kw_only=True)
class ABConfig:
    ab_dir: Path
    pipeline: Path
    tracking_bert: Path
    # Where the tracking_bert stage lives (null: ab_dir/tracking_bert). Point it at another A/B's (or a
    # `tb train` stage_dir) trained with the same config to pretrain once for several A/Bs.
    tracking_bert_dir: Path | None = None
    # Another A/B's ab_dir over the same events: a stage that finished there with the same config on the
    # same input is read from there instead of being run again (e.g. the filter and GNN of a variant).
    reuse_ab_dir: Path | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # null: no features (an A/B of keys only, e.g. stitch: tb in track building; the arms then share the
    # stages before the first one the keys change)
    trackingbert_features: FeatureAddition | None = field(default_factory=FeatureAddition)
    trackingbert_keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> keys set in that arm only
    baseline_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The arms besides the baseline, by name (null: one arm, `trackingbert`, source pretrained, with
    # trackingbert_keys: the two-arm A/B). Names are folder names under ab_dir.
    arms: dict[str, ArmSpec] | None = None
    # One line the report shows under "What was compared": what a reader must know to read the numbers
    # (e.g. that the demo's models are smaller than its pipeline's, and where the full-size A/B is).
    note: str | None = None
    low_label: LowLabelConfig | None = None
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    timing_events: int = 5
    timing_repeats: int = 3
    # Worker processes for the stage runs (pretraining, both arms, every seed); 1 runs them one after the
    # other in this process. Timing and evaluation always run here, alone. See tb_plugin/ab/parallel.py.
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.arms is None and self.trackingbert_features is None and not self.trackingbert_keys:
            raise ValueError(
                "keys 'trackingbert_features' (null) and 'trackingbert_keys' (empty): the trackingbert arm would "
                "be the baseline; add features, or keys that use the pretrained model (e.g. Walkthrough: {stitch: tb})"
            )
        self.check_arms()
        if not self.seeds:
            raise ValueError("key 'seeds' must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"key 'seeds' repeats a seed: {self.seeds}")
        if self.jobs < 1:
            raise ValueError(f"key 'jobs' must be at least 1 (worker processes), got {self.jobs}")
        if self.timing_events < 1 or self.timing_repeats < 1:
            raise ValueError(
                f"keys 'timing_events' and 'timing_repeats' must be at least 1, got "
                f"{self.timing_events} and {self.timing_repeats}"
            )

    def check_arms(self) -> None:
        """Names usable as folders, controls that exist, every arm different from the baseline."""
        if self.arms is None:
            return
        if not self.arms:
            raise ValueError("key 'arms' names no arm: list at least one besides the baseline, e.g. {pretrained: {}}")
        if self.trackingbert_keys:
            raise ValueError(
                "key 'trackingbert_keys' belongs to the two-arm form; with 'arms', set each arm's keys "
                "(arms.<name>.keys)"
            )
        for name, raw in self.arms.items():
            try:
                spec = raw.resolved(self.trackingbert_features)
            except ValueError as err:
                raise ValueError(f"key 'arms.{name}': {err}") from None
            if name == BASELINE or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(
                    f"key 'arms.{name}': an arm's name must be letters, digits, '_', '-' or '.' and not "
                    f"'{BASELINE}' (the arm every A/B has)"
                )
            spec.check(name)
            for control in spec.controls:
                if control == name or control not in self.arms:
                    others = [a for a in self.arms if a != name]
                    raise ValueError(
                        f"key 'arms.{name}.compare_to' names '{control}', which is not another arm; "
                        f"choose among {', '.join(others) or '(no other arm)'} (every arm is compared with "
                        f"the {BASELINE} anyway)"
                    )

    def arm_specs(self) -> dict[str, ArmSpec]:
        """The arms besides the baseline, in config order, their features resolved."""
        if self.arms is None:
            legacy = ArmSpec(source="pretrained", features=self.trackingbert_features, keys=self.trackingbert_keys)
            return {"trackingbert": legacy}
        return {name: spec.resolved(self.trackingbert_features) for name, spec in self.arms.items()}

    @property
    def arm_names(self) -> list[str]:
        """Every arm, the baseline first."""
        return [BASELINE, *self.arm_specs()]

    def comparisons(self) -> list[tuple[str, str]]:
        """(arm, control) pairs: each arm against the baseline, then each against its compare_to."""
        specs = self.arm_specs()
        pairs = [(name, BASELINE) for name in specs]
        pairs += [(name, control) for name, spec in specs.items() for control in spec.controls]
        return pairs

    @property
    def low_label_seeds(self) -> list[int]:
        return list(self.low_label.seeds or self.seeds) if self.low_label else []


def load_ab_config(path: str | Path) -> ABConfig:
    """The typed A/B config; `pipeline` and `tracking_bert` are resolved against the file's folder."""
    path = Path(path)
    values = load_yaml(path)
    config = build(ABConfig, values, str(path))
    for key in ("pipeline", "tracking_bert"):
        resolved = (path.parent / getattr(config, key)).resolve()
        if not resolved.is_file():
            raise ConfigError(f"{path}: key '{key}' names {getattr(config, key)}, but {resolved} does not exist")
        setattr(config, key, resolved)
    return config
