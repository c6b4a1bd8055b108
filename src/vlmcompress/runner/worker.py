"""Compute cells: what the runner's executors (in-process, Ray) call, and nothing else.

A :class:`CellWorker` holds one loaded model and at most one prepared setting at a time;
:meth:`CellWorker.run` computes one cell (:class:`CellJob`) and returns its summary and
rows (:class:`CellResult`) without touching the store: the driver alone writes it, so
resume, locking and reports are the same whichever executor ran the cell.  Consecutive
jobs of the same setting reuse its preparation (a weight method's calibration runs once
per setting, not once per task); a setting whose ``prepare`` raised fails every cell of
it without preparing again.
"""

from __future__ import annotations

import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from ..errors import ModelLoadError, VlmCompressError
from ..eval.calibration import CalibrationSource
from ..eval.loop import CellOutput, evaluate_cell
from ..eval.statistics import loyalty
from ..eval.summary import summarise_cell
from ..footprint import held_weight_bytes
from ..methods import CompressionContext, Setting
from ..methods.spec import short
from ..models import LoadedModel, load_model
from ..models.loading import dtype_note
from ..tasks import TASKS
from .config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class CellJob:
    """One cell to compute, with what the worker needs from the store (filled by the driver
    just before the job is handed out)."""

    model: str
    setting_index: int  # into ``RunConfig.validate()``'s list; the baseline is 0
    task: str
    cell_key: str
    retry: list[str] | None = None  # a partial cell: the ids of its errored samples
    old_cell: dict[str, Any] | None = None  # a partial cell's stored summary
    old_rows: list[dict[str, Any]] | None = None  # and its stored rows
    baseline_rows: list[dict[str, Any]] | None = None  # the baseline's rows of this model and task
    size: int = 0  # samples it evaluates (for the progress bars)
    after: str | None = None  # the cell key of the baseline cell this one waits for (its loyalty needs it)
    attempt: int = 0  # how many times a worker died while computing it


@dataclass
class CellResult:
    """A computed cell (``cell`` and ``rows``), or the one-line reason it failed as a whole
    (``failure``).  ``fatal``: an error that stops the sweep (a setting that does not fit
    the model, a model that does not load), raised again in the driver."""

    job: CellJob
    cell: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    fatal: VlmCompressError | None = None
    notes: list[str] = field(default_factory=list)  # lines for the user (e.g. the dtype note of a first load)
    seconds: float = 0.0


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what a failed cell or sample records)."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= 300 else line[:299] + "…"


def new_timing_session() -> str:
    """Cells timed by one process share this: speed-ups are comparable only among them."""
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{platform.node()}:{os.getpid()}@{date}#{uuid.uuid4().hex[:8]}"


def resolve_device(name: str) -> torch.device:
    """The run's device; a CUDA device that this machine does not have is one ConfigError."""
    from ..errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); use --device cpu or auto")
        count = torch.cuda.device_count()
        index = name.partition(":")[2]
        if index and int(index) >= count:
            raise ConfigError(f"device={name!r}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1}); choose GPUs with CUDA_VISIBLE_DEVICES")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device={short(name)}: {str(exc).splitlines()[0] if str(exc) else 'not a device'}") from None


def _guard_logits(model) -> Any:
    """A forward hook that raises when the model's newest logits are not finite, so the
    loop records the sample as an error instead of decoding NaN (generation already waits
    for the device at every step, so the check adds no synchronisation of its own)."""

    def hook(module, args, output):
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.numel():
            last = logits[:, -1] if logits.dim() == 3 else logits
            if not bool(torch.isfinite(last).all()):
                raise FloatingPointError("the model produced non-finite logits (NaN or inf)")

    return model.register_forward_hook(hook)


def _load(model_name: str, config: RunConfig, device: torch.device) -> LoadedModel:
    """load_model, with every failure (a truncated safetensors file, a damaged config, no
    memory) as one ModelLoadError line."""
    try:
        return load_model(
            model_name,
            dtype=config.dtype,
            device=str(device),
            trust_remote_code=config.trust_remote_code,
            device_map=config.device_map,
            attn_implementation=config.attn_implementation,
        )
    except VlmCompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the loaders raise, the user gets one line
        raise ModelLoadError(f"cannot load model {short(model_name, 100)}: {one_line(exc)}") from None


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# efficiency of a cell that comes from its pass over the samples (a retried cell keeps the
# first pass's: the retried samples alone are too few to time it)
_PASS_KEYS = (
    "prefill_s", "decode_s_per_token", "samples_per_s", "peak_memory_bytes", "peak_memory_kind", "timing_mode",
    "ttft_s", "tpot_s", "request_samples", "request_errors", "request_prediction_mismatches", "request_timer",
)
_SESSION_KEYS = ("timing_session", "prepare_s")


