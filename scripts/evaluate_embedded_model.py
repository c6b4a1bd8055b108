"""Held-out accuracy of the embedded model per task type, next to chance (the majority
answer's share), through the normal evaluation loop; written next to the weights.

    .venv/bin/python scripts/evaluate_embedded_model.py [--model src/vlmcompress/embedded/weights] [--limit 200] [--seed 1234]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from vlmcompress.models.loading import EMBEDDED_PATH
from vlmcompress.runner import RunConfig, run
from vlmcompress.tasks import SYNTHETIC_SUITE, TASKS


def chance_level(task_name: str, seed: int, limit: int) -> tuple[str, float]:
    task = TASKS.get(task_name)
    golds = Counter(task.normalize(s.answer) for s in task.samples(seed, limit))
    answer, count = golds.most_common(1)[0]
    return answer, count / sum(golds.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(EMBEDDED_PATH))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="merge the scores into recipe.json next to the weights")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="vlmc-embedded-eval-")
    # the uncompressed model only (RunConfig alone would run the default grid of settings)
    res = run(RunConfig(model=args.model, tasks=list(SYNTHETIC_SUITE), settings=["none"], limit=args.limit, seed=args.seed, batch_size=args.batch_size, output=out))
    rows = {}
    print(f"{'task':24s} {'accuracy':>9s} {'95% CI':>15s} {'chance':>7s}  majority answer")
    for c in res["cells"]:
        answer, chance = chance_level(c["task"], args.seed, args.limit)
        lo, hi = c["scores_ci"]["accuracy"]
        rows[c["task"]] = {"accuracy": c["scores"]["accuracy"], "ci95": [lo, hi], "chance_majority": chance, "majority_answer": answer, "n": c["n"], "scores": c["scores"]}
        print(f"{c['task']:24s} {c['scores']['accuracy']:9.3f} [{lo:.3f}, {hi:.3f}] {chance:7.3f}  {answer!r}")
    overall = sum(r["accuracy"] * r["n"] for r in rows.values()) / sum(r["n"] for r in rows.values())
    print(f"{'overall':24s} {overall:9.3f}")
    if args.write:
        recipe_path = Path(args.model) / "recipe.json"
        recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
        recipe["heldout_evaluation"] = {
            "command": "scripts/evaluate_embedded_model.py " + f"--limit {args.limit} --seed {args.seed}",
            "seed": args.seed,
            "samples_per_task": args.limit,
            "overall_accuracy": overall,
            "per_task": rows,
        }
        recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
        print(f"written: {recipe_path}")


if __name__ == "__main__":
    main()
