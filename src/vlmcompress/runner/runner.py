"""Run a sweep: every model × setting × task cell, baseline first, each finished cell
committed to the store and the outputs rewritten, finished cells skipped on a re-run."""

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

from ..eval.calibration import CalibrationSource
from ..eval.loop import evaluate_cell
from ..eval.summary import summarise_cell
from ..footprint import held_weight_bytes
from ..methods import CompressionContext, Setting
from ..models import LoadedModel, load_model
from ..models.loading import dtype_note
from ..store import Store
from ..tasks import TASKS
from .config import RunConfig
from .outputs import OutputWriter

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _check_settings(settings: list[Setting], loaded: LoadedModel) -> None:
    """Refuse a setting whose knobs do not fit the model (a group size that does not divide
    a layer, a targets regex matching nothing, a layer beyond the decoder, a family a method
    cannot serve) before any cell runs; nothing is changed."""
    ctx = CompressionContext(loaded.model, loaded.adapter, loaded.processor)
    for setting in settings:
        for m in setting.methods:
            m.check_model(ctx)


def run(config: RunConfig, *, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``config``; returns the ``results.json`` dict."""
    settings = config.validate()  # the only validation of a run: every knob before any work
    say = echo or (lambda msg: None)
    say(f"vlmcompress: {len(config.models)} model(s) × {len(settings)} setting(s) × {len(config.tasks)} task(s) → {config.output}")
    tasks = {name: TASKS.get(name).with_run_options(toxicity_model=config.toxicity_model) for name in config.tasks}
    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(out_dir / "results.sqlite")
    writer = OutputWriter(out_dir, store)
    device = resolve_device(config.device)
    meta = {"config": config.to_dict(), "versions": versions(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    timing_session = f"{platform.node()}:{os.getpid()}@{meta['date']}#{uuid.uuid4().hex[:8]}"  # one per call of run()
    try:
        total = len(config.models) * len(settings) * len(config.tasks)
        done = 0
        # every task's samples before any model loads: a missing dataset copy or a wrong
        # column is found at once (images are decoded when their batch runs)
        samples_of = {name: task.samples(config.seed, config.limit, config.data_dir) for name, task in tasks.items()}
        for model_name in config.models:
            state = _ModelState()

            baseline = settings[0]
            for setting in settings:
                todo = [t for t in config.tasks if not store.has_cell(cell_key(config, model_name, setting, t))]
                done += len(config.tasks) - len(todo)
                if not todo:
                    continue
                needs_fresh = any(m.hook == "weights" for m in setting.methods)
                if state.loaded is None or (needs_fresh or not state.pristine):
                    first_load = state.loaded is None and not state.checked
                    state.loaded = None
                    state.loaded = load_model(
                        model_name,
                        dtype=config.dtype,
                        device=str(device),
                        trust_remote_code=config.trust_remote_code,
                        device_map=config.device_map,
                        attn_implementation=config.attn_implementation,
                    )
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
                for m in ordered:
                    m.prepare(ctx)
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
                    for task_name in todo:
                        task = tasks[task_name]
                        samples = samples_of[task_name]
                        cell_started = time.perf_counter()
                        out = evaluate_cell(ctx, ordered, task, samples, config.batch_size, inputs_on, config.max_new_tokens, timing=config.timing)
                        key = cell_key(config, model_name, setting, task_name)
                        baseline_rows = out.rows if setting.is_baseline else store.samples(cell_key(config, model_name, baseline, task_name))
                        cell = summarise_cell(key, model_name, setting, task, out, ctx, baseline_rows, config.seed)
                        store.save_cell(cell, out.rows)
                        writer.cell_finished(cell, out.rows, meta)
                        done += 1
                        say(
                            f"[{done}/{total}] {model_name} | {setting.spec} | {task_name}: {cell['primary_metric']} {cell['scores'].get(cell['primary_metric'], float('nan')):.3f}"
                            f" (n={cell['n']}{', errors ' + str(cell['n_errors']) if cell['n_errors'] else ''}) loyalty {cell['loyalty']['agreement']:.3f}"
                            f" in {time.perf_counter() - cell_started:.1f}s"
                        )
                finally:
                    for m in reversed(ordered):
                        m.remove(ctx)
        return writer.finish(meta)
    except BaseException:
        writer.finish(meta)  # an interrupted run still leaves outputs of every finished cell
        raise
    finally:
        store.close()
