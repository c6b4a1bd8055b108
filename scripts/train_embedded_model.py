"""Train the embedded model, phase by phase, on the synthetic suite's train split.

    # the shipped weights' recipe from random weights (base, then the continuation phases in embedded.phases.RECIPE)
    .venv/bin/python scripts/train_embedded_model.py [--work-dir scratch/train] [--export src/vlmcompress/embedded/weights]
    # one continuation phase from the shipped weights
    .venv/bin/python scripts/train_embedded_model.py --phases letters --init-from src/vlmcompress/embedded/weights

Phases: ``base`` (vision, language, refine, focus: ``embedded.training``) and the
continuation phases of ``embedded.phases``, each from the weights the one before
exported (fp16 -> fp32, fresh optimizer).  Each phase keeps its checkpoint in
``WORK_DIR/<phase>``: run the same command again and it goes on from there.  The last
phase exports to ``--export``, the ones before to ``WORK_DIR/<phase>/export``.
"""

import argparse
from dataclasses import fields
from pathlib import Path

from vlmcompress.embedded.phases import PHASE_NAMES, RECIPE, phase_named, train_phase
from vlmcompress.embedded.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("scratch/train"))
    parser.add_argument("--export", type=Path, default=Path("src/vlmcompress/embedded/weights"))
    parser.add_argument(
        "--phases", default=",".join(("base",) + RECIPE),
        help=f"comma-separated, in order (default: the shipped weights' recipe); known: base,{','.join(PHASE_NAMES)}",
    )
    parser.add_argument("--init-from", type=Path, default=None, help="weights the first phase starts from when it is not base")
    for f in fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    args = parser.parse_args()
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    names = [n.strip() for n in args.phases.split(",") if n.strip()]
    if not names:
        parser.error("--phases: name at least one phase")
    continuation = [phase_named(n) for n in names if n != "base"]  # unknown names fail before any work
    if "base" in names[1:]:
        parser.error("--phases: base can only come first")
    if names[0] != "base" and args.init_from is None:
        parser.error("--init-from DIR is needed when the first phase is not base (e.g. src/vlmcompress/embedded/weights)")
    previous = args.init_from
    for i, name in enumerate(names):
        last = i == len(names) - 1
        out = args.export if last else args.work_dir / name / "export"
        if name == "base":
            train(cfg, args.work_dir / "base", out)
        else:
            train_phase(continuation.pop(0), previous, args.work_dir / name, out, seed=cfg.seed, threads=cfg.threads, bf16_autocast=cfg.bf16_autocast,
                        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every)
        previous = out


if __name__ == "__main__":
    main()
