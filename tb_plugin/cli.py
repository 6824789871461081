"""The `tb` command: simulate data, and train / infer / eval stages from YAML like `acorn`.

    tb simulate --events N --pileup MU --seed S --out DIR [--detector PATH] [--particles PATH]  (--events: 1 with --particles)
                [--dead-fraction F] [--dead-modules CSV] [--efficiency-spread S] [--misalignment-mm S]
                [--misalignment-mrad S] [--conditions-seed N] [--conditions CSV]  (detector conditions)
    tb train CONFIG.yaml [--checkpoint PATH] [--overwrite]
    tb infer CONFIG.yaml [--overwrite] [--shard K/N]  (K of N processes, e.g. $SLURM_ARRAY_TASK_ID/N; K from 1)
    tb eval  CONFIG.yaml
    tb run   PIPELINE.yaml [--overwrite] [--shard K/N]  (trained stages only: training is not sharded)
    tb status PIPELINE.yaml|CONFIG.yaml
    tb ab    AB.yaml [--low-label]
    tb export CONFIG.yaml [--format csv|npz|pt|onnx|torchscript] [--out DIR]
    tb stages

Errors in the user's input (configs, data files) are printed as one message naming the file and the
key or column, without a traceback; `--traceback` shows it for debugging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tb_plugin.atomic import WRITE_ERRNOS, WriteError, write_error
from tb_plugin.config import ConfigError
from tb_plugin.geometry import Detector, DetectorFormatError, UnknownModuleError
from tb_plugin.trackml import SubmissionError, TrackMLFormatError

# Problems with the user's files or configs: reported as a message, not a traceback. Modules that
# import torch (event_store and the stages) are left to `_user_errors`: importing torch and
# torch_geometric takes about 5 s, which `tb simulate` never needs.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DetectorFormatError,
    FileNotFoundError,
    SubmissionError,
    TrackMLFormatError,
    UnknownModuleError,
    WriteError,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus those of modules that are imported only when a command needs them."""
    from stages.data_reading.event_features import EventContentError
    from tb_plugin.ab.parallel import WorkerError
    from tb_plugin.event_store import EventFileError, MissingFieldError
    from tb_plugin.pretraining.datamodule import NoTracksError
    from tb_plugin.stage import NoTruthError
    from tb_plugin.tokenizer import GeometryMismatchError, VocabularyFileError
    from tb_plugin.training import CheckpointError

    return (
        *USER_ERRORS,
        EventContentError,
        EventFileError,
        MissingFieldError,
        NoTruthError,
        CheckpointError,
        GeometryMismatchError,
        NoTracksError,
        VocabularyFileError,
        WorkerError,
    )


def cmd_simulate(args: argparse.Namespace) -> None:
    """Check every argument and the replayed particles file, then write the geometry and the events."""
    from tb_plugin.simulation import SimulationConfig, simulate_dataset
    from tb_plugin.trackml import read_part

    n_events = args.events
    if n_events is None:
        if args.particles is None:
            raise ConfigError(
                "tb simulate: --events is required (the number of events to simulate); only a replay "
                "(--particles FILE) defaults to one event"
            )
        n_events = 1  # a replay is one event unless asked for more
    if args.particles is not None:
        if not args.particles.is_file():
            raise FileNotFoundError(
                f"tb simulate: --particles {args.particles}: file not found (expected an event...-particles.csv)"
            )
        read_part(args.particles, "particles")  # a malformed file is refused before anything is written
    detector = Detector.from_csv(args.detector) if args.detector else Detector.builtin()
    options = dict(
        n_events=n_events, pileup=args.pileup, seed=args.seed, first_event=args.first_event, with_cells=args.cells
    )
    if args.inefficiency is not None:
        options["hit_inefficiency"] = args.inefficiency
    if args.noise_fraction is not None:
        options["noise_fraction"] = args.noise_fraction
    if args.vertex_sigma_z is not None:
        options["vertex_sigma_z_mm"] = args.vertex_sigma_z
    if args.vertex_z_mean is not None:
        options["vertex_mean_z_mm"] = args.vertex_z_mean
    if args.uniform_field:
        options["b_field_half_z_mm"] = 0.0
    try:
        config = SimulationConfig(**options)
    except ValueError as err:
        raise ConfigError(f"tb simulate: {err}") from None
    conditions = _simulate_conditions(args, detector)
    out = Path(args.out)
    detector.to_csv(out / "detectors.csv")
    prefixes = simulate_dataset(
        config, detector, out, replay_particles=args.particles, progress=True, conditions=conditions
    )
    print(f"simulated {len(prefixes)} events into {out} (geometry written to {out / 'detectors.csv'})")
    if conditions is not None and conditions.active:
        print(f"detector conditions of {len(conditions)} modules written to {out / 'detector_conditions.csv'}")


