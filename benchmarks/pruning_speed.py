"""Token pruning and KV eviction as wall-clock time (issue 17, item 4), measured in one run.

Prints three sections:

1. **Visual-token pruning, prefill.**  A tiny LLaVA-NeXT (:func:`vlmcompress.models.tiny.tiny_llava_next`,
   random weights, a Llama decoder of ``--hidden`` x ``--layers``) whose anyres crops are
   ``--crop`` pixels (patch 8: 576 tokens per crop at the default 192, as LLaVA-NeXT-7B's
   336-pixel crops of 14-pixel patches), fed one square image of two crops a side: a 2x2
   grid plus the base crop = 5 x 576 + 48 newline tokens = 2928 visual tokens.  For
   ``fastv``, ``visionzip`` and ``prumerge_plus`` at ``ratio=--ratio`` (share of the visual
   tokens kept; every other knob at its default, so FastV drops at layer 2) against no
   pruning: the median prefill time (``generate_batch`` of :mod:`vlmcompress.eval.loop`
   with one new token, the runner's own ``prefill_s``: vision tower + decoder prefill +
   first token), the speed-up, the analytic prefill FLOPs the runner reports
   (``prefill_flops`` / ``prefill_flops_full`` of the cell's efficiency block, decoder
   only), the FLOP speed-up (full / pruned) and the quotient speed-up / FLOP speed-up; then
   the vision tower's and projector's FLOPs of the same prefill, counted by torch's
   ``FlopCounterMode``, and the quotient against the whole prefill's FLOPs (decoder +
   vision side), which the goal reads (>= 0.7: at least 70 % of the FLOP saving shows up
   as time).  Every setting runs the whole tower; leaving it out of the FLOPs while it is
   in the time would compare a 13x decoder cut with a prefill that still has the tower.
   The selection's own scoring is in the time only.
2. **KV eviction at ``--kv-tokens`` (8k) tokens.**  A text-only prompt of random token ids
   through a tiny LLaVA-1.5's decoder (``--hidden`` x ``--kv-layers``).  For ``snapkv`` and
   ``h2o`` at ``ratio=--kv-ratio`` (with their scoring: SnapKV's observation window, H2O's
   column sums over every query, which on this SDPA model come out of the prefill's own
   attention, computed in query chunks: ``methods/layout/fused.py``) against no eviction: the prefill time and its ratio to
   no eviction (goal <= 1.15), the cache entries each layer holds after prefill, the time
   per decoded token with the evicted cache against the full one (median over
   ``--new-tokens`` steps and the repeats) and the analytic decode-FLOP speed-up.
   ``--long`` adds 32k tokens (one repeat; slow: H2O's scoring alone takes minutes).
3. **Profiles**, for every setting that misses its goal: the top operators of one prefill
   by self CPU time (``torch.profiler``), and the code those operators ran from (the
   innermost ``vlmcompress`` or ``transformers`` frame).

Timings are medians of repeats interleaved across settings (each setting is prepared, run
once and removed in turn), at batch 1, after one untimed warm-up per setting; they come
from this run on this machine and move with its load (the load average is printed).  At
these sizes attention is a much larger share of the decoder's FLOPs than in a 7B model at
the same length (the share is printed), which makes attention-side scoring look costlier.
On a CPU shared with other processes, the OpenMP threads wait for each other at every
operator, which slows the many small operators of a pruned prefill far more than the few
large ones of the full prefill: read the "minima" columns next to the medians then, or
compare with ``OMP_NUM_THREADS=1``.

No kvpress comparison: its presses need an older transformers than the project's, so
they are not timed here (their selection rules are checked against hand-written
references in ``tests/test_eviction_fidelity.py``, without importing kvpress).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/pruning_speed.py [--repeats 5] [--kv-repeats 3] [--long] [--no-profile]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time

import numpy as np
import PIL.Image
import torch
from transformers.utils import logging as hf_logging

from vlmcompress.eval.loop import generate_batch, generation_cache
from vlmcompress.eval.timing import StepClock
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.layout.flops import DecoderShape, decode_flops, prefill_flops
from vlmcompress.models import tiny
from vlmcompress.models.llava import LlavaAdapter
from vlmcompress.tasks.base import Sample

VISUAL = ("fastv", "visionzip", "prumerge_plus")
KV = ("snapkv", "h2o")
VISUAL_GOAL = 0.7  # speed-up / FLOP speed-up, at least
KV_GOAL = 1.15  # prefill time with eviction / without, at most
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def anyres_crop(side: int):
    """Build :func:`tiny.tiny_llava_next` with ``side``-pixel crops (and a grid of up to 2x2
    of them): the builder reads the module's ``CROP`` and ``GRID_PINPOINTS`` when called."""
    old = tiny.CROP, tiny.GRID_PINPOINTS
    tiny.CROP = side
    tiny.GRID_PINPOINTS = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    try:
        yield
    finally:
        tiny.CROP, tiny.GRID_PINPOINTS = old


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler back end's start/stop lines (written to fd 2 by C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def prepared(ctx: CompressionContext, spec: str):
    """Context manager: the setting's methods prepared on the model, removed on exit."""

    @contextlib.contextmanager
    def cm():
        methods = build_setting(spec).ordered()
        done = []
        try:
            for m in methods:
                m.prepare(ctx)
                done.append(m)
            yield methods
        finally:
            for m in reversed(done):
                m.remove(ctx)

    return cm()


