"""Loading an lmms-eval task's split with ``datasets.load_dataset``: from the hub (and the
usual ``HF_HOME`` cache), or from a local copy laid out as the hub dataset repo is.

A local copy lives at ``DATA_DIR/<dataset id>/`` (``DATA_DIR/lmms-lab/POPE/``): what a
snapshot download of the repo gives, a ``README.md`` whose YAML header declares the
``configs`` and their ``data_files``, and the parquet files.  ``load_dataset`` reads that
folder through the same builder it uses for the hub repo, so configs and splits resolve
exactly as they do online.

Everything a user can get wrong is one line: no copy and no network (naming the dataset id
and how to fetch it), a missing config or split, missing columns or columns of the wrong
type.  Image columns are read undecoded and decoded per sample, so a row whose image is
broken becomes a per-sample error instead of ending the sweep.
"""

from __future__ import annotations

import io
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .specs import Column, LmmsTaskSpec, column_value_ok


@dataclass
class Doc:
    """One row of the split: its index (lmms-eval's ``doc_id``), the row with its images
    decoded (PIL), and the reason its images could not be decoded, if any."""

    doc_id: int
    row: dict[str, Any]
    error: str | None = None


def fetch_hint(dataset_id: str) -> str:
    return f"fetch it with `huggingface-cli download --repo-type dataset {dataset_id} --local-dir DATA_DIR/{dataset_id}` and pass --data-dir DATA_DIR"


