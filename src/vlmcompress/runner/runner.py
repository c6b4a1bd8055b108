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
import os
import platform
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError, ModelLoadError, VlmCompressError
from ..eval.calibration import CalibrationSource
from ..eval.loop import CellOutput, evaluate_cell
from ..eval.statistics import loyalty
from ..eval.summary import summarise_cell
from ..footprint import held_weight_bytes
from ..methods import CompressionContext, Setting
from ..methods.spec import short
from ..models import LoadedModel, load_model
from ..models.loading import dtype_note
from ..store import Store
from ..tasks import TASKS
from .config import RunConfig
from .outputs import OutputLock, OutputWriter, prepare_output_dir

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The run's device; a CUDA device that this machine does not have is one ConfigError."""
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


def cell_key(config: RunConfig, model: str, setting: Setting, task: str) -> str:
    """What makes two cells the same computation (the device, the placement and paths are
    not part of it).  The attention implementation and the request timing mode enter the
    key only when they are not the defaults, so the keys of earlier runs stay valid and a
    request-timed run never reuses a batch-timed cell (which has no TTFT/TPOT)."""
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


@dataclass
class _ModelState:
    loaded: LoadedModel | None = None
    pristine: bool = False
    checked: bool = False  # every setting's check_model passed on this model
    guard: Any = None  # the hook checking the logits


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what a failed cell or sample records)."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= 300 else line[:299] + "…"


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
    """As :func:`summarise_cell` computes it."""
    base = {r["sample_id"]: r for r in baseline_rows if r["error"] is None}
    pairs = [
        (task.normalize(r["prediction"]), task.normalize(base[r["sample_id"]]["prediction"]), r["score"], base[r["sample_id"]]["score"])
        for r in rows
        if r["error"] is None and r["sample_id"] in base
    ]
    return {**loyalty(pairs), "errors": errors[:20]}


def _check_settings(settings: list[Setting], loaded: LoadedModel) -> None:
    """Refuse a setting whose knobs do not fit the model (a group size that does not divide
    a layer, a targets regex matching nothing, a layer beyond the decoder, a family a method
    cannot serve) before any cell runs; nothing is changed."""
    ctx = CompressionContext(loaded.model, loaded.adapter, loaded.processor)
    for setting in settings:
        for m in setting.methods:
            m.check_model(ctx)