_CPU_SDPA_COUNTED = False


def vision_side_flops(model, run) -> float:
    """FLOPs of the vision tower and the projector in one prefill, counted by torch's
    ``FlopCounterMode`` over the ops that actually ran (convolution, matmuls, attention).
    The analytic ``prefill_flops`` the runner reports covers the decoder only, while every
    setting here still runs the whole tower: the tower is in the time, so it must be in
    the FLOPs the time is compared with.  Torch has no formula for the CPU flash-attention
    op, so one is registered (the CUDA op's: the tower's attention is bidirectional, where
    counting every pair is exact)."""
    global _CPU_SDPA_COUNTED
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

    if not _CPU_SDPA_COUNTED:

        @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

        _CPU_SDPA_COUNTED = True
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    counts = counter.get_flop_counts()
    # a module run inside the model's forward is named by its path, one the runner calls
    # itself (the adapter encodes images before generate) by its class
    top = type(model).__name__
    names = set()
    for attr in ("vision_tower", "multi_modal_projector"):
        names |= {f"{top}.model.{attr}", type(getattr(model.model, attr)).__name__}
    return float(sum(sum(counts[name].values()) for name in names if name in counts))


def attention_share(shape: DecoderShape, n: int) -> float:
    """Share of the attention pairs in the analytic causal prefill FLOPs of ``n`` tokens."""
    att = shape.attention_per_pair() * n * (n + 1) / 2
    return att / (att + n * shape.linear_per_token())


