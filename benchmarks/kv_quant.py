"""KV-cache quantization: bytes held against fp16 and against the analytic count, fidelity,
transformers' own ``QuantizedCache`` on the same sequence, and accuracy + loyalty through
the runner.  Numbers are ratios measured in this run (no timing).

1. Long sequence (``--tokens``, default 4096) of random token ids through a tiny random
   LLaVA decoder with head_dim 128 (so that channel groups of 128 apply): prefill, then
   ``--decode`` greedy steps teacher-forced on the fp16 cache's tokens.  Per setting, at 2
   and 4 bits: bytes held (codes, scales, zeros, outliers, fp16 residual), analytic bytes,
   fp16 ``DynamicCache`` bytes, and agreement of next-token argmax / logit cosine with fp16.
2. The same sequence through transformers' ``QuantizedCache(backend="quanto")`` at equal
   bits, group 128, residual 128 (needs optimum-quanto importable: e.g. installed with
   ``pip install --target DIR optimum-quanto==0.2.7 ninja==1.13.0 --no-deps`` and
   ``PYTHONPATH=DIR``; skipped otherwise).  Its bytes are counted from the quanto tensors.
3. Decode-step time (``--timing-tokens``, default 4096 and 16384): per cache, one prefill,
   then rounds of decode steps interleaved across the caches (so that load changes hit all
   alike), median ms per step and bytes held, for the fp32 ``DynamicCache`` (the model's own
   dtype on this CPU), our ``kivi`` and ``kv_group`` at 2 and 4 bits, and transformers'
   ``QuantizedCache(quanto)`` at the same bits, group 128, residual 128 (ours: group 128 too); ratios against
   quanto.  ``--timing-batch`` (default 1) rows per batch; at batch > 1 the prompts have
   equal lengths.
4. Accuracy and loyalty on the synthetic suite via ``vlmcompress.runner.run`` on
   ``--model`` (default: the embedded model; head_dim 64, prompts of ~80 tokens, so the
   groups and residual are 32 tokens here), with ``attend_quantized`` false (KIVI: the prompt
   attends to itself at full precision) and true (attention always reads the stored cache).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kv_quant.py [--tokens 4096] [--decode 16]
        [--model embedded] [--limit 32] [--batch-size 8] [--group 32] [--residual 32]
        [--attend-quantized both|false|true] [--skip-long] [--skip-runner]
        [--timing-tokens 4096,16384] [--timing-batch 1] [--timing-steps 8] [--timing-rounds 5] [--skip-timing]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import DynamicCache

from vlmcompress.methods import build_setting


def long_settings(bits: int) -> list[str]:
    return [
        f"kv_uniform(bits={bits})",
        f"kv_outlier(bits={bits},outlier_frac=0.01)",
        f"kv_group(bits={bits},label=g-KC128VT128,residual=128)",
        f"kivi(bits={bits},group=32,residual=128)",
    ]


def runner_settings(bits: int, attend: bool, group: int, residual: int) -> list[str]:
    a = str(attend).lower()
    return [
        f"kv_uniform(bits={bits},attend_quantized={a})",
        f"kv_outlier(bits={bits},outlier_frac=0.01,attend_quantized={a})",
        f"kv_group(bits={bits},label=g-KC{group}VT{group},residual={residual},attend_quantized={a})",
        f"kivi(bits={bits},group={group},residual={residual},attend_quantized={a})",
    ]


def _forward_stream(model, ids: torch.Tensor, cache, decode_ids: torch.Tensor) -> list[torch.Tensor]:
    """Prefill ``ids`` then feed ``decode_ids`` one at a time; logits of the last position each step."""
    out = []
    with torch.inference_mode():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
        out.append(logits.float())
        for t in range(decode_ids.shape[1]):
            logits = model(input_ids=decode_ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(logits.float())
    return out


def _tensor_bytes(t) -> int:
    """Bytes behind a (possibly subclassed, e.g. quanto) tensor: its inner tensors' storages."""
    if t is None:
        return 0
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.untyped_storage().nbytes()


