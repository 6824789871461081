"""The Lightning Trainer of every stage that learns, built once from the stage's config keys.

The keys are ACORN's (max_epochs, accelerator, devices, num_nodes, strategy, precision,
gradient_clip_val, metric_to_monitor, metric_mode, patience, logger); checkpoints live in
`stage_dir/artifacts/` as best.ckpt and last.ckpt, and training resumes from last.ckpt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import StrategyRegistry
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tb_plugin.config import ConfigError, nearest
from tb_plugin.event_store import unpickling_reason

log = logging.getLogger(__name__)

Precision = Literal["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"]


@dataclass(kw_only=True)
class TrainerConfig:
    """The Trainer keys every learning stage shares (mixed into its config dataclass)."""

    patience: int | None = None  # early stopping on metric_to_monitor; None = off
    metric_to_monitor: str = "val/loss"
    metric_mode: Literal["min", "max"] = "min"
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Precision = "32-true"
    logger: Literal["csv", "tensorboard"] = "csv"
    num_workers: int = 0
    val_every_n_epochs: int = (
        1  # validate every n-th epoch (Lightning's check_val_every_n_epoch): tiny epochs need not validate each time
    )
    # wall-clock limit of training in seconds (Lightning's max_time): a bounded run such as
    # benchmarks/gpu_check.sh stops there, validates and checkpoints; None = max_epochs alone decides
    max_time_s: float | None = None

    def __post_init__(self) -> None:
        check_distributed_keys(self.devices, self.num_nodes, self.strategy)
        if isinstance(self.val_every_n_epochs, bool) or self.val_every_n_epochs < 1:
            raise ValueError(f"key 'val_every_n_epochs' must be an integer >= 1, got {self.val_every_n_epochs!r}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"key 'max_time_s' must be a positive number of seconds or null, got {self.max_time_s!r}")


DEVICES_TEXT = re.compile(r"auto|-1|\d+(\s*,\s*\d+)*,?")  # Lightning's strings: a count, or ids "0,1" and "1,"


def check_distributed_keys(devices: int | str, num_nodes: int, strategy: str) -> None:
    """devices, num_nodes and strategy as Lightning takes them, checked where the YAML is loaded: a typo
    in a multi-process run would otherwise fail only when training starts, in every process at once.
    num_nodes is Lightning's own: the nodes a SLURM (srun) or torchrun launch spans; the launcher sets
    the ranks in the environment, tb starts no processes on other nodes itself."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"key 'num_nodes' must be an integer >= 1, got {num_nodes!r}")
    if isinstance(devices, bool) or (isinstance(devices, int) and devices < 1 and devices != -1):
        raise ValueError(f"key 'devices' must be an integer >= 1, -1 (every device) or 'auto', got {devices!r}")
    if isinstance(devices, str) and not DEVICES_TEXT.fullmatch(devices.strip()):
        raise ValueError(
            f"key 'devices' must be a count, -1, 'auto' or a list of device ids such as '0,1', got {devices!r}"
        )
    known = ["auto", *StrategyRegistry.available_strategies()]
    if strategy not in known:
        guess = nearest(strategy, known)
        hint = f" (did you mean '{guess}'?)" if guess else ""
        raise ValueError(
            f"key 'strategy' has value {strategy!r}{hint}; Lightning's strategies: auto, ddp, ddp_spawn, fsdp, ..."
        )


# Every process of a distributed run but the first is a worker: it trains its share of the batches and
# nothing else. Lightning's `strategy: ddp` launcher starts local ranks 1.. as the same command again
# (`tb train CONFIG` included) with LOCAL_RANK set, and NODE_RANK on the other nodes; torchrun sets RANK
# and GROUP_RANK; SLURM's srun sets SLURM_PROCID. The Trainer knows its rank only once it exists; what
# runs before it (the command's checks and prints) can ask the environment.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def launched_as_rank_zero() -> bool:
    """Whether this process is the first of a distributed run, or in none, as its launcher's environment
    says (unlike Lightning's own guess before setup, the first process of a second node is no rank 0)."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


class EveryRankSampler(DistributedSampler):
    """The whole dataset, in order, on every rank: the validation sampler of a distributed fit.

    Why not Lightning's default, a DistributedSampler splitting the valset across ranks: it pads the
    ranks to equal lengths by repeating events, and each rank's epoch mean is then averaged with the
    others unweighted, so the monitored val/loss (the best checkpoint) would count some events twice
    whenever the valset does not divide by the ranks. Validated whole on every rank, it is the
    single-process figure exactly. Lightning keeps a sampler that already is a DistributedSampler; this
    one is of a single replica, so every rank reads every event (validation is not sped up by ranks)."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)