def load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def profile_prefill(label: str, fn, rows: int = 10, sites: int = 5) -> None:
    """Run ``fn`` (one prefill) under ``torch.profiler`` and print its top operators by self
    CPU time, then the code they ran from."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    print(f"\nprofile of one prefill, {label} ({wall:.2f} s under the profiler; self CPU time of aten ops {total / 1e6:.2f} s, summed over threads):")
    print(f"  {'operator':<52}{'self CPU ms':>12}{'share':>8}{'calls':>7}")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"  {e.key[:51]:<52}{e.self_cpu_time_total / 1e3:>12.1f}{e.self_cpu_time_total / total:>8.1%}{e.count:>7d}")

    def site(ev) -> str:
        p = ev.cpu_parent
        while p is not None:
            if "vlmcompress/" in p.name or "transformers/" in p.name:
                return p.name
            p = p.cpu_parent
        return "(other)"

    by_site: collections.Counter = collections.Counter()
    for ev in prof.events():
        if ev.name.startswith("aten::"):
            by_site[site(ev)] += ev.self_cpu_time_total
    print(f"  {'where they ran (innermost vlmcompress or transformers frame)':<71}{'share':>8}")
    for name, t in by_site.most_common(sites):
        print(f"  {name[-70:]:<71}{t / total:>8.1%}")


# ----------------------------------------------------------------------------- 1. visual tokens


def visual_section(args) -> list[tuple[str, callable]]:
    with anyres_crop(args.crop):
        model, processor = tiny.tiny_llava_next(hidden=args.hidden, layers=args.layers, heads=args.hidden // 64, kv_heads=2, seed=0)
    adapter = LlavaAdapter(model, processor)
    ctx = CompressionContext(model, adapter, processor)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, (2 * args.crop, 2 * args.crop, 3), dtype=np.uint8))
    sample = Sample("speed-0", image, "what color is the big square in the top left corner?", "red")
    batch = adapter.build_inputs([image], [sample.question])
    # the processor's output is outside the runner's prefill clock: build it once, so that
    # neither the repeats nor the profiles spend time on it
    adapter.build_inputs = lambda images, prompts: dict(batch)
    n_prompt = int(batch["input_ids"].shape[1])
    n_visual = int(adapter.image_token_mask(batch["input_ids"]).sum())
    shape = DecoderShape.from_adapter(adapter)
    full_flops = prefill_flops(shape, [float(n_prompt)] * shape.layers)

    specs = ["none"] + [f"{m}(ratio={args.ratio})" for m in VISUAL]

    def run_once(spec: str) -> tuple[float, dict]:
        with prepared(ctx, spec) as methods:
            out = generate_batch(ctx, methods, [sample], 1, CPU)
        return out.prefill_s, out.sample_stats[0]

    print(
        f"== 1. visual-token pruning, prefill: tiny LLaVA-NeXT, decoder hidden {shape.hidden} x {shape.layers} layers "
        f"({shape.heads} heads, {shape.kv_heads} KV heads), {args.crop}-px crops of 8-px patches, one "
        f"{2 * args.crop}x{2 * args.crop} image = {n_visual} visual tokens of {n_prompt}; batch 1; median of {args.repeats}"
    )
    print(f"   attention share of the full prefill's FLOPs: {attention_share(shape, n_prompt):.0%}")
    stats: dict[str, dict] = {}
    vision: dict[str, float] = {}
    for spec in specs:  # warm-up, and the per-sample figures the runner would record
        stats[spec] = run_once(spec)[1]
        vision[spec] = vision_side_flops(model, lambda s=spec: run_once(s))
    times: dict[str, list[float]] = {s: [] for s in specs}
    for _ in range(args.repeats):
        for spec in specs:
            times[spec].append(run_once(spec)[0])

    base, base_min = statistics.median(times["none"]), min(times["none"])
    head = (
        f"{'setting':<26}{'prefill ms':>11}{'speed-up':>9}{'LLM tokens':>11}{'pFLOP×':>8}{'FLOP speed-up':>14}{'quotient':>9}"
        f"{'vision GFLOP':>13}{'whole FLOP speed-up':>20}{'quotient':>9}  {'goal >= ' + str(VISUAL_GOAL):<13}{'of minima':>10}"
    )
    print(head)
    print("-" * len(head))
    slow = []
    base_whole = None
    for spec in specs:
        t = statistics.median(times[spec])
        st = stats[spec]
        full = st.get("prefill_flops_full", full_flops)  # the runner's own figure, where the setting reports one
        flops = st.get("prefill_flops", full)
        tokens = st.get("llm_tokens_last_layer", n_prompt)
        speedup = base / t
        flop_speedup = full / flops
        whole = flops + vision[spec]
        if spec == "none":
            base_whole = whole
            print(f"{spec:<26}{t * 1e3:>11.0f}{1.0:>9.2f}{tokens:>11.0f}{1.0:>8.3f}{1.0:>14.2f}{'':>9}{vision[spec] / 1e9:>13.2f}{1.0:>20.2f}")
            continue
        whole_speedup = base_whole / whole
        quotient = speedup / whole_speedup
        ok = quotient >= VISUAL_GOAL
        q_min = base_min / min(times[spec]) / whole_speedup
        print(
            f"{spec:<26}{t * 1e3:>11.0f}{speedup:>9.2f}{tokens:>11.0f}{flops / full:>8.3f}{flop_speedup:>14.2f}{speedup / flop_speedup:>9.2f}"
            f"{vision[spec] / 1e9:>13.2f}{whole_speedup:>20.2f}{quotient:>9.2f}  {'met' if ok else 'MISSED':<13}{q_min:>10.2f}"
        )
        if not ok:
            slow.append((f"{spec} on the tiny LLaVA-NeXT ({n_prompt} tokens)", lambda s=spec: run_once(s)))
    spread = {s: (min(v) * 1e3, max(v) * 1e3) for s, v in times.items()}
    print("prefill ms, min-max over repeats: " + ", ".join(f"{s.split('(')[0]} {a:.0f}-{b:.0f}" for s, (a, b) in spread.items()))
    print(
        "LLM tokens: prompt tokens the last decoder layer holds; pFLOP×: analytic prefill FLOPs kept (prefill_flops / prefill_flops_full);\n"
        "FLOP speed-up = 1 / pFLOP×, the decoder's alone; the first quotient = measured speed-up / that (the vision tower and the scoring are in the time, not in those FLOPs);\n"
        "vision GFLOP: the vision tower and projector, counted by torch's FlopCounterMode over the prefill; whole FLOP speed-up: (decoder + vision) FLOPs of no pruning / of the setting;\n"
        "the second quotient = measured speed-up / whole FLOP speed-up, which the goal reads (only the scoring is left out of the FLOPs);\n"
        "of minima: that quotient from the fastest repeat of each setting (less sensitive to other processes on the machine; the goal reads the medians)"
    )
    return slow


# ----------------------------------------------------------------------------- 2. KV eviction


def kv_model(args):
    model, processor = tiny.tiny_llava(hidden=args.hidden, layers=args.kv_layers, heads=args.hidden // 64, kv_heads=2, seed=0)
    adapter = LlavaAdapter(model, processor)
    return CompressionContext(model, adapter, processor)


def random_prompt(ctx: CompressionContext, T: int, seed: int = 0) -> dict:
    tok = ctx.processor.tokenizer
    special = set(tok.all_special_ids) | {ctx.model.config.image_token_id}
    allowed = torch.tensor([i for i in range(len(tok)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), (1, T), generator=g)]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def kv_generate(ctx: CompressionContext, methods, batch: dict, new_tokens: int) -> tuple[StepClock, list[dict]]:
    """``generate_batch`` without an image: prompt ids in, greedy tokens out, under the
    setting's hooks, timed by the runner's :class:`StepClock` (prefill, then each step)."""
    clock = StepClock(CPU)
    clock.begin()
    cache = generation_cache(ctx, methods, batch)
    n = new_tokens + 1  # the first token ends prefill
    with torch.inference_mode():
        ctx.model.generate(
            **batch, past_key_values=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
            stopping_criteria=[clock], pad_token_id=ctx.processor.tokenizer.pad_token_id,
        )
    stats = []
    for m in methods:
        extra = m.after_generate(ctx, batch, cache)
        if extra:
            stats = extra
    return clock, stats


def kv_section(args, ctx: CompressionContext, T: int, repeats: int) -> list[tuple[str, callable]]:
    shape = DecoderShape.from_adapter(ctx.adapter)
    batch = random_prompt(ctx, T)
    warm = random_prompt(ctx, min(T, 512), seed=1)
    specs = ["none"] + [f"{m}(ratio={args.kv_ratio})" for m in KV]
    print(
        f"\n== 2. KV eviction at {T} tokens: tiny LLaVA-1.5 decoder, text-only random ids, hidden {shape.hidden} x {shape.layers} layers "
        f"({shape.heads} heads, {shape.kv_heads} KV heads); batch 1; median of {repeats}; {args.new_tokens} decode steps each"
    )
    print(f"   attention share of the full prefill's FLOPs: {attention_share(shape, T):.0%}")

    def run_once(spec: str, b: dict, new_tokens: int):
        with prepared(ctx, spec) as methods:
            clock, stats = kv_generate(ctx, methods, b, new_tokens)
        steps = [b2 - a for a, b2 in zip(clock.stamps, clock.stamps[1:])]
        return clock.prefill_s, steps, (stats[0] if stats else {})

    for spec in specs:
        run_once(spec, warm, 2)
    prefill: dict[str, list[float]] = {s: [] for s in specs}
    steps: dict[str, list[float]] = {s: [] for s in specs}
    stats: dict[str, dict] = {}
    for _ in range(repeats):
        for spec in specs:
            p, st, s = run_once(spec, batch, args.new_tokens)
            prefill[spec].append(p)
            steps[spec].extend(st)
            stats[spec] = s
    base_p = statistics.median(prefill["none"])
    base_d = statistics.median(steps["none"])
    full_decode = decode_flops(shape, [float(T)] * shape.layers)
    head = f"{'setting':<22}{'prefill s':>10}{'vs none':>9}  {'goal <= ' + str(KV_GOAL):<14}{'minima':>7}{'KV/layer':>9}{'decode ms/tok':>14}{'speed-up':>9}{'dFLOP speed-up':>15}"
    print(head)
    print("-" * len(head))
    slow = []
    for spec in specs:
        p, d, st = statistics.median(prefill[spec]), statistics.median(steps[spec]), stats[spec]
        held = st.get("tokens_kept", float(T))
        dflops = st.get("decode_flops_per_token", full_decode)
        if spec == "none":
            verdict = ""
        else:
            ok = p / base_p <= KV_GOAL
            verdict = "met" if ok else "MISSED"
            if not ok:
                slow.append((f"{spec} at {T} tokens", lambda s=spec: run_once(s, batch, 0)))
        p_min = min(prefill[spec]) / min(prefill["none"])
        print(f"{spec:<22}{p:>10.2f}{p / base_p:>9.2f}  {verdict:<14}{p_min:>7.2f}{held:>9.0f}{d * 1e3:>14.2f}{base_d / d:>9.2f}{full_decode / dflops:>15.2f}")
    print("prefill s, min-max over repeats: " + ", ".join(f"{s.split('(')[0]} {min(v):.2f}-{max(v):.2f}" for s, v in prefill.items()))
    print(
        "vs none: prefill time / no eviction's (medians; minima: the same from the fastest repeats); KV/layer: prompt entries each layer holds after prefill;\n"
        "decode ms/tok: median time of one decode step (all steps of all repeats); speed-up: no eviction's / this one's;\n"
        "dFLOP speed-up: analytic decode FLOPs per token, full cache / evicted cache"
    )
    return slow


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512, help="decoder width (heads of 64 dims, 2 KV heads)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the visual-pruning model")
    ap.add_argument("--crop", type=int, default=192, help="anyres crop side in pixels (8-px patches; the image is two crops a side)")
    ap.add_argument("--ratio", type=float, default=0.1, help="share of the visual tokens kept")
    ap.add_argument("--repeats", type=int, default=5, help="timed prefills per visual setting")
    ap.add_argument("--kv-layers", type=int, default=2, help="decoder layers of the eviction model")
    ap.add_argument("--kv-tokens", type=int, default=8192)
    ap.add_argument("--kv-ratio", type=float, default=0.1, help="share of the prompt's KV entries kept")
    ap.add_argument("--kv-repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16, help="decode steps timed after each eviction prefill")
    ap.add_argument("--long", action="store_true", help="also 32768 tokens (one repeat; slow)")
    ap.add_argument("--only", choices=("visual", "kv"), default=None)
    ap.add_argument("--no-profile", action="store_true", help="no profile of the settings that miss their goal")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()  # "sequence length is longer than the specified maximum" of the word-level tokenizer
    torch.manual_seed(0)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load()}")

    slow = []
    if args.only in (None, "visual"):
        slow += visual_section(args)
    if args.only in (None, "kv"):
        ctx = kv_model(args)
        slow += kv_section(args, ctx, args.kv_tokens, args.kv_repeats)
        if args.long:
            slow += kv_section(args, ctx, 32768, 1)

    if slow and not args.no_profile:
        print("\n== 3. profiles of the settings that missed their goal")
        for label, fn in slow:
            profile_prefill(label, fn)
    elif not slow:
        print("\n== 3. every goal met: no profile")
    print(f"\ndone in {time.perf_counter() - started:.0f} s, {load()}")


if __name__ == "__main__":
    main()
