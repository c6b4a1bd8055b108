"""The evaluation loop of one cell: batched greedy generation with left padding,
compression hooks around it, timing, memory and per-sample scoring.

Timing modes (``timing``): ``batch`` times the batches the predictions come from
(prefill and per-token decode of a left-padded batch); ``request`` does that too and then
times every sample again alone, at batch 1 and after a warm-up request, serving-style:
``ttft_s`` (time to first token) and ``tpot_s`` (time per output token), medians over
the requests (see :mod:`.timing`).  Predictions and scores always come from the batched
pass, so they are the same in both modes; the request pass reports how many of its own
answers differ (``request_prediction_mismatches``: 0 unless batching changes numerics).

Bytes: the KV bytes of a plain cache are counted at the model's reference dtype (the
checkpoint's 16-bit dtype, :mod:`vlmcompress.footprint`), whatever the compute dtype.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from ..errors import VlmCompressError
from ..footprint import dtype_bytes, kv_footprint, reference_dtype
from ..methods.base import CompressionContext, CompressionMethod
from ..tasks.base import Sample, Task
from .timing import PeakMemory, RequestClock, StepClock

TIMING_MODES = ("batch", "request")

log = logging.getLogger(__name__)


@dataclass
class BatchOutput:
    predictions: list[str]
    generated_tokens: list[int]
    prefill_s: float
    decode_s: float
    decode_steps: int
    sample_stats: list[dict[str, Any]]


@dataclass
class CellOutput:
    rows: list[dict[str, Any]]
    efficiency: dict[str, Any]
    errors: list[str] = field(default_factory=list)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def generation_cache(ctx: CompressionContext, methods: list[CompressionMethod], batch: dict):
    """The cache a batch generates with: the first method's that brings one (KV quantization,
    eviction), else the library's ``DynamicCache``."""
    for m in methods:
        cache = m.make_cache(ctx, batch)
        if cache is not None:
            return cache
    return DynamicCache(config=ctx.model.config.get_text_config())


def generate_batch(
    ctx: CompressionContext,
    methods: list[CompressionMethod],
    samples: list[Sample],
    max_new_tokens: int,
    device: torch.device,
    task: Task | None = None,
    timing: str = "batch",
) -> BatchOutput:
    """Generate greedily for ``samples`` as one left-padded batch, through the setting's hooks.

    ``timing``: ``batch`` (:class:`StepClock`) or ``request`` (:class:`RequestClock`, for
    one sample at a time).  The clock starts once the processor's output is on the device
    (the setting's cache set-up and the vision tower count as prefill)."""
    model, adapter = ctx.model, ctx.adapter
    tokenizer = ctx.processor.tokenizer
    prompts = [task.prompt(s) if task else s.question for s in samples]
    batch = _to_device(adapter.build_inputs([s.load_image() for s in samples], prompts), device)
    clock = RequestClock(device) if timing == "request" else StepClock(device)
    clock.begin()
    cache = generation_cache(ctx, methods, batch)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            stopping_criteria=[clock],
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt_len = batch["input_ids"].shape[1]
    new_tokens = out.sequences[:, prompt_len:]
    eos_ids = _eos_ids(model, tokenizer)
    generated = []
    for row in new_tokens.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in eos_ids:
                n = i + 1
                break
        generated.append(n)
    predictions = [tokenizer.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new_tokens.tolist(), generated)]
    stats: list[dict[str, Any]] = [{"generated_tokens": g, "prompt_tokens": int(p)} for g, p in zip(generated, batch["attention_mask"].sum(-1).tolist())]
    for m in methods:
        extra = m.after_generate(ctx, batch, out.past_key_values)
        if extra:
            for s, e in zip(stats, extra):
                s.update(e)
    element_size = dtype_bytes(reference_dtype(model))
    for s, fp in zip(stats, _kv_footprint(methods, out.past_key_values, stats, model.config.get_text_config().num_hidden_layers, element_size)):
        s.update(fp)
    return BatchOutput(predictions, generated, clock.prefill_s, clock.decode_s, clock.decode_steps, stats)


def _error_row(sample: Sample, msg: str) -> dict[str, Any]:
    return {"sample_id": sample.id, "prediction": None, "gold": sample.answer, "score": None, "metrics": {}, "meta": sample.meta, "error": msg, "stats": {}}


def _kv_footprint(methods: list[CompressionMethod], cache, stats: list[dict[str, Any]], n_layers: int, element_size: int | None = None) -> list[dict[str, float]]:
    """KV bytes of each sample at its OWN end: a sample run alone stops after its
    end-of-sequence token, which is never fed back, so its cache holds its prompt (as
    many entries per layer as eviction or token dropping left) and all its generated
    tokens but the last; the tokens a batch keeps feeding a finished row are not its own."""
    held = next((h for m in methods if (h := m.prompt_entries_held()) is not None), None)
    if held is None:
        held = [[float(s["prompt_tokens"])] * n_layers for s in stats]
    return kv_footprint(cache, held, [s["generated_tokens"] - 1 for s in stats], element_size)


def _model_devices(model) -> list[torch.device]:
    """Every device holding a parameter (several GPUs for a model spread by ``device_map``)."""
    return list(dict.fromkeys(p.device for p in model.parameters()))


