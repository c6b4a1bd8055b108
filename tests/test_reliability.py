"""Nothing lost, nothing mislabelled: one output folder per process, atomic writes under
unique names, partial cells retried sample by sample, failed cells recorded (and retried on
request), YAML and spec size limits, and every user-side problem as one line with status 2."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from vlmcompress.cli import cli
from vlmcompress.errors import ConfigError
from vlmcompress.eval import loop as eval_loop
from vlmcompress.methods import METHODS, CompressionMethod, build_setting
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store
from vlmcompress.tasks import TASKS


@METHODS.register
@dataclass
class _PrepareRaises(CompressionMethod):
    """Test-only: ``prepare`` raises while ``broken`` is set."""

    name = "test_prepare_raises"
    hook = "attention"
    tag: int = 0
    broken: ClassVar[bool] = True

    def prepare(self, ctx):
        if type(self).broken:
            raise RuntimeError("injected failure in prepare\nsecond line of the message")


@METHODS.register
@dataclass
class _Blank(CompressionMethod):
    """Test-only: a constant image (answers change, predictably)."""

    name = "test_rel_blank"
    hook = "vision"
    value: float = 0.5

    def make_cache(self, ctx, batch):
        batch["pixel_values"].fill_(self.value)


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error_line(res, fragment=None):
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.output
    if fragment is not None:
        assert fragment in lines[0], res.output
    return lines[0]


def _cells(out):
    store = Store(out / "results.sqlite")
    try:
        return {(c["setting"], c["task"]): c for c in store.cells()}, {c["cell_key"]: store.samples(c["cell_key"]) for c in store.cells()}
    finally:
        store.close()


# ----------------------------------------------------------------------------- one run per output folder
def test_a_second_process_on_the_same_output_is_refused_naming_the_holder(tiny_llava_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _invoke(["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", out])
        assert res.exit_code == 2
        line = _one_error_line(res, f"PID {holder.pid}")
        assert "--wait" in line
        res = _invoke(["report", out])
        assert res.exit_code == 2  # a report would rewrite the files the run is writing
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "results.sqlite").exists()  # the refused run wrote nothing


def test_wait_takes_the_folder_when_the_holder_lets_go(tiny_llava_dir, tmp_path):
    from vlmcompress.errors import OutputBusyError
    from vlmcompress.runner.outputs import OutputLock

    out = tmp_path / "o"
    out.mkdir()
    lock = OutputLock(out).acquire()
    cfg = RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=2, batch_size=2, output=str(out), settings=["none"])
    with pytest.raises(OutputBusyError, match=f"PID {os.getpid()}"):
        run(cfg)
    timer = threading.Timer(1.0, lock.release)
    started = time.monotonic()
    timer.start()
    said = []
    res = run(cfg, wait=True, echo=said.append)
    assert time.monotonic() - started >= 0.9
    assert any("waiting for PID" in s for s in said)
    assert len(res["cells"]) == 1
    assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_atomic_writes_use_unique_temporary_names(tiny_llava_dir, tmp_path):
    """A fixed `results.json.tmp` collides with whatever holds that name (another writer, a
    leftover): here a folder, which made every render fail."""
    out = tmp_path / "o"
    out.mkdir()
    for name in ("results.json.tmp", "report.md.tmp", "samples.jsonl.tmp"):
        (out / name).mkdir()
    (out / ".vlmc-results.json.stale.tmp").write_text("left by a killed writer")
    res = run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=2, batch_size=2, output=str(out), settings=["none"]))
    assert json.loads((out / "results.json").read_text()) == res
    assert not list(out.glob(".vlmc-*.tmp"))  # the lock holder swept the leftovers
    assert oct((out / "results.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- partial and failed cells
def test_a_partial_cell_is_retried_sample_by_sample_and_its_dependents_relinked(tiny_llava_dir, tmp_path, monkeypatch):
    samples = TASKS.get("synth_attribute").samples(1234, 8)
    victim = samples[5]
    real_generate = eval_loop.generate_batch

    def flaky(ctx, methods, batch, *a, **k):
        if not methods and any(s.id == victim.id for s in batch):  # the baseline's batch holding the victim
            raise RuntimeError("transient failure")
        return real_generate(ctx, methods, batch, *a, **k)

    cfg = dict(model=str(tiny_llava_dir), tasks=["synth_attribute"], limit=8, batch_size=4, settings=["test_rel_blank(value=0.5)"])
    monkeypatch.setattr(eval_loop, "generate_batch", flaky)
    first = run(RunConfig(output=str(tmp_path / "o"), **cfg))
    monkeypatch.setattr(eval_loop, "generate_batch", real_generate)
    base1 = next(c for c in first["cells"] if c["setting"] == "none")
    comp1 = next(c for c in first["cells"] if c["setting"] != "none")
    assert (base1["status"], base1["n"], base1["n_errors"]) == ("partial", 7, 1)
    assert comp1["status"] == "complete" and comp1["loyalty_detail"]["n_paired"] == 7
    cells1, rows1 = _cells(tmp_path / "o")
    assert cells1[("none", "synth_attribute")]["status"] == "partial"

    calls = []
    real_eval = eval_loop.evaluate_cell

    def counting(ctx, methods, task, samples_, *a, **k):
        calls.append([s.id for s in samples_])
        return real_eval(ctx, methods, task, samples_, *a, **k)

    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", counting)
    second = run(RunConfig(output=str(tmp_path / "o"), **cfg))
    assert calls == [[victim.id]]  # only the failed sample, and no other cell
    cells2, rows2 = _cells(tmp_path / "o")
    base_key = cells2[("none", "synth_attribute")]["cell_key"]
    kept = {r["sample_id"]: r for r in rows1[base_key] if r["error"] is None}
    assert all(r == kept[r["sample_id"]] for r in rows2[base_key] if r["sample_id"] != victim.id)  # good rows kept
    base2 = next(c for c in second["cells"] if c["setting"] == "none")
    comp2 = next(c for c in second["cells"] if c["setting"] != "none")
    assert (base2["status"], base2["n"], base2["n_errors"]) == ("complete", 8, 0)
    assert base2["efficiency"]["retried_samples"] == 1
    # the retried cell keeps the session its timing came from
    assert base2["efficiency"]["timing_session"] == base1["efficiency"]["timing_session"]
    assert comp2["loyalty_detail"]["n_paired"] == 8  # re-linked to the completed baseline

    fresh = run(RunConfig(output=str(tmp_path / "fresh"), **cfg))
    for a, b in zip(sorted(second["cells"], key=lambda c: c["setting"]), sorted(fresh["cells"], key=lambda c: c["setting"])):
        assert (a["scores"], a["n"], a["loyalty"], a["loyalty_detail"]["n_paired"]) == (b["scores"], b["n"], b["loyalty"], b["loyalty_detail"]["n_paired"])
    lines = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    ids = [(r["setting"], r["task"], r["sample_id"]) for r in lines]
    assert len(ids) == len(set(ids)) == 16  # no duplicate, none lost


def test_a_cell_that_raises_is_recorded_and_the_others_finish(tiny_llava_dir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    cfg = dict(model=str(tiny_llava_dir), tasks=["synth_count", "synth_exists"], limit=3, batch_size=3, output=str(out), settings=["test_prepare_raises", "test_rel_blank(value=0.5)"])
    monkeypatch.setattr(_PrepareRaises, "broken", True)
    res = run(RunConfig(**cfg))
    assert {(c["setting"], c["task"]) for c in res["cells"]} == {(s, t) for s in ("none", "test_rel_blank(value=0.5)") for t in ("synth_count", "synth_exists")}
    assert [(f["setting"], f["task"]) for f in res["failed_cells"]] == [("test_prepare_raises", "synth_count"), ("test_prepare_raises", "synth_exists")]
    err = res["failed_cells"][0]["error"]
    assert err.startswith("prepare: RuntimeError: injected failure in prepare") and "\n" not in err
    cells, _ = _cells(out)
    assert cells[("test_prepare_raises", "synth_count")]["status"] == "failed"

    # the CLI finishes the sweep, then says so in one line, status 3
    res = _invoke(["run", "--model", tiny_llava_dir, "--tasks", "synth_count,synth_exists", "--limit", 3, "--batch-size", 3, "--output", out, "--compress", "test_prepare_raises", "--compress", "test_rel_blank(value=0.5)"])
    assert res.exit_code == 3, res.output
    assert "failed in an earlier run" in res.output and "--retry-failed" in _one_error_line(res, "2 cell(s) failed")

    # fixed, and asked to: the failed cells are computed, nothing else
    monkeypatch.setattr(_PrepareRaises, "broken", False)
    calls = []
    real_eval = eval_loop.evaluate_cell
    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", lambda ctx, methods, *a, **k: calls.append([m.name for m in methods]) or real_eval(ctx, methods, *a, **k))
    assert run(RunConfig(**cfg))["failed_cells"]  # not without being asked
    assert calls == []
    res = run(RunConfig(**cfg), retry_failed=True)
    assert calls == [["test_prepare_raises"], ["test_prepare_raises"]]
    assert res["failed_cells"] == [] and len(res["cells"]) == 6
    assert [c["setting"] for c in res["cells"]][:2] == ["none", "none"]


def test_a_partial_cell_whose_retry_raises_is_kept(tiny_llava_dir, tmp_path, monkeypatch):
    victim = TASKS.get("synth_count").samples(1234, 4)[1]
    real_generate = eval_loop.generate_batch

    def flaky(ctx, methods, batch, *a, **k):
        if methods and any(s.id == victim.id for s in batch):
            raise RuntimeError("transient failure")
        return real_generate(ctx, methods, batch, *a, **k)

    cfg = RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=4, batch_size=2, output=str(tmp_path), settings=["test_prepare_raises(tag=1)"])
    monkeypatch.setattr(_PrepareRaises, "broken", False)
    monkeypatch.setattr(eval_loop, "generate_batch", flaky)
    run(cfg)
    before = _cells(tmp_path)
    key = before[0][("test_prepare_raises(tag=1)", "synth_count")]["cell_key"]
    assert before[0][("test_prepare_raises(tag=1)", "synth_count")]["status"] == "partial"
    monkeypatch.setattr(eval_loop, "generate_batch", real_generate)
    monkeypatch.setattr(_PrepareRaises, "broken", True)  # the retry's prepare raises
    said = []
    res = run(cfg, echo=said.append)
    assert any("the partial cell is kept" in line for line in said)
    after = _cells(tmp_path)
    assert after[1][key] == before[1][key] and after[0][("test_prepare_raises(tag=1)", "synth_count")]["status"] == "partial"
    assert res["failed_cells"] == []


def test_a_failed_baseline_computed_again_relinks_the_cells_compared_with_it(tiny_llava_dir, tmp_path, monkeypatch):
    real_generate = eval_loop.generate_batch

    def baseline_breaks(ctx, methods, batch, *a, **k):
        if not methods:
            raise RuntimeError("baseline broken")
        return real_generate(ctx, methods, batch, *a, **k)

    cfg = RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=4, batch_size=2, output=str(tmp_path), settings=["test_rel_blank(value=0.5)"])
    monkeypatch.setattr(eval_loop, "generate_batch", baseline_breaks)
    first = run(cfg)
    (failed,) = first["failed_cells"]  # every baseline sample errored: the cell failed
    assert failed["setting"] == "none" and "RuntimeError: baseline broken" in failed["error"] and failed["n_errors"] == 4
    assert "n_paired" not in first["cells"][0]["loyalty_detail"]  # nothing to compare with
    monkeypatch.setattr(eval_loop, "generate_batch", real_generate)
    second = run(cfg, retry_failed=True)
    assert second["failed_cells"] == []
    comp = next(c for c in second["cells"] if c["setting"] != "none")
    assert comp["loyalty_detail"]["n_paired"] == 4


# ----------------------------------------------------------------------------- size and depth limits
ALIAS_BOMB = """model:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_refused_without_expanding(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 420
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as err:
            RunConfig.from_yaml(path).validate()  # (a run's to_dict() would expand every alias)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert elapsed < 2 and peak < 20e6, (elapsed, peak)
    assert "\n" not in msg and len(msg) < 300 and "expands to more than" in msg
    assert "&f [*e,*e" in msg  # the line where the limit is crossed, quoted


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: " + "[" * 200 + "]" * 200 + "\n", "nests deeper than"),
        ("tasks: &t [synth_count, *t]\n", "refers to the collection that contains it"),
        ("tasks: [" + "a," * 150_000 + "]\n", "expands to more than"),
        ("compress:\n" + "".join(f"  - rtn(bits={4 + i % 2},group_size=32)\n" for i in range(40_000)), "bytes; the limit is"),
    ],
)
def test_yaml_depth_and_size_limits(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=fragment) as err:
        RunConfig.from_yaml(path)
    assert time.perf_counter() - started < 5
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_a_setting_stacked_thousands_of_times_is_refused_quickly_in_one_line():
    for spec in ["rtn(bits=4)+" * 5000 + "kivi(bits=2)", [{"rtn": {"bits": 4}}] * 5000, "kivi(" + "bits=2," * 5000 + "bits=2)"]:
        started = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            build_setting(spec)
        assert time.perf_counter() - started < 0.5
        assert "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)[:400]
    with pytest.raises(ConfigError, match="single value"):
        build_setting([{"rtn": {"bits": [[4]]}}])