def inference_device(accelerator: str) -> torch.device:
    """The GPU when the config asks for one and it is there; else the CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("gpu", "cuda"):
        log.warning("accelerator %s asked for, but no CUDA device is available: inference runs on the CPU", accelerator)
    return torch.device("cpu")


def inference_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast that inference runs under for a stage trained with `precision`: bfloat16 for the bf16
    precisions (Lightning's bf16-mixed autocasts the same way in training), float16 for 16-mixed on a
    GPU, else none. Why at inference too: a CPU with native bf16 (AVX512-BF16, AMX) runs the GNN forward
    of a pile-up-200-sized graph 2.6-2.8x faster in it (benchmarks/README.md); the scores are close to
    float32's, not equal, and the cut chosen on the valset is chosen under the same autocast."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def fused_adamw_device(device: torch.device) -> bool:
    """Whether `device` is one where torch's fused AdamW (the whole step in one kernel) is the faster
    choice: CUDA. Elsewhere torch's default (foreach) implementation is kept."""
    return device.type == "cuda"


def adamw(module: L.LightningModule, params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    """The AdamW of every stage that learns: fused on CUDA unless `module`'s Trainer clips gradients.

    Why not always fused on CUDA: a fused AdamW unscales the gradients inside its own step (torch sets
    `_step_supports_amp_scaling` on it), so Lightning's mixed-precision plugin (bf16-mixed, 16-mixed)
    cannot clip them before the step and stops the fit at its first step with "The current optimizer,
    AdamW, does not allow for gradient clipping because it performs unscaling of gradients internally".
    A Trainer with gradient_clip_val set therefore gets the non-fused AdamW, whatever its precision (one
    rule, not one per precision plugin); without clipping the fused kernel is kept (torch expects it to be
    the fastest AdamW on CUDA)."""
    clips = bool(module.trainer.gradient_clip_val)
    return torch.optim.AdamW(params, fused=fused_adamw_device(module.device) and not clips, **options)


class EpochTimer(Callback):
    """Logs the wall time of each training epoch (`train/epoch_time_s`), the figure benchmarks report.

    Resuming a run that already reached max_epochs ends an epoch that never started here: nothing to log."""

    start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.start is not None:
            # the slowest rank's time under DDP: the epoch ends when its last rank does
            module.log("train/epoch_time_s", time.perf_counter() - self.start, sync_dist=True, reduce_fx="max")
            self.start = None


# ------------------------------------------------------------------------------ exact resume
#
# A run killed after epoch k and resumed from last.ckpt must end with the same weights as a run never
# stopped. Lightning restores the weights, the optimizer, the schedulers and the loop counters, but not
# the random generators, which decide the shuffle order, the MDM masks, the phi sectors and dropout:
# the resumed run would redraw them from the seed. So every checkpoint also stores the generators'
# states at the moment it is written (the end of an epoch), and the first iteration of the training
# loader after a resume restores them, just before it draws its first number, so that whatever ran
# in between (Lightning's sanity check reads validation batches) does not count.

_pending_random_state: dict[str, Any] | None = None  # loaded with a checkpoint, used by the next training loader


def random_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's and Python's generators, as tensors and plain
    values, so a checkpoint holding them still loads with weights_only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RandomStateCheckpoint(Callback):
    """Writes the generators' states into every checkpoint; on resume, hands them to the training loader."""

    def state_dict(self) -> dict[str, Any]:
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        global _pending_random_state
        _pending_random_state = state_dict

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """A fit that ended before its loader drew (an error, nothing left to train) must not hand its
        state to the next stage trained in this process."""
        global _pending_random_state
        _pending_random_state = None


def restore_pending_random_state() -> None:
    """Restore the random state a resumed checkpoint brought, once (nothing to do otherwise)."""
    global _pending_random_state
    if _pending_random_state is not None:
        set_random_state(_pending_random_state)
        _pending_random_state = None


class RestoresRandomState:
    """Mixin for the DataLoader class of a stage's training batches: its first iteration after a
    resume restores the random state saved with the checkpoint (see above)."""

    def __iter__(self):
        restore_pending_random_state()
        return super().__iter__()


class TrainingLoader(RestoresRandomState, DataLoader):
    """torch's DataLoader for training batches, resuming exactly."""


def make_logger(kind: str, stage_dir: Path):
    """CSV logs by default (stage_dir/logs); TensorBoard when asked and installed."""
    if kind == "tensorboard":
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir=stage_dir, name="logs")
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"key 'logger': tensorboard is not installed ({err}); pip install tensorboard, or use logger: csv"
            ) from None
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=stage_dir, name="logs")


