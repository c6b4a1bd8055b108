"""Where cells run: in this process (the default), or on a Ray cluster (``executor: ray``).

An executor takes the sweep's jobs in order and hands each result to the driver's
``finished`` callback, which alone writes the store.  ``fill`` is called on a job just
before it is handed out (it reads the baseline's rows from the store), and a job whose
``after`` names another job's cell is handed out only once that one is finished, so the
baseline of a model and task always runs before the settings compared with it.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .config import RunConfig
from .progress import SweepProgress
from .worker import CellJob, CellResult, CellWorker

Fill = Callable[[CellJob], CellJob]
Finished = Callable[[CellResult], None]
Label = Callable[[CellJob], str]


class Executor(Protocol):
    def execute(self, jobs: list[CellJob], fill: Fill, finished: Finished, progress: SweepProgress, label: Label) -> None: ...


class InProcessExecutor:
    """One :class:`CellWorker` in this process, the jobs one after another in sweep order
    (which already puts every baseline first)."""

    def __init__(self, config: RunConfig, timing_session: str, samples: dict[str, list] | None = None) -> None:
        self.config = config
        self.timing_session = timing_session
        self.samples = samples  # the driver's draw, reused by the worker in this process

    def execute(self, jobs: list[CellJob], fill: Fill, finished: Finished, progress: SweepProgress, label: Label) -> None:
        if not jobs:
            return
        worker = CellWorker(self.config, self.timing_session, self.samples)
        try:
            for job in jobs:
                job = fill(job)
                progress.cell_started(job.cell_key, label(job), job.size)
                result = worker.run(job, progress=lambda n, key=job.cell_key: progress.samples_done(key, n))
                if result.fatal is not None:
                    raise result.fatal
                finished(result)
        finally:
            worker.close()


def make_executor(config: RunConfig, timing_session: str, samples: dict[str, list] | None = None) -> Executor:
    """The executor ``config.executor`` names (Ray is imported only when asked for; its
    workers draw their own samples in their own processes)."""
    if config.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(config)
    return InProcessExecutor(config, timing_session, samples)
