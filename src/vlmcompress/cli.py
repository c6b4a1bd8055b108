"""Command line: a thin layer over :mod:`vlmcompress.runner` and :mod:`vlmcompress.report`.

Errors the user can act on print one line and exit with status 2, no traceback: our own
(:class:`~vlmcompress.errors.VlmCompressError`), click's usage errors, and for ``run`` and
``report`` the environment's (a full disk, a read-only folder, a damaged store).  A sweep
that finishes with failed cells exits with status 3 after one line naming them; an
interrupted one with 130.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, NoReturn

import click

from .errors import VlmCompressError

DEFAULT_OUTPUT = "runs/default"
EXIT_USER_ERROR = 2
EXIT_FAILED_CELLS = 3
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " | ".join(lines) if lines else "(no message)"


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"error: {_one_line(str(exc))}", err=True)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """One line and status 2 for errors a user can act on; 130 for Ctrl-C."""
    import sqlite3

    try:
        yield
    except VlmCompressError as exc:
        _fail(exc)
    except sqlite3.DatabaseError as exc:  # a store damaged while in use
        _fail(VlmCompressError(f"the results store cannot be used: {exc}"))
    except OSError as exc:  # a full disk, a read-only or vanished folder
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _fail(VlmCompressError(f"{exc.strerror or type(exc).__name__}{where}"))
    except KeyboardInterrupt:
        click.echo("error: interrupted; finished cells are stored (re-run with the same --output to resume)", err=True)
        sys.exit(EXIT_INTERRUPTED)


class _OneLineGroup(click.Group):
    """Click's usage errors (a bad option value, an unknown option) as one ``error:`` line
    with status 2, like every other user error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log warnings and progress details.")