def _merged_efficiency(old: dict[str, Any], new: dict[str, Any], rows: list[dict[str, Any]], retried: int) -> dict[str, Any]:
    eff = dict(new)
    for k in _PASS_KEYS:
        if k in old:
            eff[k] = old[k]
    eff["wall_s"] = (old.get("wall_s") or 0.0) + (new.get("wall_s") or 0.0)
    ok_stats = [r["stats"] for r in rows if r["error"] is None]
    for key in sorted({k for st in ok_stats for k, v in st.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}):
        values = [st[key] for st in ok_stats if key in st]
        eff[key] = sum(values) / len(values)
    eff["retried_samples"] = int(old.get("retried_samples") or 0) + retried
    return eff


def _loyalty_of(task, rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """As :func:`summarise_cell` computes it (for a stored cell whose baseline changed)."""
    base = {r["sample_id"]: r for r in baseline_rows if r["error"] is None}
    pairs = [
        (task.normalize(r["prediction"]), task.normalize(base[r["sample_id"]]["prediction"]), r["score"], base[r["sample_id"]]["score"])
        for r in rows
        if r["error"] is None and r["sample_id"] in base
    ]
    return {**loyalty(pairs), "errors": errors[:20]}


class CellWorker:
    """Computes cells of one run configuration; holds one model and one prepared setting.

    ``timing_session`` names the process's timing: cells with the same one were timed side
    by side (see the runner's module doc)."""

    def __init__(self, config: RunConfig, timing_session: str | None = None, samples: dict[str, list] | None = None) -> None:
        """``samples``: each task's samples as the driver drew them (same seed, limit and
        data), handed over in-process so that they are not drawn twice."""
        self.config = config
        self.settings: list[Setting] = config.validate()
        self.device = resolve_device(config.device)
        self.timing_session = timing_session or new_timing_session()
        self.tasks = {name: TASKS.get(name).with_run_options(toxicity_model=config.toxicity_model) for name in config.tasks}
        self._samples: dict[str, Any] = dict(samples or {})
        self._model_name: str | None = None
        self._loaded: LoadedModel | None = None
        self._pristine = False
        self._checked: set[str] = set()  # models whose every setting passed check_model
        self._guard: Any = None
        self._prepared: int | None = None  # setting index prepared on the model
        self._ctx: CompressionContext | None = None
        self._ordered: list = []
        self._prepare_failures: dict[tuple[str, int], str] = {}

    # ------------------------------------------------------------------ samples

    def samples(self, task_name: str) -> list:
        if task_name not in self._samples:
            self._samples[task_name] = self.tasks[task_name].samples(self.config.seed, self.config.limit, self.config.data_dir)
        return self._samples[task_name]

    def runnable(self, task_name: str) -> dict[str, Any]:
        return {s.id: s for s in self.samples(task_name) if s.error is None}

    # ------------------------------------------------------------------ model and setting

    def _load_model(self, model_name: str, notes: list[str]) -> None:
        if self._guard is not None:
            self._guard.remove()
        self._loaded = self._guard = None
        _free(self.device)
        self._loaded = _load(model_name, self.config, self.device)
        self._guard = _guard_logits(self._loaded.model)
        self._model_name, self._pristine = model_name, True
        if model_name not in self._checked:  # every setting's knobs against this model, before any cell runs
            notes.append(dtype_note(self._loaded))
            ctx = CompressionContext(self._loaded.model, self._loaded.adapter, self._loaded.processor)
            for setting in self.settings:
                for m in setting.methods:
                    m.check_model(ctx)
            self._checked.add(model_name)

    def _unprepare(self) -> None:
        if self._prepared is None:
            return
        for m in reversed(self._ordered):
            try:
                m.remove(self._ctx)
            except Exception as exc:  # noqa: BLE001 - a method half prepared; the model is reloaded
                log.warning("%s: remove failed (%s); the model will be reloaded", m.name, exc)
                self._pristine = False
        self._prepared, self._ctx, self._ordered = None, None, []

    def _prepare(self, model_name: str, index: int, notes: list[str]) -> str | None:
        """Make ``settings[index]`` the prepared setting on ``model_name``; the one-line
        reason when its ``prepare`` raised."""
        if self._prepared == index and self._model_name == model_name:
            return None
        self._unprepare()
        if (model_name, index) in self._prepare_failures:
            return self._prepare_failures[(model_name, index)]
        setting = self.settings[index]
        needs_fresh = any(m.hook == "weights" for m in setting.methods)
        if self._loaded is None or self._model_name != model_name or needs_fresh or not self._pristine:
            self._load_model(model_name, notes)
        loaded = self._loaded
        inputs_on = loaded.input_device or self.device  # the first device of a model spread by device_map
        config = self.config
        calibration = CalibrationSource(
            config.calibration_task or config.tasks[0], config.calibration_seed, config.calibration_samples, config.batch_size, loaded.adapter, inputs_on, config.data_dir
        )
        ctx = CompressionContext(loaded.model, loaded.adapter, loaded.processor, calibration=calibration)
        ordered = setting.ordered()
        started = time.perf_counter()
        self._prepared, self._ctx, self._ordered = index, ctx, ordered
        try:
            for m in ordered:
                m.prepare(ctx)
        except Exception as exc:  # noqa: BLE001 - the setting's cells fail, the sweep goes on
            msg = f"prepare: {one_line(exc)}"
            log.warning("%s | %s: %s", model_name, setting.spec, msg)
            self._pristine = False  # whatever prepare changed, the next setting reloads
            self._unprepare()
            _free(self.device)
            self._prepare_failures[(model_name, index)] = msg
            return msg
        if needs_fresh:
            self._pristine = False
        ctx.info.setdefault("prepare_s", time.perf_counter() - started)
        ctx.info.setdefault("weight_bytes_in_memory", held_weight_bytes(loaded.model))  # a weight method's own count wins
        ctx.info.update(
            attn_implementation=config.attn_implementation,
            device_map=config.device_map,
            model_devices=list(loaded.devices),
            timing_session=self.timing_session,
        )
        return None

    # ------------------------------------------------------------------ cells

    def run(self, job: CellJob, progress: Callable[[int], None] | None = None) -> CellResult:
        """Compute ``job``; never raises for a cell's own failure (see :class:`CellResult`)."""
        started = time.perf_counter()
        result = CellResult(job)
        try:
            failure = self._prepare(job.model, job.setting_index, result.notes)
        except VlmCompressError as exc:  # a setting that does not fit the model, a model that does not load
            result.fatal = exc
            return result
        if failure is not None:
            result.failure = failure
            return result
        setting, task, ctx = self.settings[job.setting_index], self.tasks[job.task], self._ctx
        inputs_on = self._loaded.input_device or self.device
        config = self.config
        try:
            if job.retry is None:
                out = evaluate_cell(ctx, self._ordered, task, self.samples(job.task), config.batch_size, inputs_on, config.max_new_tokens, progress=progress, timing=config.timing)
                rows = out.rows
            else:
                runnable = self.runnable(job.task)
                out = evaluate_cell(ctx, self._ordered, task, [runnable[i] for i in job.retry], config.batch_size, inputs_on, config.max_new_tokens, progress=progress, timing=config.timing)
                fresh = {r["sample_id"]: r for r in out.rows}
                rows = [fresh.get(r["sample_id"], r) for r in job.old_rows or []]
                old_eff = (job.old_cell or {}).get("efficiency") or {}
                out = CellOutput(rows, _merged_efficiency(old_eff, out.efficiency, rows, len(job.retry)), [r["error"] for r in rows if r["error"] is not None])
            baseline_rows = rows if setting.is_baseline else (job.baseline_rows or [])
            cell = summarise_cell(job.cell_key, job.model, setting, task, out, ctx, baseline_rows, config.seed)
        except Exception as exc:  # noqa: BLE001 - this cell fails, the sweep goes on
            result.failure = one_line(exc)
            log.warning("%s | %s | %s: %s", job.model, setting.spec, job.task, result.failure)
            self._pristine = False
            _free(self.device)
            return result
        if job.old_cell is not None:  # a retried cell keeps its first pass's session (its timing)
            old_eff = job.old_cell.get("efficiency") or {}
            cell["efficiency"].update({k: old_eff[k] for k in _SESSION_KEYS if k in old_eff})
        result.cell, result.rows = cell, rows
        result.seconds = time.perf_counter() - started
        return result

    def close(self) -> None:
        """Undo the prepared setting and drop the model."""
        self._unprepare()
        if self._guard is not None:
            self._guard.remove()
        self._loaded = self._guard = None
        _free(self.device)
