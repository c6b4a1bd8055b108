"""The image and question of a stored sample, for the report's disagreement table.

The store keeps a sample's prediction, gold and meta, not its image or question; they are
re-derived from the task:

* synthetic tasks regenerate their held-out samples deterministically from the seed in the
  sample id (``synth_count/<seed>/<index>``; the counterfactual task's
  ``synth_counterfactual/<seed>/<set>/<variant>``), the first ``index + 1`` only;
* the lmms-eval tasks read the first ``doc_id + 1`` rows of their split, only when the run
  named a ``data_dir`` (a report never goes to the network);
* anything else (or any failure) gives nothing.

A regenerated sample is shown only when its gold answer equals the stored one, so a task
whose generator changed since the run never puts a wrong picture next to an answer.
Results are cached per process (a sweep re-renders its report every 30 seconds).
"""

from __future__ import annotations

import base64
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THUMB_PX = 96  # the longest side of a thumbnail
MAX_SYNTHETIC = 10_000  # never regenerate more samples than this for one lookup
MAX_DOCS = 20_000  # never read more dataset rows than this for one lookup
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class SampleView:
    question: str | None
    thumbnail: str | None  # a data: URI of a PNG


_NOTHING = SampleView(None, None)
_cache: "OrderedDict[tuple, SampleView]" = OrderedDict()


def thumbnail_uri(image: Any, px: int = THUMB_PX) -> str | None:
    """A small PNG of a PIL image as a ``data:`` URI (None when it is not an image)."""
    try:
        img = image.convert("RGB")
        img.thumbnail((px, px))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - no picture is better than no report
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 10 else None


def _plan(task: Any, task_name: str, sample_id: str, config: dict[str, Any]) -> tuple[int, int, str | None] | None:
    """(seed, how many samples to generate, data_dir) that reproduce ``sample_id``, or None."""
    from ..tasks.lmms.task import LmmsTask
    from ..tasks.synthetic import CounterfactualTask, SyntheticTask

    parts = sample_id.split("/")
    if parts[0] != task_name:
        return None
    if isinstance(task, SyntheticTask):
        nums = [_int(p) for p in parts[1:]]
        if None in nums:
            return None
        if isinstance(task, CounterfactualTask) and len(nums) == 3:
            seed, set_id, _ = nums
            n = (set_id + 1) * max(1, int(task.variants))
        elif not isinstance(task, CounterfactualTask) and len(nums) == 2:
            seed, index = nums
            n = index + 1
        else:
            return None
        return (seed, n, None) if n <= MAX_SYNTHETIC else None
    if isinstance(task, LmmsTask):
        data_dir = config.get("data_dir")
        if not isinstance(data_dir, str) or not Path(data_dir).expanduser().is_dir() or len(parts) != 2:
            return None
        doc_id = _int(parts[1])
        if doc_id is None or doc_id >= MAX_DOCS:
            return None
        seed = config.get("seed") if isinstance(config.get("seed"), int) else 0
        return seed, doc_id + 1, data_dir
    return None


def _remember(key: tuple, view: SampleView) -> None:
    _cache[key] = view
    _cache.move_to_end(key)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


def sample_views(config: dict[str, Any] | None, wanted: dict[str, dict[str, Any]]) -> dict[tuple[str, str], SampleView]:
    """``wanted``: per task, ``{sample_id: stored gold}``.  Returns ``{(task, sample_id):
    SampleView}`` for every wanted sample (empty views where nothing can be shown); never
    raises."""
    config = config if isinstance(config, dict) else {}
    cfg_dir = config.get("data_dir") if isinstance(config.get("data_dir"), str) else None
    out: dict[tuple[str, str], SampleView] = {}
    for task_name, golds in wanted.items():
        todo: dict[tuple, dict[str, Any]] = {}  # (seed, data_dir) -> {sample_id: gold}
        need: dict[tuple, int] = {}
        task = None
        for sample_id, gold in golds.items():
            key = (task_name, sample_id, cfg_dir, str(gold))
            if key in _cache:
                _cache.move_to_end(key)
                out[(task_name, sample_id)] = _cache[key]
                continue
            try:
                if task is None:
                    from ..tasks import TASKS

                    task = TASKS.get(task_name) if isinstance(task_name, str) and task_name in TASKS else False
                plan = _plan(task, task_name, sample_id, config) if task else None
            except Exception:  # noqa: BLE001
                plan = None
            if plan is None:
                _remember(key, _NOTHING)
                out[(task_name, sample_id)] = _NOTHING
                continue
            seed, n, data_dir = plan
            todo.setdefault((seed, data_dir), {})[sample_id] = gold
            need[(seed, data_dir)] = max(need.get((seed, data_dir), 0), n)
        for (seed, data_dir), ids in todo.items():
            try:
                samples = {s.id: s for s in task.samples(seed, need[(seed, data_dir)], data_dir)}
            except Exception as exc:  # noqa: BLE001 - a missing dataset copy: no pictures
                log.info("report: cannot regenerate samples of %s: %s", task_name, exc)
                samples = {}
            for sample_id, gold in ids.items():
                s = samples.get(sample_id)
                view = _NOTHING
                if s is not None and getattr(s, "error", None) is None and str(s.answer) == str(gold):
                    try:
                        image = s.load_image()
                    except Exception:  # noqa: BLE001
                        image = None
                    view = SampleView(s.question if isinstance(s.question, str) else None, thumbnail_uri(image) if image is not None else None)
                _remember((task_name, sample_id, cfg_dir, str(gold)), view)
                out[(task_name, sample_id)] = view
    return out
