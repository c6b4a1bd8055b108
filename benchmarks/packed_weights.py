"""Packed 4-bit weights against the dense model: decode time per token and weight memory
held, measured in one run.

A LLaVA-architecture model built from a config (random weights; a Llama decoder wide
enough that the matmuls, not Python, set the pace: ``--hidden 2048`` is LLaVA-1.5-7B's
width halved, 4 layers) generates ``--new-tokens`` greedily at batch 1, three ways:

* dense fp32 (the baseline);
* ``rtn(bits=4,group_size=128,storage=packed)`` on torch's int4 CPU kernel
  (``aten._weight_int4pack_mm_for_cpu``, :mod:`vlmcompress.methods.weights.kernels`);
* the same packed weights dequantized in Python at every call (the path of formats
  without a kernel).

    .venv/bin/python benchmarks/packed_weights.py [--hidden 2048] [--layers 4] [--new-tokens 32]

Prints time per decoded token (median of ``--repeats``), the ratios to dense, the bytes the
process holds for the decoder's weights, and whether the kernel's and the dequantizing
path's greedy tokens agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import PIL.Image
import torch

from vlmcompress.footprint import held_weight_bytes
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.weights import kernels
from vlmcompress.models.llava import LlavaAdapter
from vlmcompress.models.tiny import tiny_llava


def build(args):
    model, processor = tiny_llava(hidden=args.hidden, layers=args.layers, heads=args.hidden // 128, kv_heads=max(1, args.hidden // 512), seed=0)
    return model.eval(), processor


def decoder_bytes(model) -> int:
    return held_weight_bytes(model.model.language_model.layers)


def time_per_token(model, batch, new_tokens: int, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(**batch, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            t1 = time.perf_counter()
            out = model.generate(**batch, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, do_sample=False)
            t2 = time.perf_counter()
            times.append(((t2 - t1) - (t1 - t0)) / new_tokens)  # the prefill and first token cancel
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))

    rows = {}
    for name, spec, force_dequantize in (("dense fp32", None, False), ("packed int4, kernel", "rtn(bits=4,group_size=128,storage=packed)", False), ("packed int4, dequantize", "rtn(bits=4,group_size=128,storage=packed)", True)):
        model, processor = build(args)
        adapter = LlavaAdapter(model, processor)
        batch = adapter.build_inputs([image], ["what color is the big square?"])
        info = {}
        if spec:
            fits = kernels.int4_kernel_fits
            if force_dequantize:
                kernels.int4_kernel_fits = lambda *a, **k: False
            try:
                ctx = CompressionContext(model, adapter, processor)
                for m in build_setting(spec).ordered():
                    m.prepare(ctx)
                info = ctx.info
            finally:
                kernels.int4_kernel_fits = fits
        per_token, tokens = time_per_token(model, batch, args.new_tokens, args.repeats)
        rows[name] = (per_token, decoder_bytes(model), tokens, info.get("weight_kernel", "-"))
        del model

    dense_t, dense_b, _, _ = rows["dense fp32"]
    print(f"decoder: hidden {args.hidden}, {args.layers} layers; batch 1, {args.new_tokens} new tokens; torch threads {torch.get_num_threads()}")
    print(f"{'':26s} {'ms/token':>9s} {'vs dense':>9s} {'decoder bytes held':>19s} {'vs dense':>9s}  kernel")
    for name, (t, b, _, kernel) in rows.items():
        print(f"{name:26s} {t * 1e3:9.2f} {t / dense_t:8.2f}x {b:19,d} {b / dense_b:8.3f}x  {kernel}")
    a, b = rows["packed int4, kernel"][2], rows["packed int4, dequantize"][2]
    n = min(a.shape[1], b.shape[1])
    same = float((a[:, :n] == b[:, :n]).float().mean())
    print(f"greedy tokens identical between the kernel (bf16 activations) and the fp32 dequantizing path: {same:.0%} of positions (random weights: near-ties flip)")


if __name__ == "__main__":
    main()