def run(config: RunConfig, *, echo: Callable[[str], None] | None = None, wait: bool = False, retry_failed: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``config``; returns the ``results.json`` dict.

    ``wait``: when another process holds the output folder, wait for it instead of refusing.
    ``retry_failed``: compute again the cells stored as failed (they are skipped otherwise)."""
    settings = config.validate()  # the only validation of a run: every knob before any work
    device = resolve_device(config.device)
    say = echo or (lambda msg: None)
    tasks = {name: TASKS.get(name).with_run_options(toxicity_model=config.toxicity_model) for name in config.tasks}
    out_dir = prepare_output_dir(config.output)
    with OutputLock(out_dir, wait=wait, echo=say):
        store = Store(out_dir / "results.sqlite")  # a damaged or foreign store is refused here
        say(f"vlmcompress: {len(config.models)} model(s) × {len(settings)} setting(s) × {len(config.tasks)} task(s) → {config.output}")
        try:
            return _sweep(config, settings, tasks, store, out_dir, device, say, retry_failed)
        finally:
            store.close()


def _sweep(config, settings, tasks, store: Store, out_dir: Path, device: torch.device, say, retry_failed: bool) -> dict[str, Any]:
    meta = {"config": config.to_dict(), "versions": versions(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    timing_session = f"{platform.node()}:{os.getpid()}@{meta['date']}#{uuid.uuid4().hex[:8]}"  # one per call of run()
    store.set_meta(meta)
    writer = OutputWriter(out_dir, store)
    try:
        total = len(config.models) * len(settings) * len(config.tasks)
        done = 0
        # every task's samples before any model loads: a missing dataset copy or a wrong
        # column is found at once (images are decoded when their batch runs)
        samples_of = {name: task.samples(config.seed, config.limit, config.data_dir) for name, task in tasks.items()}
        runnable_of = {name: {s.id: s for s in samples if s.error is None} for name, samples in samples_of.items()}
        for model_name in config.models:
            state = _ModelState()

            baseline = settings[0]
            for setting in settings:
                # task -> None (the whole cell) or the ids of a partial cell's errored samples
                plan: dict[str, list[str] | None] = {}
                for t in config.tasks:
                    key = cell_key(config, model_name, setting, t)
                    status = store.cell_status(key)
                    if status is None or (status == "failed" and retry_failed):
                        plan[t] = None
                    elif status == "partial":
                        # samples broken before any work (an image that does not decode) would fail again
                        retry = [r["sample_id"] for r in store.samples(key) if r["error"] is not None and r["sample_id"] in runnable_of[t]]
                        if retry:
                            plan[t] = retry
                    elif status == "failed":
                        say(f"{model_name} | {setting.spec} | {t}: failed in an earlier run ({store.cell(key).get('error')}); skipped (--retry-failed computes it again)")
                done += len(config.tasks) - len(plan)
                if not plan:
                    continue
                needs_fresh = any(m.hook == "weights" for m in setting.methods)
                if state.loaded is None or (needs_fresh or not state.pristine):
                    first_load = state.loaded is None and not state.checked
                    if state.guard is not None:
                        state.guard.remove()
                    state.loaded = state.guard = None
                    _free(device)
                    state.loaded = _load(model_name, config, device)
                    state.guard = _guard_logits(state.loaded.model)
                    state.pristine = True
                    if first_load:  # every setting's knobs against this model, before the baseline runs
                        say(dtype_note(state.loaded))
                        _check_settings(settings, state.loaded)
                        state.checked = True
                loaded = state.loaded
                inputs_on = loaded.input_device or device  # the first device of a model spread by device_map
                calibration = CalibrationSource(
                    config.calibration_task or config.tasks[0], config.calibration_seed, config.calibration_samples, config.batch_size, loaded.adapter, inputs_on, config.data_dir
                )
                ctx = CompressionContext(loaded.model, loaded.adapter, loaded.processor, calibration=calibration)
                ordered = setting.ordered()
                started = time.perf_counter()
                try:
                    for m in ordered:
                        m.prepare(ctx)
                except Exception as exc:  # noqa: BLE001 - the setting's cells fail, the sweep goes on
                    msg = f"prepare: {one_line(exc)}"
                    log.warning("%s | %s: %s", model_name, setting.spec, msg)
                    state.pristine = False  # whatever prepare changed, the next setting reloads
                    _remove(ordered, ctx, state)
                    _free(device)
                    for task_name, retry in plan.items():
                        done += 1
                        say(_record_failure(store, writer, meta, config, model_name, setting, tasks[task_name], msg, retry, f"[{done}/{total}]"))
                    continue
                if needs_fresh:
                    state.pristine = False
                ctx.info.setdefault("prepare_s", time.perf_counter() - started)
                ctx.info.setdefault("weight_bytes_in_memory", held_weight_bytes(loaded.model))  # a weight method's own count wins
                ctx.info.update(
                    attn_implementation=config.attn_implementation,
                    device_map=config.device_map,
                    model_devices=list(loaded.devices),
                    # cells timed by the same process share this: speed-ups are comparable only among them
                    timing_session=timing_session,
                )
                try:
                    for task_name, retry in plan.items():
                        task = tasks[task_name]
                        cell_started = time.perf_counter()
                        key = cell_key(config, model_name, setting, task_name)
                        was_stored = store.has_cell(key)  # partial, or failed and retried
                        try:
                            if retry is None:
                                out = evaluate_cell(ctx, ordered, task, samples_of[task_name], config.batch_size, inputs_on, config.max_new_tokens, timing=config.timing)
                                rows, old = out.rows, None
                            else:
                                old = store.cell(key)
                                out = evaluate_cell(ctx, ordered, task, [runnable_of[task_name][i] for i in retry], config.batch_size, inputs_on, config.max_new_tokens, timing=config.timing)
                                fresh = {r["sample_id"]: r for r in out.rows}
                                rows = [fresh.get(r["sample_id"], r) for r in store.samples(key)]
                                out = CellOutput(rows, _merged_efficiency(old["efficiency"] or {}, out.efficiency, rows, len(retry)), [r["error"] for r in rows if r["error"] is not None])
                            baseline_rows = rows if setting.is_baseline else store.samples(cell_key(config, model_name, baseline, task_name))
                            cell = summarise_cell(key, model_name, setting, task, out, ctx, baseline_rows, config.seed)
                        except Exception as exc:  # noqa: BLE001 - this cell fails, the sweep goes on
                            msg = one_line(exc)
                            log.warning("%s | %s | %s: %s", model_name, setting.spec, task_name, msg)
                            state.pristine = False
                            _free(device)
                            done += 1
                            say(_record_failure(store, writer, meta, config, model_name, setting, task, msg, retry, f"[{done}/{total}]"))
                            continue
                        if old is not None:  # a retried cell keeps its first pass's session (its timing)
                            cell["efficiency"].update({k: old["efficiency"][k] for k in _SESSION_KEYS if k in (old["efficiency"] or {})})
                        store.save_cell(cell, rows)
                        writer.cell_finished(cell, rows, meta)
                        if was_stored and setting.is_baseline:  # the cells compared with it
                            _relink(store, writer, config, model_name, settings[1:], task, rows)
                        done += 1
                        state_word = {"partial": ", PARTIAL", "failed": ", FAILED"}.get(cell["status"], "")
                        say(
                            f"[{done}/{total}] {model_name} | {setting.spec} | {task_name}: {cell['primary_metric']} {cell['scores'].get(cell['primary_metric'], float('nan')):.3f}"
                            f" (n={cell['n']}{', errors ' + str(cell['n_errors']) if cell['n_errors'] else ''}{state_word}) loyalty {cell['loyalty']['agreement']:.3f}"
                            f"{' (retried ' + str(len(retry)) + ')' if retry else ''} in {time.perf_counter() - cell_started:.1f}s"
                        )
                finally:
                    _remove(ordered, ctx, state)
        return writer.finish(meta)
    except BaseException:
        try:
            writer.finish(meta)  # an interrupted run still leaves outputs of every finished cell
        except Exception as exc:  # noqa: BLE001 - e.g. the disk that stopped the run is still full
            log.warning("could not rewrite the outputs: %s", exc)
        raise


def _remove(ordered, ctx: CompressionContext, state: _ModelState) -> None:
    for m in reversed(ordered):
        try:
            m.remove(ctx)
        except Exception as exc:  # noqa: BLE001 - a method half prepared; the model is reloaded
            log.warning("%s: remove failed (%s); the model will be reloaded", m.name, exc)
            state.pristine = False


def _record_failure(store: Store, writer: OutputWriter, meta, config: RunConfig, model_name: str, setting: Setting, task, msg: str, retry, progress: str) -> str:
    """Store a cell that raised as a whole; a partial cell whose retry raised keeps its
    scored rows (nothing lost) and stays partial.  Returns the progress line."""
    where = f"{progress} {model_name} | {setting.spec} | {task.name}"
    if retry is not None:
        return f"{where}: retrying {len(retry)} errored sample(s) failed ({msg}); the partial cell is kept"
    cell = store.save_failed_cell(
        {
            "cell_key": cell_key(config, model_name, setting, task.name),
            "model": model_name,
            "setting": setting.spec,
            "setting_normalized": setting.normalized,
            "task": task.name,
            "primary_metric": task.primary_metric,
        },
        msg,
    )
    writer.cell_finished(cell, [], meta)
    return f"{where}: FAILED {msg}"


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