def local_copy(spec: LmmsTaskSpec, data_dir: str | Path) -> Path:
    """The folder of the task's dataset under ``data_dir`` (the reference id, or an alias)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data_dir {str(root)!r} is not a folder")
    for dataset_id in spec.all_dataset_ids:
        folder = root / dataset_id
        if folder.is_dir():
            return folder
    looked = ", ".join(str(root / d) for d in spec.all_dataset_ids)
    raise ConfigError(f"{spec.name}: no local copy of {spec.dataset_id} (looked for {looked}); {fetch_hint(spec.dataset_id)}")


def local_cache_dir(folder: Path) -> str:
    """The ``datasets`` cache folder of one local copy, as its files are now.

    ``load_dataset`` keys the cache of a local folder by the folder's *name* and its
    README's ``data_files`` patterns only, so two copies named alike (``lmms-lab/POPE`` and
    ``lmms-lab-encoder/POPE``, two data dirs, a copy re-downloaded or edited in place) would
    share one cache and the second would silently read the first's rows. Each copy gets a
    cache of its own instead, keyed by its resolved path and the name, size and mtime of
    every file in it (hidden folders such as ``.cache/`` left out).
    """
    import hashlib

    import datasets

    digest = hashlib.sha256(str(folder.resolve()).encode("utf-8"))
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        stat = path.stat()
        digest.update(f"\0{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "vlmcompress-local" / digest.hexdigest()[:16])


def _load(spec: LmmsTaskSpec, source: str, config: str | None, split: str, limit: int | None):
    """``load_dataset`` with one-line errors; ``limit`` takes the first rows of the split."""
    import datasets

    split_expr = split if limit is None else f"{split}[:{limit}]"
    cache_dir = local_cache_dir(Path(source)) if Path(source).is_dir() else None
    try:
        return datasets.load_dataset(source, name=config, split=split_expr, cache_dir=cache_dir)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        if Path(source).is_dir():
            raise ConfigError(f"{spec.name}: cannot read the local copy {source!r}: {_first_line(exc)}") from None
        raise ConfigError(f"{spec.name}: dataset {spec.dataset_id} is not reachable (offline, or not on the hub) and not in the HF cache; {fetch_hint(spec.dataset_id)}") from None
    except ValueError as exc:  # unknown config or split
        raise ConfigError(f"{spec.name}: {spec.dataset_id} (config {config!r}, split {split!r}): {_first_line(exc)}") from None
    except datasets.exceptions.DatasetGenerationError as exc:  # files of the config that do not agree (e.g. two revisions mixed)
        cause = exc.__cause__ or exc.__context__
        lines = str(cause or exc).strip().splitlines() or [type(exc).__name__]
        detail = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise ConfigError(f"{spec.name}: cannot build {spec.dataset_id} (config {config!r}) from {source!r}: {detail[:300]}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _undecoded_images(ds, columns: tuple[str, ...]):
    """Image columns cast to undecoded ``{"bytes", "path"}`` so one bad image cannot stop
    the whole split from being read."""
    import datasets

    for name in columns:
        if name in ds.features and isinstance(ds.features[name], datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def check_columns(spec: LmmsTaskSpec, ds) -> None:
    """Refuse a split whose columns the task reads are missing or of the wrong type (one line,
    naming them), judged on the first row."""
    names = set(ds.column_names)
    missing = [c.name for c in spec.columns if c.name not in names and not c.nullable]
    if missing:
        raise ConfigError(f"{spec.name}: the dataset has no column {', '.join(map(repr, missing))} (it has {', '.join(sorted(names))})")
    if len(ds) == 0:
        return
    first = ds[0]
    wrong = [f"{c.name!r} (expected {c.kind}, got {type(first[c.name]).__name__})" for c in spec.columns if c.name in first and not column_value_ok(c, first[c.name])]
    if wrong:
        raise ConfigError(f"{spec.name}: column of the wrong type: {', '.join(wrong)}")


def decode_image(value: Any):
    """A PIL image (RGB) from what ``datasets`` holds for an image cell."""
    from PIL import Image

    if value is None:
        raise ValueError("no image")
    if hasattr(value, "convert"):
        return value.convert("RGB")
    data = value.get("bytes")
    if data is None and value.get("path"):
        data = Path(value["path"]).read_bytes()
    if data is None:
        raise ValueError("image cell holds neither bytes nor a path")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def verify_image(value: Any) -> None:
    """Raise unless ``value`` holds a readable image file (header and integrity only: the
    pixels are decoded later, one batch at a time)."""
    from PIL import Image

    if value is None:
        raise ValueError("no image")
    if hasattr(value, "convert"):
        return
    data = value.get("bytes")
    if data is None and value.get("path"):
        data = Path(value["path"]).read_bytes()
    if data is None:
        raise ValueError("image cell holds neither bytes nor a path")
    Image.open(io.BytesIO(data)).verify()


def load_docs(spec: LmmsTaskSpec, data_dir: str | Path | None = None, limit: int | None = None) -> list[Doc]:
    """The first ``limit`` rows of the task's split (all when None).  Each image is checked
    now and decoded when it is used (``row[column]()``, a PIL RGB image): a whole split
    decoded up front would hold gigabytes."""
    source = str(local_copy(spec, data_dir)) if data_dir is not None else spec.dataset_id
    ds = _load(spec, source, spec.config, spec.split, limit)
    image_columns = tuple(c.name for c in spec.columns if c.kind == "image")
    ds = _undecoded_images(ds, image_columns)
    check_columns(spec, ds)
    joined = _joined_images(spec, source) if spec.image_join is not None else None
    docs = []
    for i, row in enumerate(ds):
        row = dict(row)
        error = None
        try:
            if joined is not None:
                key = row[spec.image_join.doc_key]
                if key not in joined:
                    raise ValueError(f"no image {key!r} in config {spec.image_join.config!r}")
                row[spec.image_columns[0]] = joined[key]
            for name in spec.images_of(row):
                verify_image(row.get(name))
                row[name] = partial(decode_image, row.get(name))
        except Exception as exc:  # noqa: BLE001 - a broken image is this row's error only
            error = f"image of doc {i} cannot be decoded: {type(exc).__name__}: {_first_line(exc)}"
        docs.append(Doc(i, row, error))
    return docs


def _joined_images(spec: LmmsTaskSpec, source: str) -> dict[Any, Any]:
    """GQA-style: the images config, by image id (kept undecoded until a doc needs one)."""
    join = spec.image_join
    ds = _load(spec, source, join.config, join.split, None)
    ds = _undecoded_images(ds, (join.image_column,))
    missing = [c for c in (join.image_key, join.image_column) if c not in ds.column_names]
    if missing:
        raise ConfigError(f"{spec.name}: config {join.config!r} has no column {', '.join(map(repr, missing))}")
    return dict(zip(ds[join.image_key], ds[join.image_column]))


__all__ = ["Column", "Doc", "check_columns", "decode_image", "fetch_hint", "load_docs", "local_copy"]