def _request_timing(
    ctx: CompressionContext,
    methods: list[CompressionMethod],
    task: Task,
    samples: list[Sample],
    predictions: dict[str, str],
    max_new: int,
    device: torch.device,
) -> dict[str, Any]:
    """Serving-style timing: each sample alone at batch 1, after one untimed warm-up request."""
    ttft, tpot, mismatches, errors = [], [], 0, 0
    if samples:
        try:
            generate_batch(ctx, methods, samples[:1], min(2, max_new), device, task, timing="request")
        except VlmCompressError:
            raise
        except Exception:  # noqa: BLE001 - the timed requests below report it
            pass
    timer = RequestClock(device).timer
    for sample in samples:
        try:
            out = generate_batch(ctx, methods, [sample], max_new, device, task, timing="request")
        except VlmCompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken sample is already reported by the batched pass
            log.warning("request timing of %s failed: %s", sample.id, exc)
            errors += 1
            continue
        ttft.append(out.prefill_s)
        if out.decode_steps:
            tpot.append(out.decode_s / out.decode_steps)
        if out.predictions[0] != predictions.get(sample.id):
            mismatches += 1
    return {
        "ttft_s": statistics.median(ttft) if ttft else float("nan"),
        "tpot_s": statistics.median(tpot) if tpot else float("nan"),
        "request_samples": len(ttft),
        "request_errors": errors,
        "request_prediction_mismatches": mismatches,
        "request_timer": timer,
    }


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


WARMUP_SAMPLES = 2  # samples of the first batch run untimed before a cell's timed batches


def evaluate_cell(
    ctx: CompressionContext,
    methods: list[CompressionMethod],
    task: Task,
    samples: list[Sample],
    batch_size: int,
    device: torch.device,
    max_new_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
    timing: str = "batch",
) -> CellOutput:
    """Score ``samples`` of ``task`` under the prepared setting.

    The first ``WARMUP_SAMPLES`` samples are run once untimed (warm-up).  A batch that raises is retried one
    sample at a time, so one broken sample is reported in the rows and costs nothing else.
    ``timing="request"`` adds the serving-style timing of every sample (module doc).
    """
    if timing not in TIMING_MODES:
        raise VlmCompressError(f"timing={timing!r} is not allowed; allowed: {', '.join(TIMING_MODES)}")
    max_new = max_new_tokens or task.max_new_tokens
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for sample in samples:  # known broken before any work (e.g. an image that does not decode)
        if sample.error is not None:
            msg = f"{sample.id}: {sample.error}"
            errors.append(msg)
            rows.append(_error_row(sample, msg))
    runnable = [s for s in samples if s.error is None]
    batches = [runnable[i : i + batch_size] for i in range(0, len(runnable), batch_size)]
    prefill, decode_per_token, wall = [], [], 0.0
    with PeakMemory(device, _model_devices(ctx.model)) as peak:
        if batches:
            try:
                # a small warm-up: first calls (kernel selection, lazy initialisation, hooks'
                # first pass) are what it is for, and a full batch cost a third of a short cell
                generate_batch(ctx, methods, batches[0][:WARMUP_SAMPLES], min(2, max_new), device, task)
            except VlmCompressError:
                raise
            except Exception:  # the real pass below reports it per sample
                pass
        for chunk in batches:
            started = time.perf_counter()
            try:
                outs = [(chunk, generate_batch(ctx, methods, chunk, max_new, device, task))]
            except VlmCompressError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the broken sample(s)
                log.warning("batch failed (%s); retrying its samples one by one", exc)
                outs = []
                for sample in chunk:
                    try:
                        outs.append(([sample], generate_batch(ctx, methods, [sample], max_new, device, task)))
                    except VlmCompressError:
                        raise
                    except Exception as one_exc:  # noqa: BLE001
                        msg = f"{sample.id}: {type(one_exc).__name__}: {one_exc}"
                        errors.append(msg)
                        rows.append(_error_row(sample, msg))
            wall += time.perf_counter() - started
            for group, out in outs:
                prefill.append(out.prefill_s)
                if out.decode_steps:
                    decode_per_token.append(out.decode_s / out.decode_steps)
                for sample, pred, st in zip(group, out.predictions, out.sample_stats):
                    score, metrics = task.evaluate(pred, sample)
                    rows.append(
                        {"sample_id": sample.id, "prediction": pred, "gold": sample.answer, "score": score, "metrics": metrics, "meta": sample.meta, "error": None, "stats": st}
                    )
            if progress:
                progress(len(chunk))
    ok_stats = [r["stats"] for r in rows if r["error"] is None]
    efficiency: dict[str, Any] = {
        "prefill_s": statistics.median(prefill) if prefill else float("nan"),
        "decode_s_per_token": statistics.median(decode_per_token) if decode_per_token else float("nan"),
        "wall_s": wall,
        "samples_per_s": len(ok_stats) / wall if wall else float("nan"),
        "batch_size": batch_size,
        "peak_memory_bytes": int(peak.peak),
        "peak_memory_kind": peak.kind,
        "timing_mode": timing,
        "compute_dtype": str(ctx.model.dtype).removeprefix("torch."),
        "reference_dtype": str(reference_dtype(ctx.model)).removeprefix("torch."),
    }
    if timing == "request":
        ok = {r["sample_id"]: r["prediction"] for r in rows if r["error"] is None}
        efficiency.update(_request_timing(ctx, methods, task, [s for s in runnable if s.id in ok], ok, max_new, device))
    numeric_keys = sorted({k for s in ok_stats for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in numeric_keys:
        values = [s[key] for s in ok_stats if key in s]
        efficiency[key] = sum(values) / len(values)
    return CellOutput(rows, efficiency, errors)