def long_sequence(tokens: int, decode: int, seed: int) -> None:
    from vlmcompress.models.tiny import tiny_llava

    model, _ = tiny_llava(hidden=256, layers=2, heads=2, kv_heads=1, seed=seed)
    cfg = model.config.get_text_config()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, cfg.vocab_size, (1, tokens), generator=g)
    # fp16 reference: greedy tokens, which every setting is then teacher-forced on
    ref_cache = DynamicCache(config=cfg)
    ref_logits, dec = [], []
    with torch.inference_mode():
        logits = model(input_ids=ids, past_key_values=ref_cache, use_cache=True).logits[:, -1]
        ref_logits.append(logits.float())
        for _ in range(decode):
            nxt = logits.argmax(-1, keepdim=True)
            dec.append(nxt)
            logits = model(input_ids=nxt, past_key_values=ref_cache, use_cache=True).logits[:, -1]
            ref_logits.append(logits.float())
    dec_ids = torch.cat(dec, dim=1)
    n_tokens = tokens + decode
    fp16 = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * n_tokens * 2
    print(f"\n## 1. long sequence: {tokens} prompt + {decode} decode tokens, tiny LLaVA decoder "
          f"({cfg.num_hidden_layers} layers, {cfg.num_key_value_heads} KV head(s), head_dim {head_dim}), fp32 model, fp16 residual")
    print(f"fp16 DynamicCache bytes for {n_tokens} tokens: {fp16}")
    header = f"{'setting':58s} {'bytes':>9s} {'analytic':>9s} {'|m-a|/a':>8s} {'fp16/x':>7s} {'top1':>5s} {'cos':>7s}"
    print(header)
    print("-" * len(header))

    def fidelity(logits):
        top1 = sum(int(a.argmax() == b.argmax()) for a, b in zip(logits[1:], ref_logits[1:])) / max(decode, 1)
        cos = min(torch.nn.functional.cosine_similarity(a, b, dim=-1).item() for a, b in zip(logits[1:], ref_logits[1:])) if decode else 1.0
        return top1, cos

    for bits in (2, 4):
        for spec in long_settings(bits):
            method = build_setting(spec).methods[0]
            cache = method.build_cache(cfg.num_hidden_layers, head_dim, None)
            logits = _forward_stream(model, ids, cache, dec_ids)
            s = cache.footprint()[0]
            assert s["kv_bytes_fp16"] == fp16
            top1, cos = fidelity(logits)
            rel = abs(s["kv_bytes"] - s["kv_bytes_analytic"]) / s["kv_bytes_analytic"]
            print(f"{spec:58s} {s['kv_bytes']:9d} {s['kv_bytes_analytic']:9d} {rel:8.2%} {fp16 / s['kv_bytes']:7.2f} {top1:5.2f} {cos:7.4f}")
        quanto_row(model, cfg, ids, dec_ids, bits, fp16, fidelity)


def quanto_row(model, cfg, ids, dec_ids, bits, fp16, fidelity) -> None:
    try:
        import optimum.quanto  # noqa: F401
        from transformers import QuantizedCache
    except ImportError:
        print(f"{'transformers QuantizedCache(quanto, nbits=' + str(bits) + ')':58s} skipped: optimum-quanto is not importable")
        return
    cache = QuantizedCache(backend="quanto", config=cfg, nbits=bits, q_group_size=128, residual_length=128)
    logits = _forward_stream(model, ids, cache, dec_ids)
    held = 0
    for layer in cache.layers:
        held += _tensor_bytes(layer._quantized_keys) + _tensor_bytes(layer._quantized_values)
        held += _tensor_bytes(layer.keys) + _tensor_bytes(layer.values)
    top1, cos = fidelity(logits)
    dtype = cache.layers[0].keys.dtype if cache.layers[0].keys is not None else None
    name = f"QuantizedCache(quanto,nbits={bits},G=128,R=128)"
    print(f"{name:58s} {held:9d} {'-':>9s} {'-':>8s} {fp16 / held:7.2f} {top1:5.2f} {cos:7.4f}   (residual kept in {dtype})")


def _quanto_cache(cfg, bits: int):
    try:
        import optimum.quanto  # noqa: F401
        from transformers import QuantizedCache
    except ImportError:
        return None
    return QuantizedCache(backend="quanto", config=cfg, nbits=bits, q_group_size=128, residual_length=128)


def _quanto_bytes(cache) -> int:
    held = 0
    for layer in cache.layers:
        held += _tensor_bytes(layer._quantized_keys) + _tensor_bytes(layer._quantized_values)
        held += _tensor_bytes(layer.keys) + _tensor_bytes(layer.values)
    return held


