"""Where the embedded model's multiple choice fails: seeing the colour, or giving its letter.

On held-out multiple-choice questions (greedy, through the normal evaluation loop) it asks
the same question a second time without the options ("what color is the triangle ?") and
prints, per way the object is named (by its shape, or by its row and column):

- ``mc``: multiple-choice accuracy;
- ``colour``: the colour named right in free form (perception);
- ``mc | colour right``: multiple-choice accuracy where the colour was named right;
- ``letter = own colour``: how often the letter given is that of the colour the model
  itself named (the lookup, right or wrong colour alike);

then the text-only lookup ``what is red ? a ) blue b ) red ...`` (``pick_option``, no
image needed) and the letters given against the gold letters.

    .venv/bin/python scripts/diagnose_multiple_choice.py [--model src/vlmcompress/embedded/weights] [--limit 200] [--seed 4321]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

import numpy as np
import torch

from vlmcompress.embedded.curriculum import ask_pick_option
from vlmcompress.eval.loop import generate_batch
from vlmcompress.methods import CompressionContext
from vlmcompress.models import load_model
from vlmcompress.models.loading import EMBEDDED_PATH
from vlmcompress.synthetic.questions import OPTION_LETTERS
from vlmcompress.tasks import TASKS
from vlmcompress.tasks.base import Sample


def answers(ctx: CompressionContext, samples: list[Sample], batch_size: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(samples), batch_size):
        out += [p.strip() for p in generate_batch(ctx, [], samples[i : i + batch_size], 4, torch.device("cpu")).predictions]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(EMBEDDED_PATH))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    loaded = load_model(args.model)
    ctx = CompressionContext(loaded.model, loaded.adapter, loaded.processor)
    samples = TASKS.get("synth_multiple_choice").samples(args.seed, args.limit)
    chosen = answers(ctx, samples, args.batch_size)
    free = answers(ctx, [dataclasses.replace(s, question=s.question.split(" ? ")[0] + " ?") for s in samples], args.batch_size)

    stats: Counter = Counter()
    for s, letter, colour in zip(samples, chosen, free):
        options = s.meta["options"]
        gold_colour = options[OPTION_LETTERS.index(s.answer)]
        form = "position" if " row " in s.question else "shape"
        stats[form, "n"] += 1
        stats[form, "mc"] += letter == s.answer
        stats[form, "colour"] += colour == gold_colour
        stats[form, "mc_and_colour"] += letter == s.answer and colour == gold_colour
        if colour in options:
            stats[form, "own_listed"] += 1
            stats[form, "own_letter"] += letter == OPTION_LETTERS[options.index(colour)]
    print(f"model {args.model}; {len(samples)} held-out multiple-choice questions, seed {args.seed}")
    print(f"{'named by':9s} {'n':>4s} {'mc':>6s} {'colour':>7s} {'mc | colour right':>18s} {'letter = own colour':>20s}")
    for form in ("shape", "position"):
        n = stats[form, "n"]
        if not n:
            continue
        print(
            f"{form:9s} {n:4d} {stats[form, 'mc'] / n:6.3f} {stats[form, 'colour'] / n:7.3f} "
            f"{stats[form, 'mc_and_colour'] / max(stats[form, 'colour'], 1):18.3f} {stats[form, 'own_letter'] / max(stats[form, 'own_listed'], 1):20.3f}"
        )
    print(f"letters given {dict(sorted(Counter(chosen).items()))}; gold {dict(sorted(Counter(s.answer for s in samples).items()))}")

    rng = np.random.default_rng([args.seed, 7])
    lookups = []
    for s in samples:
        qa = ask_pick_option(None, rng)
        lookups.append(Sample(s.id, s.image, qa.question, qa.answer))
    got = answers(ctx, lookups, args.batch_size)
    right = sum(g == s.answer for g, s in zip(got, lookups))
    print(f"text-only lookup (pick_option): {right / len(lookups):.3f} of {len(lookups)}; letters given {dict(sorted(Counter(got).items()))} (chance 0.25)")


if __name__ == "__main__":
    main()
