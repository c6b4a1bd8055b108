"""Batching, framework overhead and evaluation throughput, measured in one run.

1. The runner on the same cells (baseline setting) at batch size 1 and at batch size N:
   are the predictions identical, and what is the throughput ratio (the cells' timed wall)?
2. One batch through the framework's no-op path (``generate_batch`` with no methods:
   inputs built by the adapter, clocks, cache, decoding) against plain
   ``processor(...)`` + ``model.generate`` on the same samples (median of repeats).
3. The framework's batched evaluation (``runner.run`` with ``batch_size=N``, end to end:
   model load, sample drawing, warm-up batch, scoring, store) against a plain batch-1
   ``generate`` loop on the same samples, what EffiVLM-Bench and kvpress run (per sample:
   the adapter's processor call for that one sample, ``model.generate(max_new_tokens=
   task.max_new_tokens, do_sample=False)``, decode), timed twice: over the samples alone
   (against the runner's timed cells) and end to end, loading the model and drawing the
   samples itself (against the runner's end-to-end time: like for like).  Repeats alternate the order of the
   two.  Printed: median (and best) samples/s of each, the runner's own timed cell wall
   beside its end-to-end one, the ratios, the median of the per-repeat ratios (goal:
   batched >= 2x, judged on these), and how many predictions agree.
4. Achieved FLOP/s of one batch-N evaluation batch (``generate_batch``, the runner's path)
   against a matmul peak measured here, with the same torch thread count: best of
   repeats of fp32 ``2048x2048 @ 2048x2048`` and of the decoder's own linear shapes
   (prefill ``[N*T, hidden] x [hidden, inter]``, decode ``[N, hidden] x [hidden, inter]``).
   Decoder FLOPs come from the project's analytic counters (``methods/layout/flops.py``:
   prefill over the padded prompt, text and visual tokens, and each decode step over the
   cache it sees); they leave out the vision tower, so the tower and projector are counted
   by ``torch.utils.flop_counter`` (their matmuls and patch convolution).  The batch and
   the peak kernels are timed in turn (the CPU is shared): achieved FLOP/s at the median
   and at the best batch wall against the best peak, and the median over repeats of each
   batch's FLOP/s over the peak timed right after it (goal >= 40%, judged on this).  When
   under the goal (or with ``--profile``), the top 10 ops by self CPU time of one batch
   (``torch.profiler``) show where the time goes.

The CPU is shared with other work: a burst of load hits one repeat, so read the per-repeat
numbers and the bests beside the medians.  Runs in about 1.5 minutes on 2 CPU cores with the defaults (64 samples over 2 tasks).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batching.py [--model embedded] \\
        [--tasks synth_attribute,synth_count] [--limit 32] [--batch-size 16] [--repeats 7] [--loop-repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from vlmcompress.eval.loop import generate_batch
from vlmcompress.methods import CompressionContext
from vlmcompress.methods.layout.flops import DecoderShape, decode_flops, prefill_flops
from vlmcompress.models import load_model
from vlmcompress.runner import RunConfig, run
from vlmcompress.tasks import TASKS

SEED = 1234
FLOP_GOAL = 0.40
LOOP_GOAL = 2.0


def predictions(out_dir: Path) -> dict[str, str]:
    rows = [json.loads(l) for l in (out_dir / "samples.jsonl").read_text().splitlines()]
    return {r["sample_id"]: r["prediction"] for r in rows}


def _runner(args, tasks: list[str], bs: int, out: Path) -> dict:
    cfg = RunConfig(model=args.model, settings=["none"], tasks=tasks, limit=args.limit, batch_size=bs, seed=SEED, output=str(out))
    return run(cfg)


def _g(x: float) -> str:
    return f"{x / 1e9:.2f} GFLOP/s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tasks", default="synth_attribute,synth_count")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="repeats of part 2 (one batch, plain vs framework)")
    ap.add_argument("--profile", action="store_true", help="print the profile of part 4 even when the FLOP/s goal is met")
    ap.add_argument("--loop-repeats", type=int, default=5, help="repeats of part 3 (runner vs batch-1 loop)")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    tasks = args.tasks.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="vlmc-batching-"))
    bsn = args.batch_size

    # ------------------------------------------------------------------ 1. runner batch 1 vs N
    print(f"== 1. runner at batch 1 vs batch {bsn} (baseline cells)")
    walls = {}
    for bs in (1, bsn):
        res = _runner(args, tasks, bs, tmp / f"bs{bs}")
        walls[bs] = sum(c["efficiency"]["wall_s"] for c in res["cells"])
    p1, pn = predictions(tmp / "bs1"), predictions(tmp / f"bs{bsn}")
    same = sum(p1[k] == pn[k] for k in p1)
    n = len(p1)
    print(f"samples: {n} over {len(tasks)} tasks ({', '.join(tasks)}); model {args.model}; torch threads {torch.get_num_threads()}")
    print(f"identical predictions batch 1 vs {bsn}: {same}/{n}")
    print(f"throughput (cells' timed wall): batch 1 {n / walls[1]:.1f} samples/s, batch {bsn} {n / walls[bsn]:.1f} samples/s, ratio {walls[1] / walls[bsn]:.2f}x")

    # ------------------------------------------------------------------ 2. framework overhead
    print(f"\n== 2. one batch of {bsn}: framework no-op path vs plain processor + generate")
    loaded = load_model(args.model)
    model, adapter, tok = loaded.model, loaded.adapter, loaded.processor.tokenizer
    ctx = CompressionContext(model, adapter, loaded.processor)
    device = loaded.input_device or torch.device("cpu")
    task = TASKS.get(tasks[0])
    samples = task.samples(SEED, bsn)

    def plain() -> None:
        batch = adapter.build_inputs([s.load_image() for s in samples], [task.prompt(s) for s in samples])
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=task.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    def framework() -> None:
        generate_batch(ctx, [], samples, task.max_new_tokens, device, task)

    for f in (plain, framework):  # warm-up
        f()
    times = {"plain": [], "framework": []}
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        for name, f in (("plain", plain), ("framework", framework)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    mp, mf = statistics.median(times["plain"]), statistics.median(times["framework"])
    print(f"plain processor+generate {mp * 1000:.1f} ms, framework no-op {mf * 1000:.1f} ms, overhead {100 * (mf / mp - 1):+.1f}%")

    # ------------------------------------------------------------------ 3. runner vs batch-1 loop
    print(f"\n== 3. framework batched evaluation (runner, batch {bsn}) vs a plain batch-1 generate loop")
    per_task = {name: TASKS.get(name).samples(SEED, args.limit) for name in tasks}
    n_loop = sum(len(v) for v in per_task.values())

    def loop(end_to_end: bool = False) -> dict[str, str]:
        """The plain loop; ``end_to_end``: it also loads the model and draws the samples
        itself, as the runner's end-to-end time does (scoring and storing aside)."""
        m, a, tk, tasks_samples = model, adapter, tok, per_task
        if end_to_end:
            fresh = load_model(args.model)
            m, a, tk = fresh.model, fresh.adapter, fresh.processor.tokenizer
            tasks_samples = {name: TASKS.get(name).samples(SEED, args.limit) for name in tasks}
        out = {}
        for name, ss in tasks_samples.items():
            t_ = TASKS.get(name)
            for s in ss:
                batch = a.build_inputs([s.load_image()], [t_.prompt(s)])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with torch.inference_mode():
                    seq = m.generate(**batch, max_new_tokens=t_.max_new_tokens, do_sample=False, pad_token_id=tk.pad_token_id)
                out[s.id] = tk.decode(seq[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        return out

    runner_times, cell_walls, loop_times, loop_e2e_times = [], [], [], []
    loop_preds: dict[str, str] = {}
    runner_preds: dict[str, str] = {}

    def runner_once(i: int) -> None:
        nonlocal runner_preds
        out = tmp / f"runner{i}"
        t = time.perf_counter()
        res = _runner(args, tasks, bsn, out)
        runner_times.append(time.perf_counter() - t)
        cell_walls.append(sum(c["efficiency"]["wall_s"] for c in res["cells"]))
        runner_preds = predictions(out)

    def loop_once(i: int) -> None:
        nonlocal loop_preds
        t = time.perf_counter()
        loop_preds = loop()
        loop_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        loop(end_to_end=True)
        loop_e2e_times.append(time.perf_counter() - t)

    first = per_task[tasks[0]][0]  # warm the loop up (the runner warms itself up inside, counted)
    with torch.inference_mode():
        model.generate(**adapter.build_inputs([first.load_image()], [task.prompt(first)]), max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    for i in range(args.loop_repeats):  # alternate which goes first, so that drifting load hits both alike
        order = (runner_once, loop_once) if i % 2 == 0 else (loop_once, runner_once)
        for f in order:
            f(i)
    mr, mc, ml = statistics.median(runner_times), statistics.median(cell_walls), statistics.median(loop_times)
    n_run = len(runner_preds)
    agree = sum(loop_preds.get(k) == v for k, v in runner_preds.items())
    print(f"samples: {n_loop} ({args.limit} per task), medians of {args.loop_repeats} alternating repeats (best in brackets; every repeat's seconds at the end)")

    def line(label: str, m: float, xs: list[float], n_: int, ratio: str = "") -> None:
        print(f"{label:38s} {m:6.2f} s  {n_ / m:6.1f} samples/s [{n_ / min(xs):6.1f}]{ratio}  ({' '.join(f'{x:.2f}' for x in xs)})")

    me = statistics.median(loop_e2e_times)
    line("batch-1 generate loop (samples only):", ml, loop_times, n_loop)
    line("batch-1 loop end to end (load, draw):", me, loop_e2e_times, n_loop)
    line("runner end to end (load, draw, score):", mr, runner_times, n_run, f"  ratio {me / mr:.2f}x [{min(loop_e2e_times) / min(runner_times):.2f}x] vs the loop end to end")
    line("runner's timed cells (batches only):", mc, cell_walls, n_run, f"  ratio {ml / mc:.2f}x [{min(loop_times) / min(cell_walls):.2f}x] vs the loop's samples")
    # each repeat runs both back to back: the median of the per-repeat ratios cancels slow load drift
    pr = statistics.median(lt / rt for lt, rt in zip(loop_e2e_times, runner_times))
    pc = statistics.median(lt / ct for lt, ct in zip(loop_times, cell_walls))
    print(f"median of per-repeat ratios: end to end {pr:.2f}x (like for like: both load the model and draw the samples), timed cells {pc:.2f}x")
    print(f"goal >= {LOOP_GOAL:.0f}x (per-repeat ratios): {'met' if pr >= LOOP_GOAL else 'MISSED'} end to end, {'met' if pc >= LOOP_GOAL else 'MISSED'} on the timed cells")
    print(f"identical predictions runner (batch {bsn}) vs batch-1 loop: {agree}/{n_run}")

    # ------------------------------------------------------------------ 4. FLOP/s vs matmul peak
    print(f"\n== 4. achieved FLOP/s of one batch of {bsn} ({tasks[0]}) vs matmul peak, {torch.get_num_threads()} torch threads")
    shape = DecoderShape.from_adapter(adapter)
    ref = generate_batch(ctx, [], samples, task.max_new_tokens, device, task)
    real = [s["prompt_tokens"] for s in ref.sample_stats]
    T, steps, B = max(real), ref.decode_steps, len(samples)  # left padding: the longest row is unpadded
    layers = [float(T)] * shape.layers
    dec_prefill = B * prefill_flops(shape, layers)
    dec_decode = B * sum(decode_flops(shape, [float(T + j - 1)] * shape.layers) for j in range(1, steps + 1))
    useful = sum(
        prefill_flops(shape, [float(p)] * shape.layers) + sum(decode_flops(shape, [float(p + j - 1)] * shape.layers) for j in range(1, g))
        for p, g in zip(real, ref.generated_tokens)
    )
    from torch.utils.flop_counter import FlopCounterMode

    vision_names = ("vision_tower", "multi_modal_projector", "visual")
    with FlopCounterMode(display=False, depth=None) as fc:
        generate_batch(ctx, [], samples, task.max_new_tokens, device, task)
    counts = fc.get_flop_counts()
    vision = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in vision_names:  # the tracker names a module by its path or, called apart, its class
            hit = next((k for k in counts if k.endswith("." + name) or k == type(module).__name__), None)
            vision += sum(counts[hit].values()) if hit else 0
    counted_total = fc.get_total_flops()
    total = dec_prefill + dec_decode + vision
    print(f"padded prompt T={T} tokens (real {min(real)}..{max(real)}, visual included), decode steps after prefill: {steps}, generated per row: {min(ref.generated_tokens)}..{max(ref.generated_tokens)}")
    print(f"decoder FLOPs (project counters, as executed over padding): prefill {dec_prefill / 1e9:.2f} G + decode {dec_decode / 1e9:.3f} G; useful (real tokens, own steps) {useful / 1e9:.2f} G")
    print(f"vision tower + projector FLOPs (torch flop_counter; flops.py does not count them): {vision / 1e9:.2f} G")
    print(f"total {total / 1e9:.2f} G per batch (torch flop_counter over the whole batch, attention excluded: {counted_total / 1e9:.2f} G)")

    hidden, inter = shape.hidden, shape.intermediate
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, xd, w = torch.randn(B * T, hidden), torch.randn(B, hidden), torch.randn(inter, hidden)
    kernels = {  # name: (call, FLOPs per call, calls per timing)
        "mm 2048x2048 @ 2048x2048": (lambda: torch.mm(a, b), 2 * 2048**3, 1),
        f"linear prefill [{B * T}, {hidden}] x [{hidden}, {inter}]": (lambda: F.linear(x, w), 2 * B * T * hidden * inter, 10),
        f"linear decode [{B}, {hidden}] x [{hidden}, {inter}]": (lambda: F.linear(xd, w), 2 * B * hidden * inter, 200),
    }
    peaks = {k: 0.0 for k in kernels}
    repeat_peaks: list[float] = []  # the best kernel rate of each repeat, timed right after its batch
    # time the batch (the runner's path; prefill / decode split by the loop's clock) and the
    # peak kernels in turn, so that load changes on the shared CPU hit both alike
    walls_b, pre_b, dec_b = [], [], []
    with torch.inference_mode():
        for fn, _, _ in kernels.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            t = time.perf_counter()
            o = generate_batch(ctx, [], samples, task.max_new_tokens, device, task)
            walls_b.append(time.perf_counter() - t)
            pre_b.append(o.prefill_s)
            dec_b.append(o.decode_s)
            rates = []
            for k, (fn, fl, inner) in kernels.items():
                t = time.perf_counter()
                for _ in range(inner):
                    fn()
                rates.append(fl * inner / (time.perf_counter() - t))
                peaks[k] = max(peaks[k], rates[-1])
            repeat_peaks.append(max(rates))
    for k, v in peaks.items():
        print(f"  {k:45s} {_g(v)}  (best of {args.repeats})")
    peak = max(peaks.values())
    wb, pb, db = statistics.median(walls_b), statistics.median(pre_b), statistics.median(dec_b)
    achieved, best = total / wb, total / min(walls_b)
    paired = statistics.median(total / w / p for w, p in zip(walls_b, repeat_peaks))
    print(f"peak (best of the above): {_g(peak)}")
    print(f"batch wall median {wb * 1000:.1f} ms, best {min(walls_b) * 1000:.1f} ms (median prefill incl. vision {pb * 1000:.1f} ms, decode {db * 1000:.1f} ms, rest = inputs + detokenize)")
    print(f"achieved at the median wall: {_g(achieved)} = {100 * achieved / peak:.1f}% of peak (decoder only: {100 * (dec_prefill + dec_decode) / wb / peak:.1f}%)")
    print(f"achieved at the best wall:   {_g(best)} = {100 * best / peak:.1f}% of peak")
    print(f"median over repeats of (batch FLOP/s / that repeat's kernel peak): {100 * paired:.1f}%")
    print(f"  median prefill alone {_g((dec_prefill + vision) / pb)} = {100 * (dec_prefill + vision) / pb / peak:.1f}%; decode alone {_g(dec_decode / db) if db else 'n/a'}")
    print(f"goal >= {100 * FLOP_GOAL:.0f}% of peak (per-repeat): {'met' if paired >= FLOP_GOAL else 'MISSED'}")

    if paired < FLOP_GOAL or args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            generate_batch(ctx, [], samples, task.max_new_tokens, device, task)
            pw = time.perf_counter() - t
        ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        in_ops = sum(e.self_cpu_time_total for e in ev) / 1e6
        mm_names = ("aten::mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution")
        in_mm = sum(e.self_cpu_time_total for e in ev if e.key in mm_names) / 1e6
        print(f"\nprofile of one batch ({pw * 1000:.1f} ms under the profiler): time inside torch ops {in_ops * 1000:.1f} ms "
              f"({100 * in_ops / pw:.0f}%), of which matmul/conv kernels {in_mm * 1000:.1f} ms ({100 * in_mm / pw:.0f}%; batch FLOPs / their time {_g(total / in_mm) if in_mm else 'n/a'}); "
              f"the rest is Python (transformers modules, generate loop, processor)")
        print(f"  {'op':38s} {'self CPU ms':>11s} {'% wall':>7s} {'calls':>6s}")
        for e in sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]:
            print(f"  {e.key[:38]:38s} {e.self_cpu_time_total / 1000:11.1f} {100 * e.self_cpu_time_total / 1e6 / pw:7.1f} {e.count:6d}")


if __name__ == "__main__":
    main()
