"""Cells on a Ray cluster (``executor: ray``): imported only when a run asks for it.

Each Ray worker is an actor holding one :class:`~.worker.CellWorker`: it loads a model
once and computes the cells handed to it, one Ray call per cell, asking Ray for
``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs.  The driver (this process) keeps the
queue: a job goes to an idle worker, preferring one whose model and setting are already
in place (a weight method's calibration is not repeated), then one with the same model;
a job that compares with a baseline waits until that baseline is finished.  Results come
back to the driver, which alone writes the store, so resume, locking and reports work as
in-process.

A worker that dies (killed, out of memory, its node lost) costs only the cell it was
computing: Ray reports the actor dead, a fresh worker replaces it and the cell is handed
out again (at most ``MAX_ATTEMPTS`` times, then it is stored as failed).  Sample counts
travel from the workers to the driver's progress bars through a small actor.

Workers on other machines need vlmcompress installed and the same ``data_dir`` path;
each records its own ``timing_session`` (cells timed on different workers are not
compared side by side, as the report says).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from ..errors import ConfigError
from .config import RunConfig
from .executors import Fill, Finished, Label
from .progress import SweepProgress
from .worker import CellJob, CellResult, CellWorker, one_line

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a cell whose worker died this many times is stored as failed
POLL_S = 0.2  # how often the driver looks at the workers' progress while waiting


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor=ray needs Ray, which is not installed: pip install 'vlmcompress[ray]'") from None
    return ray


class _Worker:
    """The actor: a CellWorker in a Ray worker process."""

    def __init__(self, config: RunConfig) -> None:
        import os

        import torch

        threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        if threads > 0:  # Ray sets it from the CPUs the actor asked for
            torch.set_num_threads(threads)
        self.worker = CellWorker(config)

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, job: CellJob, sink: Any) -> CellResult:
        def progress(n: int) -> None:
            sink.add.remote(job.cell_key, n)

        return self.worker.run(job, progress=progress)


class _ProgressSink:
    """Sample counts from the workers, drained by the driver."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, int]] = []

    def add(self, key: str, n: int) -> None:
        self.pending.append((key, n))

    def drain(self) -> list[tuple[str, int]]:
        out, self.pending = self.pending, []
        return out


class RayExecutor:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.worker_pids: dict[Any, int] = {}  # actor -> process id (what the tests kill)

    def _resources(self, ray) -> tuple[float, float, int]:
        cluster = ray.cluster_resources()
        cpus = float(self.config.cpus_per_cell)
        gpus = self.config.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if cluster.get("GPU", 0) >= 1 and self.config.device != "cpu" else 0.0
        if gpus > cluster.get("GPU", 0):
            raise ConfigError(f"gpus_per_cell={gpus:g}: the Ray cluster has {cluster.get('GPU', 0):g} GPU(s)")
        if cpus > cluster.get("CPU", 0):
            raise ConfigError(f"cpus_per_cell={cpus:g}: the Ray cluster has {cluster.get('CPU', 0):g} CPU(s)")
        fits = int(cluster.get("CPU", 0) // cpus)
        if gpus > 0:
            fits = min(fits, int(cluster["GPU"] // gpus))
        return cpus, gpus, max(1, fits)

    def execute(self, jobs: list[CellJob], fill: Fill, finished: Finished, progress: SweepProgress, label: Label) -> None:
        if not jobs:
            return
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.config.ray_address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - a cluster that cannot be reached is one line
                raise ConfigError(f"executor=ray: cannot start or reach the Ray cluster (ray_address={self.config.ray_address!r}): {one_line(exc)}") from None
        actors: list[Any] = []
        try:
            cpus, gpus, fits = self._resources(ray)
            n_workers = min(self.config.ray_workers or fits, len(jobs))
            actor_cls = ray.remote(_Worker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
            sink = ray.remote(_ProgressSink).options(num_cpus=0).remote()
            progress.message(f"ray: {n_workers} worker(s), {cpus:g} CPU and {gpus:g} GPU each")

            def spawn() -> Any:
                actor = actor_cls.remote(self.config)
                actors.append(actor)
                return actor

            self._loop(ray, deque(jobs), [spawn() for _ in range(n_workers)], spawn, sink, fill, finished, progress, label)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started_here:
                ray.shutdown()

    def _loop(self, ray, pending: deque, idle: list, spawn, sink, fill: Fill, finished: Finished, progress: SweepProgress, label: Label) -> None:
        planned = {j.cell_key for j in pending}
        handled: set[str] = set()
        placed: dict[Any, tuple[str, int]] = {}  # actor -> (model, setting index) it holds
        inflight: dict[Any, tuple[Any, CellJob]] = {}
        while pending or inflight:
            while idle:
                ready = [j for j in pending if j.after is None or j.after in handled or j.after not in planned]
                if not ready:
                    break
                actor, job = _match(idle, ready, placed)
                idle.remove(actor)
                pending.remove(job)
                job = fill(job)
                placed[actor] = (job.model, job.setting_index)
                inflight[actor.run.remote(job, sink)] = (actor, job)
                progress.cell_started(job.cell_key, label(job), job.size)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for key, n in ray.get(sink.drain.remote()):
                progress.samples_done(key, n)
            for ref in done:
                actor, job = inflight.pop(ref)
                try:
                    result: CellResult = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the worker died: only its cell is lost
                    placed.pop(actor, None)
                    ray.kill(actor, no_restart=True)
                    job.attempt += 1
                    idle.append(spawn())
                    if job.attempt >= MAX_ATTEMPTS:
                        handled.add(job.cell_key)
                        finished(CellResult(job, failure=f"the Ray worker died {job.attempt} times computing this cell ({one_line(exc)})"))
                    else:
                        progress.cell_requeued(job.cell_key, f"{label(job)}: the Ray worker died ({type(exc).__name__}); the cell starts again on a fresh worker")
                        pending.appendleft(job)
                    continue
                except ray.exceptions.RayTaskError as exc:  # an error our worker did not catch: this cell fails
                    result = CellResult(job, failure=one_line(exc.cause if getattr(exc, "cause", None) else exc))
                if result.fatal is not None:
                    raise result.fatal
                handled.add(job.cell_key)
                idle.append(actor)
                finished(result)


def _match(idle: list, ready: list[CellJob], placed: dict) -> tuple[Any, CellJob]:
    """An idle worker and a ready job: one whose model and setting the worker holds, else
    its model, else the first in sweep order."""
    for want in (lambda a, j: placed.get(a) == (j.model, j.setting_index), lambda a, j: placed.get(a, ("",))[0] == j.model):
        for job in ready:
            for actor in idle:
                if want(actor, job):
                    return actor, job
    fresh = [a for a in idle if a not in placed]
    return (fresh or idle)[0], ready[0]
