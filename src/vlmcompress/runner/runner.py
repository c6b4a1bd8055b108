"""Run a sweep: every model × setting × task cell, baseline first, each finished cell
committed to the store and the outputs rewritten, finished cells skipped on a re-run.

Nothing lost, nothing mislabelled:

* the output folder is held by one process at a time (:class:`~.outputs.OutputLock`);
* a cell whose samples partly errored is stored ``partial``; a re-run retries only its
  errored samples, keeps the good rows and re-summarises the cell (its timing stays the
  first pass's; ``retried_samples`` counts the retried ones), and when it is a baseline the
  loyalty of the cells compared with it is recomputed;
* a cell that raises as a whole (a method's ``prepare``, an out-of-memory error, every
  sample errored, non-finite logits on every sample) is stored ``failed`` with its
  one-line error and the sweep goes on; ``retry_failed=True`` (``--retry-failed``)
  computes such cells again;
* the model's logits are checked at every step: non-finite ones (NaN, inf) make the
  sample an error instead of a prediction decoded from garbage;
* every cell records ``timing_session`` in its efficiency: cells timed by one call of
  :func:`run` share it (a retried cell keeps its first pass's), so a speed-up between
  cells of different sessions (a resumed run's compressed cell against a baseline timed
  earlier, in another process) can be told apart from one measured side by side.
"""

from __future__ import annotations

import json
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..methods import Setting
from ..store import Store
from ..tasks import TASKS
from .config import RunConfig
from .executors import make_executor
from .outputs import OutputLock, OutputWriter, prepare_output_dir
from .progress import LineProgress, QuietProgress, SweepProgress
from .worker import CellJob, CellResult, _loyalty_of, new_timing_session, one_line, resolve_device

log = logging.getLogger(__name__)

__all__ = ["run", "cell_key", "versions", "one_line", "resolve_device"]


def cell_key(config: RunConfig, model: str, setting: Setting, task: str) -> str:
    """What makes two cells the same computation (the device, the placement, the executor
    and paths are not part of it).  The attention implementation and the request timing
    mode enter the key only when they are not the defaults, so the keys of earlier runs
    stay valid and a request-timed run never reuses a batch-timed cell (which has no
    TTFT/TPOT)."""
    key = {
        "model": model,
        "setting": setting.normalized,
        "task": task,
        "seed": config.seed,
        "limit": config.limit,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "max_new_tokens": config.max_new_tokens,
        "calibration": [config.calibration_task, config.calibration_samples, config.calibration_seed] if any(m.hook == "weights" for m in setting.methods) else None,
    }
    if config.attn_implementation != "sdpa":
        key["attn_implementation"] = config.attn_implementation
    if config.timing != "batch":
        key["timing"] = config.timing
    return json.dumps(key, sort_keys=True)


def versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {
        "vlmcompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def run(
    config: RunConfig,
    *,
    echo: Callable[[str], None] | None = None,
    wait: bool = False,
    retry_failed: bool = False,
    progress: SweepProgress | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``config``; returns the ``results.json`` dict.

    ``wait``: when another process holds the output folder, wait for it instead of refusing.
    ``retry_failed``: compute again the cells stored as failed (they are skipped otherwise).
    ``progress``: where progress goes (bars, lines); by default each line to ``echo``."""
    settings = config.validate()  # the only validation of a run: every knob before any work
    resolve_device(config.device)
    if progress is None:
        progress = LineProgress(echo) if echo is not None else QuietProgress()
    out_dir = prepare_output_dir(config.output)
    with OutputLock(out_dir, wait=wait, echo=progress.message):
        store = Store(out_dir / "results.sqlite")  # a damaged or foreign store is refused here
        progress.message(f"vlmcompress: {len(config.models)} model(s) × {len(settings)} setting(s) × {len(config.tasks)} task(s) → {config.output}")
        try:
            return _sweep(config, settings, store, out_dir, progress, retry_failed)
        finally:
            progress.close()
            store.close()


def _plan(config: RunConfig, settings: list[Setting], store: Store, runnable_of: dict[str, set[str]], retry_failed: bool, say) -> tuple[list[CellJob], int]:
    """The cells still to compute, in sweep order (per model: the baseline's first, then each
    setting's over every task), and how many are done or skipped already."""
    jobs: list[CellJob] = []
    skipped = 0
    for model_name in config.models:
        for index, setting in enumerate(settings):
            for t in config.tasks:
                key = cell_key(config, model_name, setting, t)
                status = store.cell_status(key)
                job = CellJob(model_name, index, t, key, size=len(runnable_of[t]))
                if not setting.is_baseline:
                    job.after = cell_key(config, model_name, settings[0], t)
                if status is None or (status == "failed" and retry_failed):
                    jobs.append(job)
                    continue
                if status == "partial":
                    # samples broken before any work (an image that does not decode) would fail again
                    retry = [r["sample_id"] for r in store.samples(key) if r["error"] is not None and r["sample_id"] in runnable_of[t]]
                    if retry:
                        job.retry, job.size = retry, len(retry)
                        jobs.append(job)
                        continue
                elif status == "failed":
                    say(f"{model_name} | {setting.spec} | {t}: failed in an earlier run ({store.cell(key).get('error')}); skipped (--retry-failed computes it again)")
                skipped += 1
    planned = {j.cell_key for j in jobs}
    for j in jobs:  # a baseline computed earlier is in the store already: nothing to wait for
        if j.after not in planned:
            j.after = None
    return jobs, skipped


def _sweep(config: RunConfig, settings: list[Setting], store: Store, out_dir: Path, progress: SweepProgress, retry_failed: bool) -> dict[str, Any]:
    meta = {"config": config.to_dict(), "versions": versions(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.set_meta(meta)
    writer = OutputWriter(out_dir, store)
    try:
        total = len(config.models) * len(settings) * len(config.tasks)
        # every task's samples before any model loads: a missing dataset copy or a wrong
        # column is found at once (images are decoded when their batch runs)
        tasks = {name: TASKS.get(name).with_run_options(toxicity_model=config.toxicity_model) for name in config.tasks}
        drawn = {name: task.samples(config.seed, config.limit, config.data_dir) for name, task in tasks.items()}
        runnable_of = {name: {s.id for s in samples if s.error is None} for name, samples in drawn.items()}
        jobs, skipped = _plan(config, settings, store, runnable_of, retry_failed, progress.message)
        progress.start(total, skipped)
        done = skipped

        def fill(job: CellJob) -> CellJob:
            """What the worker needs from the store, read when the job is handed out."""
            if job.retry is not None:
                job.old_cell, job.old_rows = store.cell(job.cell_key), store.samples(job.cell_key)
            if not settings[job.setting_index].is_baseline:
                job.baseline_rows = store.samples(cell_key(config, job.model, settings[0], job.task))
            return job

        def finished(result: CellResult) -> None:
            nonlocal done
            job, setting, task = result.job, settings[result.job.setting_index], tasks[result.job.task]
            for note in result.notes:
                progress.message(note)
            done += 1
            where = f"[{done}/{total}] {job.model} | {setting.spec} | {task.name}"
            if result.failure is not None:
                if job.retry is not None:  # the partial cell keeps its scored rows (nothing lost)
                    line = f"{where}: retrying {len(job.retry)} errored sample(s) failed ({result.failure}); the partial cell is kept"
                else:
                    cell = store.save_failed_cell(
                        {"cell_key": job.cell_key, "model": job.model, "setting": setting.spec, "setting_normalized": setting.normalized,
                         "task": task.name, "primary_metric": task.primary_metric},
                        result.failure,
                    )
                    writer.cell_finished(cell, [], meta)
                    line = f"{where}: FAILED {result.failure}"
                progress.cell_finished(job.cell_key, line)
                return
            cell, rows = result.cell, result.rows
            was_stored = store.has_cell(job.cell_key)  # partial, or failed and retried
            store.save_cell(cell, rows)
            writer.cell_finished(cell, rows, meta)
            if was_stored and setting.is_baseline:  # the cells compared with it
                _relink(store, writer, config, job.model, settings[1:], task, rows)
            state_word = {"partial": ", PARTIAL", "failed": ", FAILED"}.get(cell["status"], "")
            progress.cell_finished(
                job.cell_key,
                f"{where}: {cell['primary_metric']} {cell['scores'].get(cell['primary_metric'], float('nan')):.3f}"
                f" (n={cell['n']}{', errors ' + str(cell['n_errors']) if cell['n_errors'] else ''}{state_word}) loyalty {cell['loyalty']['agreement']:.3f}"
                f"{' (retried ' + str(len(job.retry)) + ')' if job.retry else ''} in {result.seconds:.1f}s",
            )

        def label(job: CellJob) -> str:
            return f"{job.model} | {settings[job.setting_index].spec} | {job.task}"

        executor = make_executor(config, new_timing_session(), drawn)
        executor.execute(jobs, fill, finished, progress, label)
        return writer.finish(meta)
    except BaseException:
        try:
            writer.finish(meta)  # an interrupted run still leaves outputs of every finished cell
        except Exception as exc:  # noqa: BLE001 - e.g. the disk that stopped the run is still full
            log.warning("could not rewrite the outputs: %s", exc)
        raise


def _relink(store: Store, writer: OutputWriter, config: RunConfig, model_name: str, settings: list[Setting], task, baseline_rows) -> None:
    """A retried baseline: recompute the loyalty of the stored cells compared with it."""
    for setting in settings:
        key = cell_key(config, model_name, setting, task.name)
        cell = store.cell(key)
        if cell is None or cell["status"] == "failed":
            continue
        detail = _loyalty_of(task, store.samples(key), baseline_rows, (cell["loyalty"] or {}).get("errors", []))
        store.update_loyalty(key, detail)
        cell["loyalty"] = detail
        writer.cell_updated(cell)
