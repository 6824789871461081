"""`stage: tracking_bert, model: TrackingBERT`: pretrain on truth tracks, evaluate, inject, export.

    tb train   pretrain (MDM + NTP) from the feature store; resumes from stage_dir/artifacts/last.ckpt
    tb eval    stage_dir/eval/metrics.json and plots, TrackingBERT next to the count baseline
    tb infer   every event again, with `hit_tb_emb` [N, D] (and flat columns on request), and beside them
               module_table.npz, the per-module table exactly as injected (for the module map's pair prior)
    tb export  the module embedding table and the vocabulary, for tools without this package

The stage slots between data reading and graph construction: every field passes through unchanged.

Key `source` picks the table injected (tb_plugin/embedding_sources.py), for the A/B's controls:
    pretrained  the above (default)
    random      train writes artifacts/best.ckpt: the model pretraining would start from (`seed`),
                with no optimisation step (about a second)
    shuffled    train writes artifacts/best.ckpt: the checkpoint of `pretrained_dir` (a pretrained
                tracking_bert stage_dir) with its token rows permuted within each volume
    geometry    no model: the table is the detector's module descriptors (GEOMETRY_DESCRIPTORS); train
                only writes vocab.json, eval the descriptor list, export the descriptor table
random and shuffled are checkpoints like the pretrained one, so every reader of a tracking_bert stage_dir
(injection, module_table.npz, the `tb` stitch and reject scorers, export) takes them unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch_geometric.data import Data

from tb_plugin.config import ConfigError
from tb_plugin.embedding_sources import (
    GEOMETRY_DESCRIPTORS,
    SOURCE_RECORD,
    SOURCES,
    EmbeddingSource,
    geometry_descriptors,
    initial_checkpoint,
    save_checkpoint,
    shuffled_checkpoint,
    stale_reason,
    token_rows,
    volume_permutation,
)
from tb_plugin.event_store import SPLITS, list_event_files
from tb_plugin.export import ExportFormat, export_embeddings
from tb_plugin.geometry import Detector, detector_for
from tb_plugin.injection import MODULE_TABLE_FILE, ModuleEmbedding, Normalize, check_table_options, save_module_table
from tb_plugin.model import CandidateSets, OptimConfig, TrackingBERTConfig, TrackingBERTModule
from tb_plugin.pretraining.datamodule import SequenceSettings, TrackingBERTDataModule, split_files
from tb_plugin.pretraining.evaluation import evaluate_pretraining, summary_table
from tb_plugin.pretraining.tracks import hit_module_index
from tb_plugin.stage import EventProcessor, Stage, StageConfig, TrainedArtifactsConfig
from tb_plugin.tokenizer import UNK, ModuleTokenizer
from tb_plugin.training import (
    CheckpointError,
    TrainerConfig,
    inference_device,
    last_checkpoint,
    load_module,
    make_trainer,
    read_checkpoint,
    trained_checkpoint,
)

log = logging.getLogger(__name__)

# Keys read by pretraining's optimisation only (not by the model's shape, the vocabulary, the data read
# or the injection): a control source's outputs do not depend on them.
PRETRAINING_ONLY_KEYS = frozenset(
    {
        "mask_rate",
        "mdm_candidates",
        "lr",
        "weight_decay",
        "warmup_steps",
        "ntp_weight",
        "max_epochs",
        "gradient_clip_val",
        "compile_training",
    }
)


@dataclass(kw_only=True)
class TrackingBERTStageConfig(StageConfig, TrainerConfig, TrainedArtifactsConfig):
    input_dir: Path = field()  # feature store written by data reading
    detector: Path | None = None  # None: input_dir/detectors.csv (written by data reading), else built-in
    volumes: list[int] | None = None  # vocabulary volumes, e.g. [7, 8, 9] as in the paper; None = all
    # sentences and tasks
    min_hits: int = 4
    max_hits: int = 8
    long_tracks: Literal["truncate", "split"] = "truncate"
    # truth (default): the particles' hits; track_building: the track candidates that the track-building
    # stage in tracks_dir reconstructed (hit_track_labels), so events without truth (real data) can be
    # pretrained on. tracks_dir with truth: another feature store's truth tracks (a larger or busier
    # simulated sample), the embeddings still injected into input_dir's events. The test split keeps
    # input_dir's truth tracks where it has them, for the MDM evaluation.
    tracks_from: Literal["truth", "track_building"] = "truth"
    tracks_dir: Path | None = None
    mask_rate: float = 0.5
    train_events: int | None = None  # pretrain on the first n trainset events only (infer still writes all); None: all
    # the MDM softmax: layer (the modules of the masked hit's own volume and layer, which the geometry knows)
    # or all (the paper's: every module of the vocabulary). layer is 1.1x (pixel) to 3.3x (whole detector)
    # faster with MDM within the layer as good, but at the baseline's graph size its tables lose to the
    # random code downstream while the full softmax's beat it, so all stays the default (benchmarks/README.md)
    mdm_candidates: Literal["all", "layer"] = "all"
    # model (paper defaults)
    n_embd: int = 64
    n_head: int = 8
    n_layer: int = 12
    d_ff: int = 512
    dropout: float = 0.05
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10000
    ntp_weight: float = 1.0
    batch_size: int = 512
    max_epochs: int = 10
    gradient_clip_val: float = 1.0
    # torch.compile the training step's model and losses; null: on when training runs on a CUDA GPU, where
    # the launch-bound small model should gain from it (unmeasured), off on the CPU, where it measured no
    # faster (benchmarks/README.md)
    compile_training: bool | None = None
    # trainer keys (accelerator, devices, strategy, precision, ...): TrainerConfig
    # inference
    flat_columns: bool = False  # also write hit_tb_emb_0 .. hit_tb_emb_{D-1}, for hosts that stack 1-D features
    normalize: Normalize = "none"  # standard: per-dimension mean 0 / std 1 over the modules in the vocabulary
    dim: int | None = None  # keep the first `dim` principal components of the (normalised) table; None = all n_embd
    # the table injected: pretrained, or an A/B control: random (the untrained initialisation of `seed`),
    # shuffled (pretrained_dir's table, rows permuted within each volume), geometry (module descriptors)
    source: EmbeddingSource = "pretrained"
    pretrained_dir: Path | None = None  # source shuffled only: the stage_dir of a pretrained tracking_bert stage
    # fine-tune instead of training from scratch: the stage_dir of a pretrained tracking_bert stage of the
    # same vocabulary and model keys, whose weights start this training (e.g. a model pretrained on
    # simulation, recalibrated on a run's own track candidates with tracks_from: track_building)
    init_from: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_hits <= self.max_hits:
            raise ValueError(
                f"keys 'min_hits' and 'max_hits' need 2 <= min_hits <= max_hits, got {self.min_hits} and {self.max_hits}"
            )
        if self.train_events is not None and (isinstance(self.train_events, bool) or self.train_events < 1):
            raise ValueError(
                f"key 'train_events' must be at least 1 or null (every trainset event), got {self.train_events!r}"
            )
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"key 'mask_rate' must be between 0 and 1, got {self.mask_rate}")
        for key in ("batch_size", "max_epochs", "num_nodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        if self.tracks_from == "track_building" and self.tracks_dir is None:
            raise ValueError(
                "key 'tracks_from': track_building needs key 'tracks_dir' (the stage_dir of a track-building "
                "stage, whose candidates are the tracks)"
            )
        self.model_config()  # checks the model keys (n_embd divisible by n_head, ...)
        self.optim_config()  # and the optimiser's (lr > 0, ...): at load, not in the first training step
        self.check_source()
        self.check_init_from()
        if self.source == "geometry":
            check_table_options(self.normalize, self.dim, len(GEOMETRY_DESCRIPTORS), "the geometry descriptor count")
        else:
            check_table_options(self.normalize, self.dim, self.n_embd, "n_embd")  # the table is n_embd wide

    def check_source(self) -> None:
        """`source` and `pretrained_dir`: the folder is read by shuffled alone, and must be another stage's."""
        if self.source not in SOURCES:
            raise ValueError(f"key 'source' has value {self.source!r}. Allowed: {', '.join(map(repr, SOURCES))}")
        if self.source != "shuffled":
            if self.pretrained_dir is not None:
                raise ValueError(
                    f"key 'pretrained_dir' is read with source: shuffled only, but source is {self.source!r}; remove it"
                )
            return
        if self.pretrained_dir is None:
            raise ValueError(
                "key 'pretrained_dir' is required with source: shuffled: the stage_dir of a trained "
                "tracking_bert stage (source: pretrained) whose table is shuffled"
            )
        if Path(self.pretrained_dir).resolve() == Path(self.stage_dir).resolve():
            raise ValueError(
                f"key 'pretrained_dir' must be another stage_dir than stage_dir ({self.stage_dir}): "
                f"the shuffled checkpoint would replace the pretrained one"
            )

    def check_init_from(self) -> None:
        """`init_from` starts pretraining: a control source trains nothing, and the folder must be another
        stage's (its checkpoint is read, never written)."""
        if self.init_from is None:
            return
        if self.source != "pretrained":
            raise ValueError(
                f"key 'init_from' starts pretraining, but source is {self.source!r}, which trains nothing; remove it"
            )
        if Path(self.init_from).resolve() == Path(self.stage_dir).resolve():
            raise ValueError(
                f"key 'init_from' must be another stage_dir than stage_dir ({self.stage_dir}): to continue a "
                f"run of this stage, 'tb train' resumes from its last.ckpt"
            )

    def model_config(self, vocab_size: int = 8) -> TrackingBERTConfig:
        return TrackingBERTConfig(
            vocab_size=vocab_size,
            max_len=2 * self.max_hits + 3,
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_layer=self.n_layer,
            d_ff=self.d_ff,
            dropout=self.dropout,
        )

    def compiles(self) -> bool:
        """Whether training runs compiled: `compile_training`, or by default on a CUDA GPU only."""
        if self.compile_training is not None:
            return self.compile_training
        return inference_device(self.accelerator).type == "cuda"

    def optim_config(self) -> OptimConfig:
        return OptimConfig(
            lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, ntp_weight=self.ntp_weight
        )

    def sequence_settings(self) -> SequenceSettings:
        return SequenceSettings(
            min_hits=self.min_hits,
            max_hits=self.max_hits,
            long_tracks=self.long_tracks,
            tracks_from=self.tracks_from,
            mask_rate=self.mask_rate,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
        )


