"""executor=ray on a local Ray cluster of 2 CPUs: the same store as in-process, a worker
killed mid-cell loses nothing, and the default path never imports Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store

ray = pytest.importorskip("ray")

SETTINGS = ["none", "rtn(bits=4,group_size=64)", "snapkv(ratio=0.4)", "visionzip(ratio=0.4)"]
TASKS = ["synth_count", "synth_exists"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _config(out, **extra) -> RunConfig:
    return RunConfig(tasks=list(TASKS), settings=list(SETTINGS), limit=6, batch_size=4, output=str(out), **extra)


def _contents(out) -> dict:
    """What a sweep computed, per cell: status, scores, loyalty and every sample's
    prediction, score and error (not its timing, which differs from run to run)."""
    store = Store(out / "results.sqlite")
    try:
        contents = {}
        for cell in store.cells():
            rows = [(r["sample_id"], r["prediction"], r["score"], r["error"]) for r in store.samples(cell["cell_key"])]
            loyal = {k: v for k, v in (cell["loyalty"] or {}).items() if k != "errors"}
            contents[cell["cell_key"]] = (cell["status"], json.dumps(cell["scores"], sort_keys=True), json.dumps(loyal, sort_keys=True), sorted(rows))
        return contents
    finally:
        store.close()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run(_config(out))
    return _contents(out)


class Recorder:
    """A SweepProgress that keeps what it was told."""

    def __init__(self, on_start=None):
        self.started, self.finished, self.requeued, self.samples, self.lines = [], [], [], {}, []
        self.on_start = on_start

    def start(self, total_cells, already_done=0):
        self.total = (total_cells, already_done)

    def cell_started(self, cell_id, label, n_samples):
        self.started.append((cell_id, n_samples))
        self.samples[cell_id] = 0
        if self.on_start:
            self.on_start(self)

    def samples_done(self, cell_id, n):
        self.samples[cell_id] += n

    def cell_finished(self, cell_id, line):
        self.finished.append(cell_id)

    def cell_requeued(self, cell_id, reason):
        self.requeued.append((cell_id, reason))

    def message(self, line):
        self.lines.append(line)

    def close(self):
        pass


def test_ray_sweep_stores_what_the_in_process_sweep_stores(local_ray, in_process, tmp_path):
    rec = Recorder()
    run(_config(tmp_path, executor="ray", ray_workers=2), progress=rec)
    assert _contents(tmp_path) == in_process
    assert len(in_process) == len(SETTINGS) * len(TASKS)
    # each cell's samples reached the driver's progress from the worker that computed it
    assert sorted(rec.finished) == sorted(in_process) and all(rec.samples[k] == n for k, n in rec.started)
    # the baseline of a task finished before any setting compared with it started
    order = [k for k, _ in rec.started]
    for task in TASKS:
        base = next(k for k in in_process if json.loads(k)["task"] == task and json.loads(k)["setting"] == "none")
        others = [k for k in in_process if json.loads(k)["task"] == task and k != base]
        assert all(rec.finished.index(base) < order.index(k) for k in others)
    # two workers, each its own timing session
    sessions = {c["efficiency"]["timing_session"] for c in json.loads((tmp_path / "results.json").read_text())["cells"]}
    assert len(sessions) == 2


def _kill_a_busy_worker(rec) -> None:
    """SIGKILL the first Ray worker seen computing a cell (its process title is
    ``ray::_Worker.run`` while it does); once."""
    if rec.requeued or getattr(rec, "killed", None):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::_Worker.run"):
                os.kill(proc.pid, signal.SIGKILL)
                rec.killed = proc.pid
                return
        time.sleep(0.02)
    pytest.fail("no Ray worker was seen computing a cell")


def test_a_killed_worker_loses_only_its_cell_which_runs_again(local_ray, in_process, tmp_path):
    rec = Recorder(on_start=lambda r: len(r.started) == 3 and _kill_a_busy_worker(r))
    run(_config(tmp_path, executor="ray", ray_workers=2), progress=rec)
    assert rec.killed and len(rec.requeued) == 1
    assert _contents(tmp_path) == in_process  # nothing lost, nothing computed twice into the store


def test_resume_on_ray_computes_only_the_missing_cells(local_ray, in_process, tmp_path):
    first = _config(tmp_path)
    first.settings = SETTINGS[:2]
    run(first)
    rec = Recorder()
    run(_config(tmp_path, executor="ray", ray_workers=2), progress=rec)
    assert rec.total == (len(SETTINGS) * len(TASKS), 2 * len(TASKS))
    assert len(rec.started) == (len(SETTINGS) - 2) * len(TASKS)
    assert _contents(tmp_path) == in_process


def test_the_default_path_never_imports_ray(tmp_path):
    code = (
        "import sys; from vlmcompress.runner import RunConfig, run; "
        f"run(RunConfig(tasks=['synth_count'], settings=['none'], limit=2, output={str(tmp_path)!r})); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_ray_knobs_are_checked_before_any_work(tmp_path):
    from vlmcompress.errors import ConfigError

    for bad, words in (
        ({"executor": "spark"}, "executor='spark' is not allowed; allowed: local, ray"),
        ({"executor": "ray", "cpus_per_cell": 0}, "cpus_per_cell must be a number above 0"),
        ({"executor": "ray", "gpus_per_cell": -1}, "gpus_per_cell must be a number from 0"),
        ({"ray_address": "auto"}, "need executor=ray"),
        ({"executor": "ray", "ray_workers": 0}, "ray_workers must be a positive integer"),
    ):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            run(_config(tmp_path / "x", **bad))
        assert not (tmp_path / "x").exists()


def test_more_gpus_per_cell_than_the_cluster_has_is_one_line(local_ray, tmp_path):
    from vlmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gpus_per_cell=1: the Ray cluster has 0 GPU"):
        run(_config(tmp_path, executor="ray", gpus_per_cell=1))
