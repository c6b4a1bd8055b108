"""The same sweep in-process and on a local Ray cluster, timed in one run.

2 models (the embedded model and a tiny LLaVA built from a config) × 4 settings (the
baseline, RTN, SnapKV, VisionZip) × 2 tasks: wall-clock of each executor, their ratio, the
Ray cluster's start-up counted apart, and whether both stores hold the same predictions
and scores.

    .venv/bin/python benchmarks/ray_sweep.py [--limit 32] [--workers 2]

On a 2-core machine the in-process run already uses both cores (torch threads), so Ray
can win only where one process leaves cores idle (model loading, tokenising, Python
between batches); on a cluster of GPUs each worker adds a device.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vlmcompress.models.tiny import tiny_llava
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store

SETTINGS = ["none", "rtn(bits=4,group_size=64)", "snapkv(ratio=0.4)", "visionzip(ratio=0.4)"]
TASKS = ["synth_count", "synth_exists"]


def contents(out: Path) -> dict:
    store = Store(out / "results.sqlite")
    try:
        return {
            c["cell_key"]: (json.dumps(c["scores"], sort_keys=True), sorted((r["sample_id"], r["prediction"], r["score"]) for r in store.samples(c["cell_key"])))
            for c in store.cells()
        }
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="vlmc-ray-bench-"))
    model, processor = tiny_llava(hidden=128, layers=4)
    model.save_pretrained(tmp / "tiny_llava")
    processor.save_pretrained(tmp / "tiny_llava")
    models = ["embedded", str(tmp / "tiny_llava")]

    def config(out: Path, **extra) -> RunConfig:
        return RunConfig(model=models, tasks=TASKS, settings=SETTINGS, limit=args.limit, batch_size=16, output=str(out), **extra)

    started = time.perf_counter()
    run(config(tmp / "local"))
    local_s = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    started = time.perf_counter()
    run(config(tmp / "ray", executor="ray", ray_workers=args.workers))
    ray_s = time.perf_counter() - started
    ray.shutdown()

    same = contents(tmp / "local") == contents(tmp / "ray")
    cells = len(models) * len(SETTINGS) * len(TASKS)
    print(f"sweep: {len(models)} models x {len(SETTINGS)} settings x {len(TASKS)} tasks = {cells} cells, {args.limit} samples each")
    print(f"in-process:               {local_s:7.1f} s")
    print(f"ray, {args.workers} workers:           {ray_s:7.1f} s  (+ {init_s:.1f} s to start the local cluster)")
    print(f"ray / in-process:         {ray_s / local_s:7.2f}x  (with cluster start: {(ray_s + init_s) / local_s:.2f}x)")
    print(f"same predictions and scores in both stores: {same}")


if __name__ == "__main__":
    main()