def cli(verbose: bool) -> None:
    """Measure what training-free compression does to vision-language models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "model", help="Local folder, hub id, or 'embedded' (default).")
@click.option("--tasks", help="Comma-separated task names (see `vlmcompress list tasks`).")
@click.option("--compress", "compress", multiple=True, help="A setting, e.g. 'rtn(bits=4)+kivi(bits=2)'; repeat for several. The baseline 'none' is always run.")
@click.option("--limit", type=int, help="Samples per task.")
@click.option("--batch-size", type=int)
@click.option("--seed", type=int, help="Seed of the held-out samples.")
@click.option("--output", help=f"Output directory (default {DEFAULT_OUTPUT}); re-running with it skips finished cells.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", help="auto (default: the checkpoint's dtype on a GPU, float32 on a CPU), float32, float16 or bfloat16. Bytes are reported at the checkpoint's 16-bit dtype either way.")
@click.option("--device-map", help="auto: spread the model over every visible GPU with accelerate (balanced, balanced_low_0, sequential too); on a CPU everything stays on the CPU.")
@click.option("--attn-implementation", help="sdpa (default), eager, or flash_attention_2 (needs the flash-attn package and a GPU).")
@click.option("--timing", help="batch (default): time the batches; request: also time each sample alone at batch 1 (TTFT, TPOT).")
@click.option("--max-new-tokens", type=int)
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow a hub model's own code (off unless set).")
@click.option("--data-dir", help="Local dataset copies: DATA_DIR/<dataset id>/ laid out as the hub repo (default: the hub and the HF cache).")
@click.option("--toxicity-model", help="Local folder of an HF text classifier that scores toxicity (social_counterfactuals).")
@click.option("--wait", is_flag=True, help="When another vlmcompress process holds --output, wait for it instead of refusing.")
@click.option("--retry-failed", is_flag=True, help="Compute again the cells an earlier run recorded as failed (skipped otherwise).")
@click.option("--executor", help="local (default): cells one after another in this process; ray: on a Ray cluster (pip install 'vlmcompress[ray]').")
@click.option("--ray-address", help="With --executor ray: the cluster to join (auto, ray://host:10001); default: start a local one.")
@click.option("--ray-workers", type=int, help="With --executor ray: how many workers (each holds one model); default: as many as the cluster fits.")
@click.option("--cpus-per-cell", type=float, help="With --executor ray: CPUs each worker asks for (default 1).")
@click.option("--gpus-per-cell", type=float, help="With --executor ray: GPUs each worker asks for (default: 1 when the cluster has GPUs, else 0).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-cell lines; errors and the report path only.")
def run(config, model, tasks, compress, limit, batch_size, seed, output, device, dtype, device_map, attn_implementation, timing, max_new_tokens, trust_remote_code, data_dir, toxicity_model, wait, retry_failed,
        executor, ray_address, ray_workers, cpus_per_cell, gpus_per_cell, quiet) -> None:
    """Run a sweep (no arguments: the embedded model on the held-out synthetic suite)."""
    from .runner import RunConfig
    from .runner import run as run_sweep
    from .runner.progress import make_progress

    overrides = {
        "model": model, "tasks": tasks, "limit": limit, "batch_size": batch_size, "seed": seed, "output": output,
        "device": device, "dtype": dtype, "max_new_tokens": max_new_tokens, "trust_remote_code": trust_remote_code, "data_dir": data_dir,
        "toxicity_model": toxicity_model, "device_map": device_map, "attn_implementation": attn_implementation, "timing": timing,
        "executor": executor, "ray_address": ray_address, "ray_workers": ray_workers, "cpus_per_cell": cpus_per_cell, "gpus_per_cell": gpus_per_cell,
    }
    if compress:
        overrides["compress"] = list(compress)
    with _guard():
        if config:
            cfg = RunConfig.from_yaml(config, **overrides)
        else:
            cfg = RunConfig.from_dict({"output": DEFAULT_OUTPUT, **{k: v for k, v in overrides.items() if v is not None}})
        results = run_sweep(cfg, wait=wait, retry_failed=retry_failed, progress=make_progress(quiet, click.echo))
    if not quiet:
        _print_summary(results)
    click.echo(f"report: {Path(cfg.output) / 'report.md'}")
    failed = results.get("failed_cells") or []
    if failed:
        first = failed[0]
        click.echo(
            f"error: {len(failed)} cell(s) failed, e.g. {first['model']} | {first['setting']} | {first['task']}: {_one_line(first.get('error') or '')}"
            " (see failed_cells in results.json; --retry-failed computes them again)",
            err=True,
        )
        sys.exit(EXIT_FAILED_CELLS)


def _print_summary(results: dict) -> None:
    """One table per model: settings as rows (names wrap, never cut), tasks as columns, and their mean.

    Off a terminal rich would assume 80 columns and cut every name to an ellipsis; a log file is read
    in an editor, so it gets at least 120.
    """
    from rich.console import Console
    from rich.table import Table

    from .report.summary import primary_score

    cells = results["cells"]
    settings = list(dict.fromkeys(c["setting"] for c in cells))
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    prefix = _common_prefix(tasks)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    for model in dict.fromkeys(c["model"] for c in cells):
        table = Table(title=f"primary metric per task — {model}")
        table.add_column("setting", overflow="fold", min_width=16)
        for t in tasks:
            table.add_column(t[len(prefix):] or t, justify="right", no_wrap=True)
        table.add_column("mean", justify="right", no_wrap=True)
        grid = {(c["setting"], c["task"]): c for c in cells if c["model"] == model}
        for s in settings:
            vals = [primary_score(grid[s, t]) if (s, t) in grid else None for t in tasks]
            known = [v for v in vals if v is not None]
            row = ["–" if v is None else f"{v:.3f}" for v in vals]
            row.append(f"{sum(known) / len(known):.3f}" if known else "–")
            table.add_row(s, *row)
        console.print(table)


def _common_prefix(names: list[str]) -> str:
    """The prefix every task name shares, cut at its last underscore (synth_count, synth_ocr -> synth_)."""
    if len(names) < 2:
        return ""
    import os.path

    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind("_") + 1]


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--wait", is_flag=True, help="When a run is writing DIRECTORY, wait for it instead of refusing.")
def report(directory: str, wait: bool) -> None:
    """Rewrite report.md (and results.json) of a run directory from its store."""
    from .runner.outputs import OutputLock, write_outputs
    from .store import Store

    path = Path(directory)
    db = path / "results.sqlite"
    if not db.is_file():
        _fail(VlmCompressError(f"{directory!r} holds no results.sqlite (not a vlmcompress run directory)"))
    with _guard(), OutputLock(path, wait=wait, echo=click.echo):
        store = Store(db)
        try:
            meta = store.meta()
            if meta is None:  # a store of an older run: its config is only in results.json
                meta = _meta_from_results_json(path / "results.json")
            write_outputs(path, store, meta)
        finally:
            store.close()
    click.echo(f"report: {path / 'report.md'}")


def _meta_from_results_json(previous: Path) -> dict:
    if not previous.exists():
        return {}
    try:
        data = json.loads(previous.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise VlmCompressError(
            f"{str(previous)!r} is not valid JSON ({_one_line(str(exc))}), and this older store does not hold the run's config: "
            "restore results.json or re-run with the same --output"
        ) from None
    if not isinstance(data, dict):
        raise VlmCompressError(f"{str(previous)!r} does not hold a JSON object; restore it or re-run with the same --output")
    return {k: v for k, v in data.items() if k not in ("cells", "failed_cells", "lmms_eval")}


@cli.command()
@click.argument("task")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--data-dir", help="Local dataset copies (as for `run`).")
@click.option("--setting", help="With a run's samples.jsonl holding several settings: the setting (as the run names it).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object {metric: value} on stdout.")
def score(task: str, predictions: str, data_dir: str | None, setting: str | None, as_json: bool) -> None:
    """Score PREDICTIONS (JSONL with doc_id and prediction; a run's samples.jsonl too) with TASK's scorer."""
    from .rescoring import rescore

    try:
        scores = rescore(task, predictions, data_dir, setting)
    except VlmCompressError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(scores))
    else:
        for name, value in scores.items():
            click.echo(f"{name:32s} {value}")


@cli.command(name="list")
@click.argument("what", type=click.Choice(["methods", "tasks", "models"]))
def list_(what: str) -> None:
    """List registered methods, tasks or model families."""
    if what == "methods":
        from .methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            click.echo(f"{name:16s} [{cls.hook}] {doc}")
        click.echo(f"{'none':16s} [baseline] no compression")
    elif what == "tasks":
        from .tasks import TASKS

        for name in TASKS.names():
            t = TASKS.get(name)
            d = t.describe()
            where = d["dataset"] + (f" config={d['config']}" if d.get("config") else "") + (f" split={d['split']}" if d.get("split") else "")
            click.echo(f"{name:24s} [{t.category}] {where} · metrics: {', '.join(d['metrics'])} · primary: {d['primary_metric']}")
    else:
        from .models import ADAPTERS, EMBEDDED_PATH
        from .models.tiny import TINY_BUILDERS, family_support

        click.echo(f"{'embedded':12s} the shipped LLaVA-architecture model ({EMBEDDED_PATH})")
        for name in ADAPTERS.names():
            types = ADAPTERS.get(name).model_types
            click.echo(f"{name:12s} model types: {', '.join(types)}")
            for model_type in types:  # what the adapter refuses, asked of the type's tiny model
                if model_type not in TINY_BUILDERS:
                    click.echo(f"  {model_type:16s} (no tiny model to ask)")
                    continue
                support = family_support(model_type)
                click.echo(f"  {model_type:16s} " + "  ".join(f"{f}: {'yes' if why is None else 'no'}" for f, why in support.items()))
                for family, why in support.items():
                    if why is not None:
                        click.echo(f"  {'':16s}   {family} refused: {why}")


@cli.command(name="tiny-model")
@click.argument("family")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def tiny_model(family: str, directory: str, seed: int) -> None:
    """Write a tiny random checkpoint of FAMILY (a model type of `vlmcompress list models`:
    llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl, internvl) to DIRECTORY:
    config, safetensors weights and processor (tokenizer, image processor, chat template),
    which `vlmcompress run --model DIRECTORY` loads like a hub model."""
    from .models.tiny import build_tiny, save_tiny

    try:
        path = save_tiny(*build_tiny(family, seed=seed), Path(directory))
    except VlmCompressError as exc:
        _fail(exc)
    click.echo(f"{family}: {path}")


@cli.command(name="export-lmms-eval")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
def export_lmms_eval_command(directory: str, out: str) -> None:
    """Write the run in DIRECTORY as lmms-eval writes its results: one folder per model and
    setting under OUT, OUT/<model>/<setting>/<date>_results.json (lmms-eval's results
    block) and <date>_samples_<task>.jsonl (its per-sample logs).  Prints one line per
    folder written."""
    from .runner.lmms_results import export_run

    try:
        written = export_run(Path(directory), Path(out))
    except VlmCompressError as exc:
        _fail(exc)
    for path in written:
        date_id = path.name[: -len("_results.json")]
        tasks = len(list(path.parent.glob(f"{date_id}_samples_*.jsonl")))
        click.echo(f"{path.parent}: {path.name} + {tasks} sample file(s)")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
