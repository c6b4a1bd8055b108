"""Time spent writing a sweep's outputs per finished cell, at 10, 50 and 200 cells.

Cells are synthetic (no model runs): each has ``--samples`` sample rows shaped like a real
cell's.  Two ways of writing are timed in the same run:

- ``incremental``: what the runner does (:class:`OutputWriter`: rows appended to
  ``samples.jsonl``, JSON and reports re-rendered at most every ``render_every_s`` and
  once at the end);
- ``rewrite_each``: re-reading the whole store and re-rendering everything after every
  cell (:func:`write_outputs`, the old behaviour; quadratic in the sweep).

For each it prints the mean output time per cell (saving the cell in the store excluded;
the final render included, spread over the cells), the final render alone, and the ratio of
the per-cell time at the largest sweep against the smallest: ~1 or below means total time
linear in the cells.

    .venv/bin/python benchmarks/output_writing.py [--samples 16] [--render-every 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vlmcompress.runner.outputs import OutputWriter, write_outputs
from vlmcompress.store import Store

TASKS = ["synth_attribute", "synth_count", "synth_spatial", "synth_ocr", "synth_exists", "synth_multiple_choice", "synth_counterfactual"]


def fake_cell(i: int, n_samples: int) -> tuple[dict, list[dict]]:
    setting = "none" if i < len(TASKS) else f"rtn(bits={2 + i % 3},group_size={32 * (1 + i % 4)},targets=decoder) #{i}"
    task = TASKS[i % len(TASKS)]
    rows = [
        {
            "sample_id": f"{task}/1234/{j}",
            "prediction": f"answer {j % 5}",
            "gold": f"answer {j % 4}",
            "score": float(j % 5 == j % 4),
            "error": None,
            "meta": {"scene": "11redcircle|23bluesquare|sign3312", "negative": "random"},
            "stats": {"kv_bytes": 40960 + j, "generated_tokens": 2, "prompt_tokens": 80, "tokens_kept": 80.0},
        }
        for j in range(n_samples)
    ]
    cell = {
        "cell_key": f"cell-{i}",
        "model": "embedded",
        "setting": setting,
        "setting_normalized": "none" if setting == "none" else setting.split(" #")[0],
        "task": task,
        "n": n_samples,
        "n_errors": 0,
        "scores": {"accuracy": 0.5 + (i % 7) / 20},
        "scores_ci": {"accuracy": [0.4, 0.6]},
        "loyalty": {"agreement": 0.9, "score_agreement": 0.95, "right_to_wrong": 1, "wrong_to_right": 0, "mcnemar_p": 1.0, "errors": []},
        "efficiency": {"prefill_s": 0.01, "decode_s_per_token": 0.002, "weight_bytes": 7_000_000 - i, "kv_bytes": 40960.0, "peak_memory_bytes": 10**9},
    }
    return cell, rows


def sweep(n_cells: int, n_samples: int, mode: str, render_every_s: float) -> tuple[float, float]:
    """(mean seconds of output writing per cell, seconds of the final render) over a sweep
    of ``n_cells`` cells."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        store = Store(out / "results.sqlite")
        meta = {"config": {}, "versions": {}, "date": ""}
        writer = OutputWriter(out, store, render_every_s=render_every_s) if mode == "incremental" else None
        spent = 0.0
        for i in range(n_cells):
            cell, rows = fake_cell(i, n_samples)
            store.save_cell(cell, rows)
            started = time.perf_counter()
            if writer is not None:
                writer.cell_finished(cell, rows, meta)
            else:
                write_outputs(out, store, meta)
            spent += time.perf_counter() - started
        started = time.perf_counter()
        if writer is not None:
            writer.finish(meta)
        final = time.perf_counter() - started
        store.close()
        return (spent + final) / n_cells, final


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16, help="sample rows per cell")
    ap.add_argument("--render-every", type=float, default=30.0, help="OutputWriter's render_every_s")
    ap.add_argument("--sizes", default="10,50,200")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"per-cell output time (final render included); {args.samples} sample rows per cell")
    print(f"{'mode':<14} " + " ".join(f"{n:>6} cells" for n in sizes) + f"   ratio {sizes[-1]}/{sizes[0]}   final render at {sizes[-1]}")
    for mode in ("incremental", "rewrite_each"):
        runs = [sweep(n, args.samples, mode, args.render_every) for n in sizes]
        cols = " ".join(f"{1000 * t:>10.1f}ms" for t, _ in runs)
        print(f"{mode:<14} {cols}   {runs[-1][0] / runs[0][0]:>8.2f}×   {runs[-1][1]:.2f}s")


if __name__ == "__main__":
    main()
