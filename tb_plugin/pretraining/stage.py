"""`stage: tracking_bert, model: TrackingBERT`: pretrain on truth tracks, evaluate, inject, export.

    tb train   pretrain (MDM + NTP) from the feature store; resumes from stage_dir/artifacts/last.ckpt
    tb eval    stage_dir/eval/metrics.json and plots, TrackingBERT next to the count baseline
    tb infer   every event again, with `hit_tb_emb` [N, D] (and flat columns on request), and beside them
               module_table.npz, the per-module table exactly as injected (for the module map's pair prior)
    tb export  the module embedding table and the vocabulary, for tools without this package

The stage slots between data reading and graph construction: every field passes through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch_geometric.data import Data

from tb_plugin.export import ExportFormat, export_embeddings
from tb_plugin.geometry import Detector, detector_for
from tb_plugin.injection import MODULE_TABLE_FILE, ModuleEmbedding, Normalize, check_table_options, save_module_table
from tb_plugin.model import OptimConfig, TrackingBERTConfig, TrackingBERTModule
from tb_plugin.pretraining.datamodule import SequenceSettings, TrackingBERTDataModule
from tb_plugin.pretraining.evaluation import evaluate_pretraining, summary_table
from tb_plugin.pretraining.tracks import hit_module_index
from tb_plugin.stage import EventProcessor, Stage, StageConfig
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


@dataclass(kw_only=True)
class TrackingBERTStageConfig(StageConfig, TrainerConfig):
    input_dir: Path = field()  # feature store written by data reading
    detector: Path | None = None  # None: input_dir/detectors.csv (written by data reading), else built-in
    volumes: list[int] | None = None  # vocabulary volumes, e.g. [7, 8, 9] as in the paper; None = all
    # sentences and tasks
    min_hits: int = 4
    max_hits: int = 8
    long_tracks: Literal["truncate", "split"] = "truncate"
    mask_rate: float = 0.5
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_hits <= self.max_hits:
            raise ValueError(
                f"keys 'min_hits' and 'max_hits' need 2 <= min_hits <= max_hits, got {self.min_hits} and {self.max_hits}"
            )
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"key 'mask_rate' must be between 0 and 1, got {self.mask_rate}")
        for key in ("batch_size", "max_epochs", "num_nodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        self.model_config()  # checks the model keys (n_embd divisible by n_head, ...)
        check_table_options(self.normalize, self.dim, self.n_embd, "n_embd")  # the table is n_embd wide

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
        return self.stage_dir / "artifacts"

    @property
    def vocab_file(self) -> Path:
        return self.artifacts / "vocab.json"

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
        )

    # ------------------------------------------------------------------ train

    def train(self, checkpoint: Path | None = None) -> None:
        """Pretrain, resuming from `checkpoint` or stage_dir/artifacts/last.ckpt. Input, vocabulary and
        the checkpoint's model keys are checked before anything is written."""
        self.require_input()
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
        module = TrackingBERTModule(
            model=asdict(self.config.model_config(tokenizer.vocab_size)),
            optim=asdict(self.config.optim_config()),
            compile=self.config.compiles(),
        )
        print(
            f"TrackingBERT: {module.model.num_params():,} parameters "
            f"({module.model.num_params(non_embedding=True):,} outside the embeddings), vocabulary {tokenizer.vocab_size:,}"
        )
        trainer = make_trainer(self.config, self.stage_dir)
        trainer.fit(module, datamodule=self.datamodule(tokenizer), ckpt_path=str(resume) if resume else None)

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
        and against the config's model keys."""
        path = trained_checkpoint(self.stage_dir, "TrackingBERT")
        if not self.vocab_file.exists():
            raise FileNotFoundError(
                f"{self.vocab_file} is missing beside the checkpoint; run 'tb train' on this config again"
            )
        detector = self.detector()
        tokenizer = ModuleTokenizer.load(self.vocab_file, detector)
        checkpoint = read_checkpoint(path)
        remedy = f"to use this checkpoint, or delete {self.artifacts} and run 'tb train' again"
        self.check_checkpoint(path, checkpoint, tokenizer.vocab_size, remedy)
        module = load_module(TrackingBERTModule, path, checkpoint)
        return module, tokenizer, detector

    # ------------------------------------------------------------------ eval

    def evaluate(self) -> dict:
        self.require_input()
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
        path = self.write_metrics(metrics)
        print(summary_table(metrics) + f"\n  -> {path}")
        return metrics

    # ------------------------------------------------------------------ infer

    def event_processor(self) -> EventProcessor:
        """Load the checkpoint and vocabulary once; the function adds hit_tb_emb to one event. Hits on
        modules outside the vocabulary are counted in `self.unknown_hits` ("outside" of "hits", since
        this call), so `infer` can warn once for the whole run rather than once per event. The table is
        normalised / reduced (`normalize`, `dim`) here, once, and kept in `self.injection`."""
        module, tokenizer, detector = self.trained()
        inject = ModuleEmbedding.from_token_embeddings(
            module.model.module_embeddings(),
            tokenizer,
            normalize=self.config.normalize,
            dim=self.config.dim,
            flat_columns=self.config.flat_columns,
        )
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
        module, tokenizer, _ = self.trained()
        paths = export_embeddings(
            module.model.module_embeddings(), tokenizer, out_dir or self.stage_dir / "export", fmt
        )
        for p in paths:
            print(f"wrote {p}")
        return paths