def make_trainer(config: Any, stage_dir: Path, monitor: str | None = None, **trainer_options: Any) -> L.Trainer:
    """A Trainer from the config's trainer keys; `monitor` overrides metric_to_monitor (e.g. without validation)."""
    # artifacts/ also holds other files of the stage; small demo epochs log less often than every 10 steps
    warnings.filterwarnings("ignore", message=r".*exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")  # one event per batch loads fast
    monitor = monitor or config.metric_to_monitor
    checkpoint = ModelCheckpoint(
        dirpath=Path(stage_dir) / "artifacts",
        filename="best",
        monitor=monitor,
        mode=config.metric_mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, EpochTimer(), RandomStateCheckpoint()]
    if config.patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=config.metric_mode, patience=config.patience))
    return L.Trainer(
        default_root_dir=stage_dir,
        max_epochs=config.max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        gradient_clip_val=config.gradient_clip_val,
        logger=make_logger(config.logger, Path(stage_dir)),
        callbacks=callbacks,
        enable_progress_bar=True,
        log_every_n_steps=10,
        deterministic=False,
        check_val_every_n_epoch=config.val_every_n_epochs,
        max_time=None if config.max_time_s is None else timedelta(seconds=config.max_time_s),
        **trainer_options,
    )


def last_checkpoint(stage_dir: Path) -> Path | None:
    path = Path(stage_dir) / "artifacts" / "last.ckpt"
    return path if path.exists() else None


def trained_checkpoint(stage_dir: Path, what: str) -> Path:
    """best.ckpt, else last.ckpt; a clear error when the stage was never trained."""
    artifacts = Path(stage_dir) / "artifacts"
    for name in ("best.ckpt", "last.ckpt"):
        if (artifacts / name).exists():
            return artifacts / name
    raise FileNotFoundError(
        f"no trained {what} in {artifacts} (expected best.ckpt or last.ckpt); run 'tb train' on this config first"
    )


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: unreadable, holding foreign objects, or trained with
    other model keys than the config's. The message names the file."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with weights_only so that a file from elsewhere cannot run code.
    A checkpoint is the user's input as much as a config is, so every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors and plain values "
            f"({unpickling_reason(err)}); delete it and run 'tb train' again"
        ) from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(err).__name__} {first}; "
            f"delete it and run 'tb train' again"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(checkpoint.get("hyper_parameters"), dict)
    ):
        raise CheckpointError(
            f"{path}: not a checkpoint written by 'tb train' (expected a state_dict and hyper_parameters); "
            f"delete it and run 'tb train' again"
        )
    return checkpoint


def load_module(
    cls: type[L.LightningModule], path: str | Path, checkpoint: dict[str, Any] | None = None
) -> L.LightningModule:
    """`cls` rebuilt from a checkpoint's hyperparameters and weights, on the CPU, in eval mode. Unlike
    Lightning's load_from_checkpoint, a file that does not fit (foreign objects, weights of another
    size) is one message naming it, not a traceback. `checkpoint`: its contents, when already read."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    try:
        module = cls(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: does not fit a {cls.__name__} ({first}); it was written by another stage or version: "
            f"run 'tb train' on this config again"
        ) from None
    module.eval()
    return module