class TrackingBERTStage(Stage):
    config_class = TrackingBERTStageConfig
    trainable = True
    config: TrackingBERTStageConfig

    def __init__(self, config: TrackingBERTStageConfig) -> None:
        super().__init__(config)
        self.unknown_hits: dict[str, int] = {"outside": 0, "hits": 0}  # filled by event_processor's function
        self.injection: ModuleEmbedding | None = None  # the transform of the last event_processor() call
        self.injection_vocab: ModuleTokenizer | None = None  # and its vocabulary
        self._detector: Detector | None = None

    @property
    def artifacts(self) -> Path:
        """Where the model and vocabulary are: a trained_stage_dir's (the table of a finished pretraining
        injected into other events, e.g. another run's data) or this stage's own."""
        return self.trained_dir / "artifacts"

    def unread_keys(self) -> frozenset[str]:
        """A control source trains nothing, so the keys of pretraining alone do not change its table: an
        A/B that varies them (a scaling sweep) reuses one finished random control instead of redoing it."""
        return frozenset() if self.config.source == "pretrained" else PRETRAINING_ONLY_KEYS

    def input_paths(self) -> list[Path]:
        """The feature store's events and, with tracks_from: track_building, the candidates' events."""
        paths = super().input_paths()
        if self.config.tracks_dir is None:
            return paths
        return paths + [
            p for split in SPLITS for p in split_files(self.config.tracks_dir, split, self.config.data_split)
        ]

    def require_input(self) -> None:
        """The feature store, and the track candidates' folder when pretraining reads them."""
        super().require_input()
        folder = self.config.tracks_dir
        if folder is not None and not any(list_event_files(folder, split) for split in SPLITS):
            raise ConfigError(
                f"key 'tracks_dir': {folder} holds no event files in {{{','.join(SPLITS)}}}; run the "
                f"track-building stage that writes them first"
            )

    @property
    def vocab_file(self) -> Path:
        return self.artifacts / "vocab.json"

    @property
    def best_file(self) -> Path:
        return self.artifacts / "best.ckpt"

    def detector(self) -> Detector:
        """The data's geometry, read once per stage (so a fallback to the built-in one is announced once)."""
        if self._detector is None:
            self._detector = detector_for(self.config.input_dir, self.config.detector)
        return self._detector

    def tokenizer(self, detector: Detector) -> ModuleTokenizer:
        """The vocabulary of this stage; one saved by an earlier run must match the data's geometry."""
        if self.vocab_file.exists():
            return ModuleTokenizer.load(self.vocab_file, detector)
        return ModuleTokenizer(detector, self.config.volumes)

    def datamodule(self, tokenizer: ModuleTokenizer) -> TrackingBERTDataModule:
        return TrackingBERTDataModule(
            self.config.input_dir,
            self.stage_dir / "cache",
            tokenizer,
            self.config.sequence_settings(),
            self.config.data_split,
            self.config.tracks_dir,
            self.config.train_events,
        )

    # ------------------------------------------------------------------ train

    def train(self, checkpoint: Path | None = None) -> None:
        """Pretrain, resuming from `checkpoint` or stage_dir/artifacts/last.ckpt. Input, vocabulary and
        the checkpoint's model keys are checked before anything is written. A control `source` trains
        nothing: `write_control`."""
        if self.trained_elsewhere:
            raise ValueError(
                f"key 'trained_stage_dir': this stage infers with the model of {self.trained_dir}; remove the key "
                f"to train into {self.stage_dir}"
            )
        self.require_input()
        if self.config.source != "pretrained":
            self.write_control(checkpoint)
            return
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        L.seed_everything(self.config.seed, workers=True, verbose=False)
        tokenizer = self.tokenizer(self.detector())
        resume = checkpoint or last_checkpoint(self.stage_dir)
        if resume:
            remedy = f"to resume, or delete {self.artifacts} to train afresh"
            self.check_checkpoint(Path(resume), read_checkpoint(resume), tokenizer.vocab_size, remedy)
        if not self.vocab_file.exists():
            tokenizer.save(self.vocab_file)
        module = self.new_module(tokenizer)
        if self.config.init_from is not None and not resume:
            self.load_initial_weights(module, tokenizer)
        print(
            f"TrackingBERT: {module.model.num_params():,} parameters "
            f"({module.model.num_params(non_embedding=True):,} outside the embeddings), vocabulary {tokenizer.vocab_size:,}"
        )
        trainer = make_trainer(self.config, self.stage_dir)
        trainer.fit(module, datamodule=self.datamodule(tokenizer), ckpt_path=str(resume) if resume else None)

    def new_module(self, tokenizer: ModuleTokenizer) -> TrackingBERTModule:
        """The model as pretraining builds it; seeded by the caller, it is that seed's initialisation."""
        return TrackingBERTModule(
            model=asdict(self.config.model_config(tokenizer.vocab_size)),
            optim=asdict(self.config.optim_config()),
            compile=self.config.compiles(),
            mdm_candidates=self.config.mdm_candidates,
            candidates=CandidateSets(tokenizer.layer_groups()),
        )

    def load_initial_weights(self, module: TrackingBERTModule, tokenizer: ModuleTokenizer) -> None:
        """`init_from`'s trained weights into the new module: refused unless that stage is a pretrained
        model (not a control) of this vocabulary and these model keys, so each module's row stays its own."""
        path = self.source_checkpoint(Path(self.config.init_from), "init_from", tokenizer, "to start from it")
        module.load_state_dict(read_checkpoint(path)["state_dict"])
        print(f"TrackingBERT: starting from the weights of {path}")

    def source_checkpoint(self, source_dir: Path, key: str, tokenizer: ModuleTokenizer, remedy: str) -> Path:
        """The trained checkpoint of another pretrained stage that `key` names, checked against this
        stage's vocabulary and model keys (`remedy`: what setting a model key back achieves)."""
        try:
            path = trained_checkpoint(source_dir, "TrackingBERT")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"key '{key}': no trained TrackingBERT in {source_dir / 'artifacts'} (expected best.ckpt "
                f"or last.ckpt); run 'tb train' on the pretrained stage first"
            ) from None
        theirs = ModuleTokenizer.load(source_dir / "artifacts" / "vocab.json", tokenizer.detector)
        if not np.array_equal(theirs.token_to_module, tokenizer.token_to_module):
            volumes = [list(t.volumes) if t.volumes else "all" for t in (theirs, tokenizer)]
            raise ValueError(
                f"key '{key}': {source_dir} has the vocabulary of volumes {volumes[0]}, this stage "
                f"volumes {volumes[1]}; set volumes: {volumes[0]} as the pretrained stage has them"
            )
        checkpoint = read_checkpoint(path)
        made = checkpoint.get(SOURCE_RECORD)
        if isinstance(made, dict):
            raise ValueError(f"key '{key}': {path} is a {made.get('source')} control, not a pretrained model")
        self.check_checkpoint(path, checkpoint, tokenizer.vocab_size, remedy)
        return path

    def write_control(self, checkpoint: Path | None) -> None:
        """`train` of a control source: artifacts/best.ckpt of random or shuffled (no optimisation step,
        rewritten on every run: it is cheap and deterministic) and vocab.json; geometry only the latter."""
        source = self.config.source
        if checkpoint is not None:
            raise ValueError(f"key 'source': {source} trains nothing, so there is no checkpoint to resume from")
        if last_checkpoint(self.stage_dir):
            raise ValueError(
                f"{self.artifacts} holds a pretraining run (last.ckpt); give source: {source} its own "
                f"stage_dir, or delete {self.artifacts}"
            )
        seed = self.config.seed
        L.seed_everything(seed, workers=True, verbose=False)
        tokenizer = self.tokenizer(self.detector())
        what = f"{len(GEOMETRY_DESCRIPTORS)} geometry descriptors per module, nothing to train"
        if source == "random":
            save_checkpoint(initial_checkpoint(self.new_module(tokenizer), seed), self.best_file)
            what = f"the untrained initialisation of seed {seed} -> {self.best_file}"
        elif source == "shuffled":
            save_checkpoint(self.shuffled(tokenizer), self.best_file)
            what = f"{self.config.pretrained_dir}'s table permuted within each volume (seed {seed}) -> {self.best_file}"
        if not self.vocab_file.exists():
            tokenizer.save(self.vocab_file)
        print(f"TrackingBERT source {source}: {what}")

    def shuffled(self, tokenizer: ModuleTokenizer) -> dict:
        """The checkpoint of source shuffled: pretrained_dir's trained checkpoint, refused unless it is a
        pretrained one of this vocabulary and these model keys, with its token rows permuted."""
        source_dir = Path(self.config.pretrained_dir)
        path = self.source_checkpoint(source_dir, "pretrained_dir", tokenizer, "to shuffle this checkpoint")
        checkpoint = read_checkpoint(path)
        permutation = volume_permutation(tokenizer, self.config.seed)  # [V]
        return shuffled_checkpoint(checkpoint, path, permutation, self.config.seed, source_dir)

    def check_checkpoint(self, path: Path, checkpoint: dict, vocab_size: int, remedy: str) -> None:
        """The config's model keys must be those the checkpoint was trained with: resuming would fail on
        a tensor of another size, and inference would write the checkpoint's width under the config's
        n_embd. (dropout is not compared: it changes no tensor.) `remedy` ends the message: what setting
        the key back achieves, and the other way out."""
        saved = checkpoint["hyper_parameters"].get("model")
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"{path}: not a TrackingBERT checkpoint (no model hyperparameters); delete it and run 'tb train' again"
            )
        wanted = asdict(self.config.model_config(vocab_size))
        for key in ("n_embd", "n_head", "n_layer", "d_ff", "max_len"):
            have, want, name = saved.get(key), wanted[key], key
            if have != want:
                if key == "max_len":  # 2 * max_hits + 3: the config key is max_hits
                    have, want, name = (
                        (have - 3) // 2 if isinstance(have, int) else have,
                        self.config.max_hits,
                        "max_hits",
                    )
                raise CheckpointError(
                    f"{path} was trained with {name}: {have}, but the config has {name}: {want}; "
                    f"set {name}: {have} again {remedy}"
                )
        if saved.get("vocab_size") != vocab_size:
            raise CheckpointError(
                f"{path} has {saved.get('vocab_size')} tokens but {self.vocab_file} has {vocab_size}: they come "
                f"from different runs; delete {self.artifacts} and run 'tb train' again"
            )

    # ------------------------------------------------------------------ trained model

    def trained(self) -> tuple[TrackingBERTModule, ModuleTokenizer, Detector]:
        """The best checkpoint (else the last) with its vocabulary, checked against the data's geometry
        and against the config's model keys; a control's checkpoint also against the config's source,
        seed and pretrained checkpoint, so a stale one is refused rather than used."""
        if self.config.source == "geometry":
            raise ValueError(
                f"{self.stage_dir}: the geometry source has no TrackingBERT model (its table is the detector's "
                f"module descriptors); the 'tb' scorers need a stage of source pretrained, random or shuffled"
            )
        path = trained_checkpoint(self.trained_dir, "TrackingBERT")
        if not self.vocab_file.exists():
            raise FileNotFoundError(
                f"{self.vocab_file} is missing beside the checkpoint; run 'tb train' on this config again"
            )
        detector = self.detector()
        tokenizer = ModuleTokenizer.load(self.vocab_file, detector)
        checkpoint = read_checkpoint(path)
        remedy = f"to use this checkpoint, or delete {self.artifacts} and run 'tb train' again"
        self.check_checkpoint(path, checkpoint, tokenizer.vocab_size, remedy)
        config = self.config
        stale = stale_reason(checkpoint.get(SOURCE_RECORD), config.source, config.seed, config.pretrained_dir)
        if stale:
            raise CheckpointError(f"{path}: {stale}; run 'tb train' on this config again")
        module = load_module(TrackingBERTModule, path, checkpoint)
        return module, tokenizer, detector

    # ------------------------------------------------------------------ eval

    def evaluate(self) -> dict:
        """The pretraining metrics (MDM, NTP, next to the count baseline); for random and shuffled the
        same, marked with the source (they show that the control carries no learned content); for
        geometry the list of descriptors."""
        self.require_input()
        if self.config.source == "geometry":
            return self.evaluate_geometry()
        module, tokenizer, detector = self.trained()
        data = self.datamodule(tokenizer)
        data.prepare_data()
        data.setup("test")
        metrics = evaluate_pretraining(
            module.model,
            tokenizer,
            detector,
            data.tracks["trainset"],
            data.datasets["testset"],
            self.stage_dir / "eval",
            batch_size=self.config.batch_size,
        )
        if self.config.source != "pretrained":
            metrics = {"source": self.config.source, **metrics}
        path = self.write_metrics(metrics)
        print(summary_table(metrics) + f"\n  -> {path}")
        return metrics

    def evaluate_geometry(self) -> dict:
        """eval/metrics.json of the geometry source: what its table is made of (nothing was learned)."""
        detector = self.detector()
        in_vocab = int((self.tokenizer(detector).module_to_token != UNK).sum())
        dim = self.config.dim or len(GEOMETRY_DESCRIPTORS)
        metrics = {
            "source": "geometry",
            "descriptors": list(GEOMETRY_DESCRIPTORS),
            "modules": len(detector),
            "dim": dim,
        }
        path = self.write_metrics(metrics)
        print(
            f"geometry source: {len(GEOMETRY_DESCRIPTORS)} descriptors of {len(detector)} modules "
            f"({in_vocab} in the vocabulary), injected {dim} wide -> {path}"
        )
        return metrics

    # ------------------------------------------------------------------ infer

    def event_processor(self) -> EventProcessor:
        """Load the checkpoint and vocabulary once; the function adds hit_tb_emb to one event. Hits on
        modules outside the vocabulary are counted in `self.unknown_hits` ("outside" of "hits", since
        this call), so `infer` can warn once for the whole run rather than once per event. The table is
        normalised / reduced (`normalize`, `dim`) here, once, and kept in `self.injection`."""
        inject, tokenizer, detector = self.make_injection()
        self.injection, self.injection_vocab = inject, tokenizer
        counts = self.unknown_hits = {"outside": 0, "hits": 0}

        def add_embedding(data: Data, source: Path) -> Data:
            if "hit_module_index" not in data:
                data.hit_module_index = torch.from_numpy(hit_module_index(data, detector, str(source)))
            data = inject(data)
            counts["outside"] += int((tokenizer.module_to_token[data.hit_module_index.numpy()] == UNK).sum())
            counts["hits"] += len(data.hit_module_index)  # not num_nodes: ACORN's reader does not set it
            return data

        return add_embedding

    def make_injection(self) -> tuple[ModuleEmbedding, ModuleTokenizer, Detector]:
        """The transform of this config's source: the trained model's token table (pretrained, random,
        shuffled), or the detector's descriptors (geometry), fitted on the vocabulary's modules alike."""
        options = {"normalize": self.config.normalize, "dim": self.config.dim, "flat_columns": self.config.flat_columns}
        if self.config.source == "geometry":
            detector = self.detector()
            tokenizer = self.tokenizer(detector)
            table = torch.from_numpy(geometry_descriptors(detector))  # [M, 17]
            return ModuleEmbedding.from_table(table, tokenizer.module_to_token != UNK, **options), tokenizer, detector
        module, tokenizer, detector = self.trained()
        start = self.initial_embeddings(tokenizer) if self.config.init_from is not None else None
        table = module.model.module_embeddings()
        inject = ModuleEmbedding.from_token_embeddings(table, tokenizer, reference_embeddings=start, **options)
        return inject, tokenizer, detector

    def initial_embeddings(self, tokenizer: ModuleTokenizer) -> torch.Tensor:
        """The token table [V, C] of `init_from`, which the injection's normalize / dim are fitted on: a
        fine-tuned table is injected in the coordinates of the one it started from, so the downstream
        stages trained on that one read the recalibrated vectors without retraining."""
        path = self.source_checkpoint(Path(self.config.init_from), "init_from", tokenizer, "to read it")
        return load_module(TrackingBERTModule, path).model.module_embeddings().detach()

    def infer(self, overwrite: bool = False) -> None:
        """hit_tb_emb on every event; input, checkpoint and the splits of earlier outputs are checked
        before the geometry and the module table are written beside the events."""
        self.require_input()
        process = self.event_processor()
        self.prepare_outputs(overwrite)
        if not (self.stage_dir / "detectors.csv").exists():  # downstream stages find the geometry beside their input
            self.detector().to_csv(self.stage_dir / "detectors.csv")
        self.write_module_table()
        self.rewrite_events(process, overwrite)
        counts = self.unknown_hits
        if counts["outside"]:
            log.warning(
                "%d of %d hits lie on modules outside the vocabulary and got the [UNK] embedding",
                counts["outside"],
                counts["hits"],
            )

    def write_module_table(self) -> Path:
        """stage_dir/module_table.npz: the table exactly as `event_processor` injects it (after normalize
        and dim), rows by dense module index, with the vocabulary flags and the geometry and ids hashes. Written on
        every infer (it is small), so it always matches this config."""
        if self.injection is None or self.injection_vocab is None:
            self.event_processor()
        tokenizer = self.injection_vocab
        return save_module_table(
            self.stage_dir / MODULE_TABLE_FILE,
            self.injection.table,
            tokenizer.module_to_token != UNK,
            tokenizer.detector,
        )

    # ------------------------------------------------------------------ export

    def export(self, fmt: ExportFormat, out_dir: Path | None = None) -> list[Path]:
        """The raw token table (before normalize / dim); of the geometry source, its descriptor table."""
        out_dir = out_dir or self.stage_dir / "export"
        if self.config.source == "geometry":
            detector = self.detector()
            tokenizer = self.tokenizer(detector)
            table = torch.from_numpy(token_rows(geometry_descriptors(detector), tokenizer))  # [V, 17]
            paths = export_embeddings(table, tokenizer, out_dir, fmt, columns=GEOMETRY_DESCRIPTORS)
        else:
            module, tokenizer, _ = self.trained()
            paths = export_embeddings(module.model.module_embeddings(), tokenizer, out_dir, fmt)
        for p in paths:
            print(f"wrote {p}")
        return paths