_CONDITION_OPTIONS = {
    "seed": "--conditions-seed",
    "dead_fraction": "--dead-fraction",
    "efficiency_spread": "--efficiency-spread",
    "misalignment_mm": "--misalignment-mm",
    "misalignment_mrad": "--misalignment-mrad",
}


def _simulate_conditions(args: argparse.Namespace, detector: Detector):
    """The detector conditions `tb simulate` asks for (a ``DetectorConditions``), or None: read from
    --conditions, or drawn from the other condition options. Checked before anything is written."""
    from tb_plugin.simulation.detector_conditions import (
        ConditionsError,
        DetectorConditionsConfig,
        read_conditions,
        read_dead_modules,
    )

    given = {field: getattr(args, option[2:].replace("-", "_")) for field, option in _CONDITION_OPTIONS.items()}
    drawn = {field: value for field, value in given.items() if value is not None}
    try:
        if args.conditions is not None:
            if drawn or args.dead_modules is not None:
                named = [_CONDITION_OPTIONS[field] for field in drawn] + ["--dead-modules"] * bool(args.dead_modules)
                raise ConfigError(f"tb simulate: --conditions FILE replaces {', '.join(named)}: give one or the other")
            return read_conditions(args.conditions, detector)
        if args.dead_modules is not None:
            drawn["dead_modules"] = read_dead_modules(args.dead_modules, detector)
        return DetectorConditionsConfig(**drawn).draw(detector)
    except ConditionsError as err:
        message = str(err)
        if err.option:
            message = message.replace(f"{err.option} = ", f"{_CONDITION_OPTIONS[err.option]} ", 1)
        raise ConfigError(f"tb simulate: {message}") from None


def cmd_train(args: argparse.Namespace) -> None:
    from tb_plugin import stage_record
    from tb_plugin.pipeline import load_stage, run_phase
    from tb_plugin.training import launched_as_rank_zero

    stage = load_stage(args.config)
    if not stage.trainable:
        raise ConfigError(
            f"{args.config}: stage '{stage.config.stage}' model '{stage.config.model}' has nothing to train; use 'tb infer'"
        )
    if stage.trained_elsewhere:
        raise ConfigError(
            f"{args.config}: key 'trained_stage_dir' makes this stage infer with the artifacts of "
            f"{stage.trained_dir}; remove it to train into {stage.stage_dir}, or use 'tb infer'"
        )
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if not launched_as_rank_zero():  # a DDP worker that Lightning started as this command: rank 0 alone
        stage.train(checkpoint=checkpoint)  # clears, checks and records; the worker only joins the fit
        return
    if args.overwrite:
        stage_record.clear_outputs(stage.stage_dir)  # retrain from scratch: the old model and events go
    elif stage_record.phase_done(stage, "train"):
        print(f"{stage.stage_dir}: trained already, with this config and input; --overwrite retrains from scratch")
        return
    run_phase(stage, "train", lambda: stage.train(checkpoint=checkpoint))


def cmd_infer(args: argparse.Namespace) -> None:
    """The stage's inference, or with --shard K/N its shard K (tb_plugin/shard.py): N of them, run at
    once or in any order, write the events of one unsharded run and record each shard's end."""
    from tb_plugin.pipeline import infer_phase, load_stage
    from tb_plugin.shard import parse_shard

    shard = parse_shard(args.shard)  # a bad value is one line before the config is even read
    stage = load_stage(args.config)
    stage.shard = shard
    infer_phase(stage, args.overwrite)


def cmd_eval(args: argparse.Namespace) -> None:
    from tb_plugin.pipeline import load_stage, run_phase

    stage = load_stage(args.config)
    run_phase(stage, "eval", stage.evaluate)