# ----------------------------------------------------------------------------- one line, status 2
def _yaml(tmp_path, text: bytes | str, name="c.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("tasks: 5\n", "tasks must be a list"),
        ("compress: 5\n", "compress must be a setting"),
        (b"model: \xff\xfe\n", "not UTF-8"),
        ("tasks: [[synth_count]]\n", "task name must be a string"),
        ("model: {a: b}\n", "model must be"),
        ("output: 5\n", "output must be"),
        ("device: [cuda]\n", "device="),
        ("1: 2\n", "unknown config key 1"),
        ("limit: 100000000000\n", "limit=100000000000 is above"),
        ("compress: [{rtn: {bits: 4}, kivi: {bits: 2}}]\n", "one-key mapping"),
        ("model: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_values_are_one_line(tmp_path, body, fragment):
    path = _yaml(tmp_path, body)
    res = _invoke(["run", path] + ([] if "output" in str(body) else ["--output", tmp_path / "o"]))
    assert res.exit_code == 2, res.output
    _one_error_line(res, fragment)


def test_compress_as_one_string_is_one_setting(tmp_path):
    cfg = RunConfig.from_yaml(_yaml(tmp_path, "compress: kivi(bits=2)\ntasks: synth_count\n"))
    assert cfg.settings == ["kivi(bits=2)"]
    assert [s.spec for s in cfg.validate()] == ["none", "kivi(bits=2)"]
    cfg = RunConfig.from_yaml(_yaml(tmp_path, "compress: {kivi: {bits: 2}}\n"))
    assert [s.normalized for s in cfg.validate()][1].startswith("kivi(")


def test_bad_flags_are_one_line(tiny_llava_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--seed", "-5"], "seed must be an integer from 0"),
        (["--seed", str(2**70)], "seed must be an integer from 0"),
        (["--limit", "abc"], "'--limit'"),
        (["--output", tmp_path / "afile"], "is a file, not a folder"),
        (["--output", tmp_path / "afile" / "sub" / "x"], "is a file, not a folder"),
        (["--device", "cuda:abc"], "device='cuda:abc'"),
        (["--compress", "kivi(bits=2)+" * 3000], "characters long"),
    ]
    if torch.cuda.device_count() < 10:
        cases.append((["--device", "cuda:9"], "device='cuda:9'"))
    for args, fragment in cases:
        full = ["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", tmp_path / "o", *args]
        if "--output" in args:
            del full[7:9]
        res = _invoke(full)
        assert res.exit_code == 2, (args, res.output)
        _one_error_line(res, fragment)


def _read_only_folder(tmp_path):
    """A folder this process cannot write: a read-only tmpfs when root (root ignores
    permission bits), else mode 0555.  None when neither can be had."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return ro, lambda: ro.chmod(0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode != 0:
        return None, None
    return ro, lambda: subprocess.run(["umount", str(ro)], check=False)


def test_a_read_only_output_is_one_line(tiny_llava_dir, tmp_path):
    ro, undo = _read_only_folder(tmp_path)
    if ro is None:
        pytest.skip("no read-only folder can be made here")
    try:
        for out in (ro, ro / "sub"):
            res = _invoke(["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", out])
            assert res.exit_code == 2, res.output
            _one_error_line(res, "Read-only file system" if os.geteuid() == 0 else "ermission denied")
    finally:
        undo()


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    from vlmcompress.models import EMBEDDED_PATH

    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_PATH, model)
    with open(model / "model.safetensors", "r+b") as f:
        f.truncate(100_000)
    res = _invoke(["run", "--model", model, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", tmp_path / "o"])
    assert res.exit_code == 2, res.output
    _one_error_line(res, "cannot load model")


@pytest.fixture
def finished_run(tiny_llava_dir, tmp_path):
    out = tmp_path / "o"
    res = _invoke(["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", out])
    assert res.exit_code == 0, res.output
    return out


def test_a_damaged_store_is_one_line_for_run_and_report(tiny_llava_dir, tmp_path, finished_run, monkeypatch):
    monkeypatch.setattr("vlmcompress.runner.worker.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    db = finished_run / "results.sqlite"
    for damage in (b"this is not a database at all" * 10, db.read_bytes()[:3000]):
        db.write_bytes(damage)
        for args in (["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", finished_run], ["report", finished_run]):
            res = _invoke(args)
            assert res.exit_code == 2, res.output
            _one_error_line(res, "results.sqlite")


def test_a_foreign_store_is_refused_before_any_cell(tiny_llava_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("vlmcompress.runner.worker.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for i, ddl in enumerate(["CREATE TABLE cells (foo INTEGER)", "CREATE TABLE users (name TEXT)", "PRAGMA application_id = 1234"]):
        out = tmp_path / f"o{i}"
        out.mkdir()
        db = sqlite3.connect(out / "results.sqlite")
        db.execute(ddl)
        db.execute("CREATE TABLE IF NOT EXISTS extra (x)")
        db.commit()
        db.close()
        before = (out / "results.sqlite").read_bytes()
        for args in (["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", out], ["report", out]):
            res = _invoke(args)
            assert res.exit_code == 2, res.output
            _one_error_line(res, "was not written by vlmcompress")
        assert (out / "results.sqlite").read_bytes() == before  # nothing written into it


def test_a_damaged_results_json_is_rewritten_or_one_line(tiny_llava_dir, finished_run):
    good = json.loads((finished_run / "results.json").read_text())
    (finished_run / "results.json").write_text('{"cells": [tru')
    res = _invoke(["report", finished_run])
    assert res.exit_code == 0, res.output
    assert json.loads((finished_run / "results.json").read_text())["cells"] == good["cells"]
    (finished_run / "results.json").write_text('{"cells": [tru')
    res = _invoke(["run", "--model", tiny_llava_dir, "--tasks", "synth_count", "--compress", "none", "--limit", 2, "--output", finished_run])
    assert res.exit_code == 0, res.output
    assert json.loads((finished_run / "results.json").read_text())["cells"] == good["cells"]
    # a store of an older run holds no config: then results.json is needed, and says so
    db = sqlite3.connect(finished_run / "results.sqlite")
    db.execute("DELETE FROM run_meta")
    db.commit()
    db.close()
    (finished_run / "results.json").write_bytes(b"\xff\xfe{")
    res = _invoke(["report", finished_run])
    assert res.exit_code == 2, res.output
    _one_error_line(res, "results.json")


def test_an_older_store_opens_and_its_errored_cells_become_partial(tmp_path):
    db = sqlite3.connect(tmp_path / "results.sqlite")
    db.executescript(
        "CREATE TABLE cells (cell_key TEXT PRIMARY KEY, model TEXT NOT NULL, setting TEXT NOT NULL, setting_normalized TEXT NOT NULL, task TEXT NOT NULL,"
        " n INTEGER NOT NULL, n_errors INTEGER NOT NULL, scores TEXT NOT NULL, scores_ci TEXT NOT NULL, loyalty TEXT, efficiency TEXT NOT NULL,"
        " finished REAL NOT NULL, position INTEGER NOT NULL);"
        "CREATE TABLE samples (cell_key TEXT NOT NULL, sample_id TEXT NOT NULL, prediction TEXT, gold TEXT, score REAL, error TEXT, meta TEXT, stats TEXT,"
        " PRIMARY KEY (cell_key, sample_id));"
        "INSERT INTO cells VALUES ('a', 'm', 'none', 'none', 't', 3, 1, '{}', '{}', NULL, '{}', 0, 0);"
        "INSERT INTO cells VALUES ('b', 'm', 'none', 'none', 'u', 4, 0, '{}', '{}', NULL, '{}', 0, 1);"
    )
    db.commit()
    db.close()
    store = Store(tmp_path / "results.sqlite")
    try:
        assert [(c["cell_key"], c["status"]) for c in store.cells()] == [("a", "partial"), ("b", "complete")]
    finally:
        store.close()


def test_the_same_task_twice_is_computed_once(tiny_llava_dir, tmp_path, monkeypatch):
    calls = []
    real_eval = eval_loop.evaluate_cell
    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", lambda ctx, m, task, *a, **k: calls.append(task.name) or real_eval(ctx, m, task, *a, **k))
    res = run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_count", "synth_count"], limit=2, batch_size=2, output=str(tmp_path), settings=["none"]))
    assert calls == ["synth_count"] and len(res["cells"]) == 1
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2
    c = RunConfig.from_yaml(_yaml(tmp_path, "tasks: [synth_count, synth_ocr, synth_count]\n"))
    c.validate()
    assert c.tasks == ["synth_count", "synth_ocr"]


def test_every_cell_records_its_timing_session(tiny_llava_dir, tmp_path):
    """Speed-ups are comparable only within one session: a resumed run's cells carry a
    different session than the baseline timed before the interruption."""
    cfg = dict(model=str(tiny_llava_dir), tasks=["synth_count"], limit=2, batch_size=2, output=str(tmp_path))
    first = run(RunConfig(settings=["none"], **cfg))
    second = run(RunConfig(settings=["test_rel_blank(value=0.5)"], **cfg))
    sessions = {c["setting"]: c["efficiency"]["timing_session"] for c in second["cells"]}
    assert sessions["none"] == first["cells"][0]["efficiency"]["timing_session"]
    assert sessions["test_rel_blank(value=0.5)"] != sessions["none"] and all(sessions.values())


# ----------------------------------------------------------------------------- training checkpoints
_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_a_training_checkpoint_is_loaded_without_running_its_code(tmp_path):
    from vlmcompress.embedded import training

    work = tmp_path / "work"
    work.mkdir()
    torch.save({"model": _Payload(), "step": 0, "elapsed_s": 0.0, "vision_acc": {}, "optimizer": None}, work / "checkpoint.pt")
    cfg = training.TrainConfig(decoder_hidden=32, decoder_layers=1, threads=1)
    with pytest.raises(Exception) as err:
        training.train(cfg, work, tmp_path / "out")
    assert _UNPICKLED == []  # weights_only=True: the payload's code never ran
    assert "weights" in str(err.value).lower() or "unpickl" in type(err.value).__name__.lower()
