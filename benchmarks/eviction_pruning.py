"""KV eviction and visual-token pruning on the embedded model and the synthetic suite.

Prints, for each method and ratio, accuracy, loyalty, prefill and decode time against
the baseline of the same run, tokens kept (visual and total), KV bytes held and the
analytic FLOPs; then the peak memory of SnapKV / H2O scoring at T = 8k on a tiny random
decoder layer against full-attention scoring (each variant in its own process, peak
resident memory above the process's state just before scoring).

    OMP_NUM_THREADS=1 python benchmarks/eviction_pruning.py --limit 32 --batch-size 8
    python benchmarks/eviction_pruning.py --memory-only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

KV = ["streamingllm", "h2o", "snapkv", "pyramidkv", "vlcache", "lookm", "random"]
VISUAL = ["fastv", "visionzip", "prumerge_plus"]


def settings(kv_ratios=(0.1, 0.4), visual_ratios=(0.01, 0.1, 0.4)) -> list[str]:
    out = [f"{m}(ratio={r})" for m in KV for r in kv_ratios]
    out += [f"{m}(ratio={r})" for m in VISUAL for r in visual_ratios]
    return out


def sweep(args) -> None:
    from vlmcompress.runner import RunConfig, run
    from vlmcompress.tasks import SYNTHETIC_SUITE

    tasks = args.tasks or list(SYNTHETIC_SUITE)
    out = args.output or tempfile.mkdtemp(prefix="evict_bench_")
    results = run(RunConfig(model=args.model, tasks=tasks, settings=settings(), limit=args.limit, batch_size=args.batch_size, seed=args.seed, output=out, device=args.device))
    cells = results["cells"]
    base = {c["task"]: c for c in cells if c["setting"] == "none"}

    def avg(setting, key, sub="efficiency"):
        vals = [c[sub].get(key) for c in cells if c["setting"] == setting and c[sub].get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    def ratio(setting, key):
        vals = []
        for c in cells:
            if c["setting"] == setting and c["task"] in base:
                b = base[c["task"]]["efficiency"].get(key)
                if b:
                    vals.append(c["efficiency"][key] / b)
        return sum(vals) / len(vals) if vals else float("nan")

    print(f"model={args.model} tasks={','.join(tasks)} n/task={args.limit} batch={args.batch_size} (times: this run, same device)")
    head = f"{'setting':<28}{'acc':>6}{'loyal':>7}{'prefill×':>9}{'decode×':>9}{'tokens':>8}{'visual':>8}{'KV MB':>8}{'pFLOP×':>8}{'dFLOP×':>8}"
    print(head)
    print("-" * len(head))
    for s in ["none"] + settings():
        acc = avg(s, "accuracy", "scores")
        loyal_vals = [c["loyalty"]["agreement"] if isinstance(c["loyalty"], dict) else c["loyalty"] for c in cells if c["setting"] == s]
        loyal = sum(loyal_vals) / max(1, len(loyal_vals))
        pf = avg(s, "prefill_flops") / avg(s, "prefill_flops_full") if s != "none" else 1.0
        df = avg(s, "decode_flops_per_token") / avg(s, "decode_flops_per_token_full") if s != "none" else 1.0
        print(
            f"{s:<28}{acc:>6.3f}{loyal:>7.3f}{ratio(s, 'prefill_s'):>9.2f}{ratio(s, 'decode_s_per_token'):>9.2f}"
            f"{avg(s, 'tokens_kept'):>8.1f}{avg(s, 'visual_tokens_kept'):>8.1f}{avg(s, 'kv_bytes') / 1e6:>8.3f}{pf:>8.2f}{df:>8.2f}"
        )
    print("prefill×/decode×: time relative to the baseline (lower is faster); pFLOP×/dFLOP×: analytic FLOPs relative to the full prompt")


MEMORY_CHILD = r"""
import resource, sys, torch
torch.set_num_threads(1)
from vlmcompress.methods.eviction import scores as S
variant, T = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
Hq, Hkv, D = 4, 2, 16
q = torch.randn(Hq, T, D, generator=g); k = torch.randn(Hkv, T, D, generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
budget = T // 10; w = S.recent_window(budget)
if variant == "snapkv":
    S.snapkv_select(q[:, -w:], k, D ** -0.5, budget, w)
elif variant == "h2o":
    S.h2o_select(q, k, D ** -0.5, budget, w, chunk=256)
elif variant == "full":  # what the reference code does: the whole T x T attention at once
    logits = torch.matmul(q, k.repeat_interleave(2, 0).transpose(1, 2)) * D ** -0.5
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    logits.softmax(-1).sum(1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def memory(T: int) -> None:
    print(f"\npeak memory of scoring one layer, T={T}, 4 query heads / 2 KV heads, head dim 16 (float32):")
    for variant in ("snapkv", "h2o", "full"):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, variant, str(T)], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  {variant:<7} failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
            continue
        print(f"  {variant:<7} {int(res.stdout.strip()) / 2**20:10.1f} MiB above the inputs")
    print(f"  (full T x T float32 attention for 4 heads = {4 * T * T * 4 / 2**20:.0f} MiB per copy)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None)
    p.add_argument("--memory-T", type=int, default=8192)
    p.add_argument("--memory-only", action="store_true")
    args = p.parse_args()
    if not args.memory_only:
        sweep(args)
    memory(args.memory_T)


if __name__ == "__main__":
    main()