def cmd_status(args: argparse.Namespace) -> None:
    """Each stage of a pipeline (or one stage config) as up to date, incomplete, stale (why) or missing."""
    from tb_plugin.config import load_yaml
    from tb_plugin.pipeline import load_stage, load_stages, pipeline_status

    stages = load_stages(args.config) if "stages" in load_yaml(args.config) else [load_stage(args.config)]
    for stage, status in zip(stages, pipeline_status(stages)):
        name = f"{stage.config.stage}/{stage.config.model}"
        print(f"{name:34s} {str(stage.stage_dir):36s} {status}")


def cmd_run(args: argparse.Namespace) -> None:
    from tb_plugin.pipeline import run_pipeline
    from tb_plugin.shard import parse_shard

    run_pipeline(args.pipeline, overwrite=args.overwrite, shard=parse_shard(args.shard))


def cmd_ab(args: argparse.Namespace) -> None:
    from tb_plugin.ab.runner import load_runner

    load_runner(args.config).run(low_label=args.low_label)


def cmd_export(args: argparse.Namespace) -> None:
    from tb_plugin import stage_record
    from tb_plugin.pipeline import load_stage

    stage = load_stage(args.config)
    status = stage_record.status(stage)
    if status.state == "stale":
        raise stage_record.StaleOutputError(
            f"{stage.stage_dir}: stale ({status.reason}); rerun it with 'tb run ... --overwrite' before exporting"
        )
    if args.format in ("onnx", "torchscript"):  # the trained networks (tb_plugin.model_export)
        from stages.model_exports import exportable_models
        from tb_plugin.model_export import export_models

        out = Path(args.out) if args.out else stage.stage_dir / "export"
        export_models(exportable_models(stage, args.config), out, args.format)
        return
    if not hasattr(stage, "export"):
        raise ConfigError(
            f"{args.config}: stage '{stage.config.stage}' has no embeddings to export (use a tracking_bert config)"
        )
    stage.export(args.format, Path(args.out) if args.out else None)


