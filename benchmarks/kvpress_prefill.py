"""kvpress's presses, timed the way ``pruning_speed.py`` times ours: prefill at 8k tokens
with scoring, against no press, on a random-weight Llama decoder of the same shape (issue 17,
item 4: eviction's prefill overhead against kvpress at the same budget).

kvpress 0.5.5 pins ``transformers<5.3`` while the project runs 5.17, so this script runs in a
scratch environment of its own and imports nothing of the project (the two are compared by
their ratios to no eviction, each in its own stack; the decoders have the same shape, the
prompt the same length):

    python3.11 -m venv /tmp/kvp/venv
    /tmp/kvp/venv/bin/pip install torch==2.14.1
    /tmp/kvp/venv/bin/pip download kvpress==0.5.5 --no-deps -d /tmp/kvp
    /tmp/kvp/venv/bin/pip install --no-deps /tmp/kvp/kvpress-0.5.5-py3-none-any.whl
    /tmp/kvp/venv/bin/pip install transformers==5.2.0 accelerate==1.10.1 cachetools==5.5.2 \\
        requests==2.32.3 pandas==2.2.3 datasets==3.6.0 fire==0.6.0
    OMP_NUM_THREADS=2 /tmp/kvp/venv/bin/python benchmarks/kvpress_prefill.py [--tokens 8192] [--repeats 3]

What is timed: one forward over the prompt (logits of the last position only, as
``generate`` asks) with a fresh ``DynamicCache`` inside the press's
context (kvpress compresses in a forward hook of each attention layer, at the end of its
prefill), median of repeats interleaved across settings after one warm-up each:

- ``none``: SDPA, no press;
- ``SnapKVPress(compression_ratio=1 - ratio)``: SDPA, scores from the last
  ``window_size`` queries (recomputed from the hidden states in the hook);
- ``ObservedAttentionPress(compression_ratio=1 - ratio)``: kvpress's H2O-style press, which
  reads the attention weights, so the model runs ``attn_implementation="eager"`` (the whole
  ``L x L`` matrix of every head materialised), timed against SDPA with no press (what a user
  switching it on pays) and against eager with no press.

Then ``--new-tokens`` greedy decode steps on the cache the prefill left (compressed or
not), timed one by one: the decode speed-up against no press with the same attention.

Our side (``pruning_speed.py``, section 2, same shape): SnapKV 1.01-1.07x, H2O 1.19-1.21x
(column sums fused into the prefill's attention).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build(hidden: int, layers: int, attn: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=2, vocab_size=32064, max_position_embeddings=65536, attn_implementation=attn,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ratio", type=float, default=0.1, help="share of the KV entries kept")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16, help="decode steps timed after each prefill")
    args = ap.parse_args()
    import kvpress
    import transformers
    from kvpress import ObservedAttentionPress, SnapKVPress
    from transformers import DynamicCache

    sdpa, eager = build(args.hidden, args.layers, "sdpa"), build(args.hidden, args.layers, "eager")
    ids = torch.randint(100, 32000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    compression = 1.0 - args.ratio
    settings = {
        "none (sdpa)": (sdpa, None),
        f"SnapKVPress({compression:.1f}) (sdpa)": (sdpa, SnapKVPress(compression_ratio=compression)),
        "none (eager)": (eager, None),
        f"ObservedAttentionPress({compression:.1f}) (eager)": (eager, ObservedAttentionPress(compression_ratio=compression)),
    }

    decode_ms: dict[str, list[float]] = {name: [] for name in settings}

    def once(model, press, name: str | None = None) -> tuple[float, int]:
        cache = DynamicCache()
        with torch.inference_mode():
            if press is None:
                t = time.perf_counter()
                out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            else:
                with press(model):
                    t = time.perf_counter()
                    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            took = time.perf_counter() - t
            kept = cache.get_seq_length(0)
            if name is not None:  # greedy decode steps on the (compressed) cache, positions continuing the prompt
                token = out.logits[:, -1:].argmax(-1)
                for step in range(args.new_tokens):
                    pos = torch.tensor([[args.tokens + step]])
                    t = time.perf_counter()
                    out = model(input_ids=token, past_key_values=cache, use_cache=True, position_ids=pos)
                    decode_ms[name].append((time.perf_counter() - t) * 1e3)
                    token = out.logits[:, -1:].argmax(-1)
        return took, kept

    kept = {}
    for name, (model, press) in settings.items():  # warm-up
        kept[name] = once(model, press)[1]
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, (model, press) in settings.items():
            times[name].append(once(model, press, name)[0])
    base = statistics.median(times["none (sdpa)"])
    base_eager = statistics.median(times["none (eager)"])
    print(
        f"kvpress {kvpress.__version__ if hasattr(kvpress, '__version__') else '0.5.5'}, transformers {transformers.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"random Llama decoder hidden {args.hidden} x {args.layers} layers ({args.hidden // 64} heads, 2 KV heads), {args.tokens} tokens, batch 1, keep {args.ratio:.0%}; median of {args.repeats}")
    print(f"{'setting':<42}{'prefill s':>10}{'vs none sdpa':>14}{'vs none eager':>15}{'KV kept':>9}{'decode ms/tok':>15}{'speed-up':>10}")
    for name in settings:
        t = statistics.median(times[name])
        vs_eager = f"{t / base_eager:>15.2f}" if "eager" in name else f"{'':>15}"
        d = statistics.median(decode_ms[name])
        d_base = statistics.median(decode_ms["none (eager)" if "eager" in name else "none (sdpa)"])
        print(f"{name:<42}{t:>10.2f}{t / base:>14.2f}{vs_eager}{kept[name]:>9d}{d:>15.2f}{d_base / d:>10.2f}")
    print("decode ms/tok: median of every step of every repeat; speed-up against no press with the same attention")
    print("prefill s, min-max over repeats: " + ", ".join(f"{n.split(' ')[0]} {min(v):.2f}-{max(v):.2f}" for n, v in times.items()))


if __name__ == "__main__":
    main()
