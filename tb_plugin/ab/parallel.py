"""Run an A/B's stages in worker processes, `jobs` at a time (the A/B key `jobs`).

Why: on a small CPU machine one process with all cores' threads uses them badly. The Interaction GNN
trains 1.6x faster on two threads than on one, not 2x. Most of an A/B is independent: every
baseline-arm seed, and the pretraining next to them; every trackingbert-arm seed once the pretraining
is done. Two processes of one thread each finish the same work sooner than one process of two.

Each stage is one task, named by its stage_dir, which dedupes the stages that arms and seeds share.
A task waits for the tasks whose stage_dir it reads: any path among its values (`input_dir`,
`tracking_bert_dir`, a shuffled control's `pretrained_dir`, a fine-tuned embedding's
`module_embedding.table`) that lies in another task's stage_dir. A task that has already finished (its
its stage record says so) is not run again. A worker runs the A/B's own `run_once` (stage_runs.py), with
its output going to a log file under ab_dir/logs. The main process then walks the
arms as before: it finds every stage finished, collects the metrics and times inference, with all
its threads and nothing else running.

Train times recorded by a parallel run were measured with `threads` per worker and other stages
running beside them. They compare arms run the same way, not runs with another `jobs`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tb_plugin.ab.stage_runs import run_once
from tb_plugin.atomic import WriteError
from tb_plugin.stage_record import config_paths


@dataclass(frozen=True)
class StageTask:
    """One stage run: its config mapping (with stage_dir and input_dir set) and where it came from."""

    values: dict[str, Any]
    source: str

    @property
    def stage_dir(self) -> Path:
        return Path(self.values["stage_dir"])

    def needs(self, tasks: dict[Path, StageTask]) -> set[Path]:
        """The other tasks whose stage_dir this one reads: every path among its values (nested mappings
        and lists included) that is another task's stage_dir or lies inside one."""
        read = set(config_paths({k: v for k, v in self.values.items() if k != "stage_dir"}))
        return {
            folder
            for folder in tasks
            if folder != self.stage_dir and any(p == folder or p.is_relative_to(folder) for p in read)
        }


def ordered_tasks(values_lists: list[list[dict[str, Any]]], source: str) -> dict[Path, StageTask]:
    """One task per distinct stage_dir, in the order first listed (a stage shared by arms or seeds,
    e.g. the module map, appears once)."""
    tasks: dict[Path, StageTask] = {}
    for values_list in values_lists:
        for values in values_list:
            task = StageTask(dict(values), source)
            tasks.setdefault(task.stage_dir, task)
    return tasks


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: this process's threads (the cores, or OMP_NUM_THREADS) shared out, at
    least one each."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_task(values: dict[str, Any], source: str, log_path: str) -> float:
    """Worker side: run one stage as the A/B does, its output into log_path; returns seconds."""
    from tb_plugin.pipeline import stage_from_mapping

    start = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, _output_to(log):
        try:
            run_once(stage_from_mapping(values, source))
        except BaseException:
            traceback.print_exc(file=log)  # the whole story stays in the stage's log
            raise
    return time.perf_counter() - start


class WorkerError(RuntimeError):
    """A stage that failed in a worker process with an error that is not the user's (a bug, or a
    worker killed, e.g. out of memory): one line naming the stage and its log, which holds the
    traceback."""


def task_error(err: BaseException, path: Path, log_path: Path) -> BaseException:
    """The error a worker raised, as the main process reports it: the same one-line message a sequential
    run gives, naming the failing stage and its log. Errors of the user's input keep their type (the
    command line prints them in one line, exit status 2); anything else becomes a WorkerError."""
    where = f"[A/B stage {path}; its log: {log_path}]"
    if isinstance(err, BrokenProcessPool):
        return WorkerError(
            f"the worker process running A/B stage {path} died (killed, or out of memory?); its log: {log_path}"
        )
    ours = isinstance(err, (FileNotFoundError, WriteError)) or (
        isinstance(err, ValueError) and type(err) is not ValueError
    )
    if ours and len(err.args) == 1 and isinstance(err.args[0], str):  # the project's errors subclass ValueError
        try:
            return type(err)(f"{err.args[0]} {where}")
        except TypeError:  # an error class whose constructor takes other arguments
            pass
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return WorkerError(f"A/B stage {path} failed: {type(err).__name__}: {first} (traceback in {log_path})")


@contextlib.contextmanager
def _output_to(log: IO[str]) -> Iterator[None]:
    """Send everything the process writes to `log`: Python's sys.stdout / sys.stderr, and file
    descriptors 1 and 2 beneath them, which logging handlers made at import time (Lightning's) and C
    code write to."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def run_tasks(
    tasks: dict[Path, StageTask],
    jobs: int,
    log_dir: Path,
    finished: Callable[[Path], bool],
    worker: Callable[[dict[str, Any], str, str], float] = _run_task,
) -> None:
    """Run every unfinished task, `jobs` at a time, each after the tasks it reads; prints one line per
    start and end. A failing task stops the scheduling and its error is raised once the tasks already
    running have ended (their stages stay resumable). `worker` (a module-level function, for the spawned
    processes to import) runs one task: tests swap it."""
    done = {path for path in tasks if finished(path)}
    pending = {path: task for path, task in tasks.items() if path not in done}
    total, threads = len(pending), worker_threads(jobs)
    if not pending:
        return
    print(f"A/B: {total} stage runs in {jobs} processes of {threads} thread(s) each (logs: {log_dir})")
    context = multiprocessing.get_context("spawn")  # a fork of a process that used OpenMP can hang
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict[Future, Path] = {}
        while pending or running:
            for path in [p for p, t in pending.items() if t.needs(tasks) <= done][: jobs - len(running)]:
                log_path = log_dir / f"{_label(path)}.log"
                running[pool.submit(worker, pending.pop(path).values, tasks[path].source, str(log_path))] = path
                print(f"A/B: started {path}")
            if not running:
                raise RuntimeError(f"A/B scheduling: {sorted(map(str, pending))} wait for stages that never run")
            ended, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ended:
                path = running.pop(future)
                if future.exception() is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise task_error(future.exception(), path, log_dir / f"{_label(path)}.log") from None
                done.add(path)
                print(
                    f"A/B: [{total - len(pending) - len(running)}/{total}] finished {path} in {future.result():.0f} s"
                )


def _label(path: Path) -> str:
    """A log file name from a stage_dir: its last three parts, e.g. baseline_seed0_edge_classifier."""
    return "_".join(path.parts[-3:])