def cmd_stages(args: argparse.Namespace) -> None:
    from tb_plugin.registry import available_stages

    for (stage, model), target in sorted(available_stages().items()):
        print(f"{stage:20s} {model:24s} {target}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tb", description="TrackingBERT plugin for ACORN-style tracking pipelines")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="write simulated TrackML events (the built-in data)")
    sim.add_argument(
        "--events",
        type=int,
        help="number of events (required, except with --particles: a replay is one event by default)",
    )
    sim.add_argument("--pileup", type=float, default=200.0, help="mean pp interactions per event (default 200)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", required=True, help="output folder")
    sim.add_argument("--detector", help="detectors.csv to simulate (default: the built-in TrackML-like detector)")
    sim.add_argument("--particles", type=Path, help="replay the kinematics of this TrackML particles file")
    sim.add_argument("--first-event", type=int, default=1000, help="id of the first event (default 1000)")
    sim.add_argument("--cells", action="store_true", help="also write cells files")
    sim.add_argument("--inefficiency", type=float, help="probability that a crossing leaves no hit")
    sim.add_argument("--noise-fraction", type=float, help="fraction of all hits that are noise")
    sim.add_argument(
        "--vertex-sigma-z",
        type=float,
        help="longitudinal vertex spread in mm (default 5.5 as in the TrackML files; 50 for the LHC luminous region)",
    )
    sim.add_argument(
        "--vertex-z-mean",
        type=float,
        help="centre of the luminous region along the beam in mm (default 0: a beam spot moved by this much)",
    )
    sim.add_argument(
        "--uniform-field",
        action="store_true",
        help="a uniform 2 T field (default: the TrackML field, falling off towards the solenoid ends)",
    )
    cond = sim.add_argument_group(
        "detector conditions",
        "modules that differ from detectors.csv: dead, less efficient, misaligned (default: none); "
        "written to OUT/detector_conditions.csv, while detectors.csv keeps the nominal geometry",
    )
    cond.add_argument("--dead-fraction", type=float, metavar="F", help="fraction of the modules that are dead (0 to 1)")
    cond.add_argument(
        "--dead-modules", type=Path, metavar="CSV", help="csv of dead modules, columns volume_id,layer_id,module_id"
    )
    cond.add_argument(
        "--efficiency-spread",
        type=float,
        metavar="S",
        help="each module's efficiency is 1 - |N(0, S)|, on top of --inefficiency (S: 0 to 1)",
    )
    cond.add_argument(
        "--misalignment-mm", type=float, metavar="S", help="sigma of each module's shifts along its local u, v, w (mm)"
    )
    cond.add_argument(
        "--misalignment-mrad",
        type=float,
        metavar="S",
        help="sigma of each module's rotations about its local u, v, w (mrad)",
    )
    cond.add_argument(
        "--conditions-seed",
        type=int,
        metavar="N",
        help="seed of the conditions (default 0, whatever --seed: the same detector across datasets)",
    )
    cond.add_argument(
        "--conditions",
        type=Path,
        metavar="CSV",
        help="reuse a detector_conditions.csv (instead of drawing the options above)",
    )
    sim.set_defaults(func=cmd_simulate)

    train = sub.add_parser("train", help="train a stage from its YAML config")
    train.add_argument("config")
    train.add_argument(
        "--checkpoint", help="resume from this checkpoint (default: the last one in stage_dir/artifacts)"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="train from scratch, removing the stage's earlier model and outputs"
    )
    train.set_defaults(func=cmd_train)

    infer = sub.add_parser("infer", help="run a stage over its input events")
    infer.add_argument("config")
    infer.add_argument("--overwrite", action="store_true", help="rewrite events already written")
    infer.add_argument(
        "--shard",
        metavar="K/N",
        help="infer shard K (1..N) of N: the events at positions K-1, K-1+N, ... of each split; N such "
        "processes (an array job: $SLURM_ARRAY_TASK_ID/N) write one stage_dir",
    )
    infer.set_defaults(func=cmd_infer)

    evaluate = sub.add_parser("eval", help="evaluate a stage: metrics.json and plots in stage_dir/eval")
    evaluate.add_argument("config")
    evaluate.set_defaults(func=cmd_eval)

    run = sub.add_parser("run", help="run a pipeline of stage configs in order (resumable)")
    run.add_argument("pipeline")
    run.add_argument("--overwrite", action="store_true", help="rewrite events already written")
    run.add_argument(
        "--shard",
        metavar="K/N",
        help="run shard K (1..N) of N of every stage's inference, waiting for all N after each stage; "
        "stages that train must be trained first",
    )
    run.set_defaults(func=cmd_run)

    status = sub.add_parser(
        "status", help="list each stage of a pipeline as up to date, incomplete, stale (and why) or missing"
    )
    status.add_argument("config", help="a pipeline file (or one stage config)")
    status.set_defaults(func=cmd_status)

    ab = sub.add_parser(
        "ab",
        help="A/B: the baseline pipeline against the same pipeline with module vectors (pretrained TrackingBERT "
        "and its controls: random, shuffled, geometry, learned, finetune), paired over seeds and events",
    )
    ab.add_argument("config", help="the A/B config (configs/ab/demo.yaml)")
    ab.add_argument(
        "--low-label", action="store_true", help="also run the low-label sweep of the config's low_label section"
    )
    ab.set_defaults(func=cmd_ab)

    export = sub.add_parser(
        "export",
        help="write the module embedding table and vocabulary of a trained tracking_bert stage (csv, npz, pt), "
        "or a trained stage's networks, checked, with a JSON sidecar each (onnx, torchscript)",
    )
    export.add_argument("config")
    export.add_argument("--format", choices=("csv", "npz", "pt", "onnx", "torchscript"), default="csv")
    export.add_argument("--out", help="output folder (default: stage_dir/export)")
    export.set_defaults(func=cmd_export)

    stages = sub.add_parser("stages", help="list the registered stages")
    stages.set_defaults(func=cmd_stages)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        try:
            args.func(args)
        except OSError as err:  # a write outside our atomic writer (Lightning's checkpoints): same one line
            if isinstance(err, WriteError) or err.errno not in WRITE_ERRNOS or isinstance(err, FileNotFoundError):
                raise
            raise write_error(err, err.filename or "an output file") from None
    except _user_errors() as err:
        if args.traceback:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"tb: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