def decode_timing(tokens: int, batch: int, steps: int, rounds: int, seed: int) -> None:
    """Median decode-step time and bytes held per cache at ``tokens`` tokens (see the module doc)."""
    from vlmcompress.models.tiny import tiny_llava

    model, _ = tiny_llava(hidden=256, layers=2, heads=2, kv_heads=1, seed=seed)
    cfg = model.config.get_text_config()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    ids = torch.randint(10, cfg.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))
    makers = {"DynamicCache (fp32)": lambda: DynamicCache(config=cfg)}
    for bits in (2, 4):
        for spec in (f"kivi(bits={bits},group=128,residual=128)", f"kv_group(bits={bits},label=g-KC128VT128,residual=128)"):
            makers[spec] = lambda spec=spec: build_setting(spec).methods[0].build_cache(cfg.num_hidden_layers, head_dim, None)
        if _quanto_cache(cfg, bits) is not None:
            makers[f"QuantizedCache(quanto,nbits={bits},G=128,R=128)"] = lambda bits=bits: _quanto_cache(cfg, bits)
    caches, last = {}, {}
    with torch.inference_mode():
        for name, make in makers.items():
            caches[name] = make()
            last[name] = model(input_ids=ids, past_key_values=caches[name], use_cache=True).logits[:, -1:].argmax(-1)
        times = {name: [] for name in caches}
        for _ in range(rounds):  # interleaved: every cache gets the same share of this machine's noise
            for name, cache in caches.items():
                for _ in range(steps):
                    start = time.perf_counter()
                    logits = model(input_ids=last[name], past_key_values=cache, use_cache=True).logits[:, -1:]
                    times[name].append(time.perf_counter() - start)
                    last[name] = logits.argmax(-1)
    held = {}
    for name, cache in caches.items():
        if hasattr(cache, "footprint"):
            held[name] = sum(row["kv_bytes"] for row in cache.footprint())
        elif name.startswith("QuantizedCache"):
            held[name] = _quanto_bytes(cache)
        else:
            held[name] = sum(_tensor_bytes(layer.keys) + _tensor_bytes(layer.values) for layer in cache.layers)
    n_held = tokens + rounds * steps
    print(f"\n## 3. decode-step time at {tokens} prompt tokens (+{rounds * steps} decoded), batch {batch}, tiny LLaVA decoder "
          f"({cfg.num_hidden_layers} layers, head_dim {head_dim}), torch threads {torch.get_num_threads()}; median of {rounds * steps} steps")
    header = f"{'cache':52s} {'ms/step':>8s} {'bytes held':>11s} {'vs quanto: time':>16s} {'bytes':>6s}"
    print(header)
    print("-" * len(header))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name in caches:
        bits = 2 if "bits=2" in name or "nbits=2" in name else 4 if ("bits=4" in name or "nbits=4" in name) else None
        ref = f"QuantizedCache(quanto,nbits={bits},G=128,R=128)"
        rel = f"{medians[name] / medians[ref]:16.2f} {held[name] / held[ref]:6.2f}" if bits and ref in medians else f"{'-':>16s} {'-':>6s}"
        print(f"{name:52s} {medians[name] * 1000:8.2f} {held[name]:11d} {rel}")
    if not any(n.startswith("QuantizedCache") for n in caches):
        print("(transformers QuantizedCache skipped: optimum-quanto is not importable)")
    print(f"(bytes held after {n_held} tokens per row, summed over {batch} row(s) and {cfg.num_hidden_layers} layers)")


def runner_part(model: str, tasks: list[str], limit: int, batch_size: int, seed: int, attend: list[bool], group: int, residual: int) -> None:
    from vlmcompress.runner import RunConfig, run

    settings = [s for a in attend for b in (2, 4) for s in runner_settings(b, a, group, residual)]
    print(f"\n## 4. runner: model={model}, tasks={','.join(tasks)}, limit={limit}, batch_size={batch_size}, seed={seed}")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = run(RunConfig(model=model, tasks=tasks, settings=settings, limit=limit, batch_size=batch_size, seed=seed, output=out))
        print(f"({time.perf_counter() - started:.0f}s)")
    header = f"{'setting':66s} {'task':18s} {'n':>3s} {'acc':>6s} {'loyal':>6s} {'kv_bytes':>9s} {'analytic':>9s} {'fp16':>9s} {'fp16/x':>7s}"
    print(header)
    print("-" * len(header))
    for cell in result["cells"]:
        e = cell.get("efficiency", {})
        kv, an, f16 = e.get("kv_bytes"), e.get("kv_bytes_analytic"), e.get("kv_bytes_fp16")
        ratio = f"{f16 / kv:7.2f}" if kv and f16 else f"{'-':>7s}"
        acc = cell["scores"].get("accuracy", float("nan"))
        loyal = cell.get("loyalty")
        loyal = loyal.get("agreement") if isinstance(loyal, dict) else loyal  # results.json: agreement as a float
        loyal = float("nan") if loyal is None else loyal
        fmt = lambda v: f"{v:9.0f}" if isinstance(v, (int, float)) else f"{'-':>9s}"  # noqa: E731
        print(f"{cell['setting'][:66]:66s} {cell['task'][:18]:18s} {cell['n']:3d} {acc:6.3f} {loyal:6.3f} {fmt(kv)} {fmt(an)} {fmt(f16)} {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tasks", default="synth_attribute,synth_count,synth_exists")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group", type=int, default=32, help="runner part: key/value group (must divide head_dim)")
    ap.add_argument("--residual", type=int, default=32, help="runner part: fp16 window (a multiple of --group)")
    ap.add_argument("--attend-quantized", choices=("both", "false", "true"), default="both")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--skip-runner", action="store_true")
    ap.add_argument("--timing-tokens", default="4096,16384", help="prompt lengths of the decode-step timing, comma-separated")
    ap.add_argument("--timing-batch", type=int, default=1)
    ap.add_argument("--timing-steps", type=int, default=8, help="decode steps per cache per round")
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if not args.skip_long:
        long_sequence(args.tokens, args.decode, args.seed)
    if not args.skip_timing:
        for tokens in (int(t) for t in args.timing_tokens.split(",")):
            decode_timing(tokens, args.timing_batch, args.timing_steps, args.timing_rounds, args.seed)
    if not args.skip_runner:
        attend = {"both": [False, True], "false": [False], "true": [True]}[args.attend_quantized]
        try:
            runner_part(args.model, args.tasks.split(","), args.limit, args.batch_size, args.seed, attend, args.group, args.residual)
        except Exception as exc:  # e.g. the embedded model is not built yet
            print(f"\n## 4. runner skipped: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
