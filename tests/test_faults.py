"""Fault injection (seeded, CI-sized): a sweep SIGKILLed at random moments and restarted until
it completes ends with the store of an uninterrupted run; cells that raise (an injected
error, NaN logits, out-of-memory errors) are recorded while the others finish; a full disk
stops a run with one line, leaves the store readable, and a later run resumes.

The kills: an uninterrupted ``python -m vlmcompress.cli run`` gives the reference.  The
killed runs are forked from a server process that has imported the CLI, torch and
transformers once (a cold start costs seconds, so twenty of them would not fit a CI
budget); each child runs the CLI's ``main`` on the same arguments, with stdout and
stderr to a file, and is SIGKILLed after a seeded random delay unless it finished.
``FAULTS_SEED`` and ``FAULTS_KILLS`` in the environment change the seed and the number of
kills."""

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from click.testing import CliRunner

from vlmcompress.cli import cli
from vlmcompress.methods import METHODS, CompressionMethod
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store

SEED = int(os.environ.get("FAULTS_SEED", "20240611"))
KILLS = int(os.environ.get("FAULTS_KILLS", "20"))
TASKS = "synth_count,synth_exists"
SETTING = "kivi(bits=4,group=16,residual=16)"


# ----------------------------------------------------------------------------- what a store holds
def store_content(out: Path) -> dict:
    """Everything a run computes, without what depends on the clock: cells (key, status,
    n, errors, scores, intervals, loyalty) and every sample row."""
    db = sqlite3.connect(out / "results.sqlite")
    try:
        cells = {
            key: (status, n, n_errors, scores, ci, loyalty)
            for key, status, n, n_errors, scores, ci, loyalty in db.execute("SELECT cell_key, status, n, n_errors, scores, scores_ci, loyalty FROM cells")
        }
        rows = sorted(db.execute("SELECT cell_key, sample_id, prediction, gold, score, error, metrics, meta FROM samples"))
    finally:
        db.close()
    return {"cells": cells, "rows": rows}


def jsonl_rows(out: Path) -> list:
    lines = (out / "samples.jsonl").read_text().splitlines()
    return sorted((r["setting"], r["task"], r["sample_id"], r["prediction"], r["score"]) for r in map(json.loads, lines))


def assert_same_run(out: Path, reference: Path) -> None:
    got, want = store_content(out), store_content(reference)
    assert got["cells"] == want["cells"]
    assert got["rows"] == want["rows"]  # same predictions and scores, no duplicate, none lost
    assert jsonl_rows(out) == jsonl_rows(reference)
    assert len(set(jsonl_rows(out))) == len(jsonl_rows(out))
    results = json.loads((out / "results.json").read_text())
    assert sorted((c["setting"], c["task"], c["n"], json.dumps(c["scores"])) for c in results["cells"]) == sorted(
        (c["setting"], c["task"], c["n"], json.dumps(c["scores"])) for c in json.loads((reference / "results.json").read_text())["cells"]
    )
    assert not list(out.glob(".vlmc-*.tmp"))


# ----------------------------------------------------------------------------- the kills
SERVER = textwrap.dedent(
    """
    import json, os, signal, sys, time, traceback
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    torch.set_num_threads(1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration
    import vlmcompress.cli, vlmcompress.runner.runner, vlmcompress.report.html, vlmcompress.report.markdown
    from vlmcompress.methods import METHODS  # every method registered
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        started, wall = time.monotonic(), time.time()
        pid = os.fork()
        if pid == 0:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                vlmcompress.cli.cli.main(args=req["args"], prog_name="vlmcompress")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        killed = False
        deadline = started + (req["kill_after"] if req["kill_after"] is not None else 240.0)  # a hung run is killed too
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"pid": pid, "killed": killed, "rc": rc, "elapsed": time.monotonic() - started, "wall": wall}), flush=True)
    """
)


class ForkServer:
    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, args: list[str], log: Path, kill_after: float | None) -> dict:
        self.proc.stdin.write(json.dumps({"args": [str(a) for a in args], "log": str(log), "kill_after": kill_after}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _args(model_dir: Path, out: Path) -> list:
    return ["run", "--model", model_dir, "--tasks", TASKS, "--compress", SETTING, "--limit", 4, "--batch-size", 2, "--seed", 7, "--output", out]


def test_a_sweep_killed_at_random_moments_ends_as_an_uninterrupted_one(tiny_llava_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    proc = subprocess.run([sys.executable, "-m", "vlmcompress.cli", *map(str, _args(tiny_llava_dir, reference))], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(store_content(reference)["cells"]) == 4

    rng = random.Random(SEED)
    server = ForkServer(tmp_path)
    try:
        # one forked run without a kill: the same store, and how long a whole run takes
        whole = server.run(_args(tiny_llava_dir, tmp_path / "forked"), tmp_path / "forked.log", None)
        assert whole["rc"] == 0, (tmp_path / "forked.log").read_text()
        assert_same_run(tmp_path / "forked", reference)
        span = whole["elapsed"]
        # kills from half the time to the first stored cell (model loading, samples) to the end
        db = sqlite3.connect(tmp_path / "forked" / "results.sqlite")
        first_cell = min(t for (t,) in db.execute("SELECT finished FROM cells")) - whole["wall"]
        db.close()
        low = max(0.0, min(0.5 * first_cell, 0.5 * span))
        kills = restarts = episodes = 0
        landed_after_a_cell = 0
        while kills < KILLS:
            out = tmp_path / f"episode{episodes}"
            for _ in range(40):  # restart until the sweep completes
                before = len(store_content(out)["cells"]) if (out / "results.sqlite").exists() else 0
                res = server.run(_args(tiny_llava_dir, out), tmp_path / f"ep{episodes}-{restarts}.log", rng.uniform(low, span))
                restarts += 1
                if res["killed"]:
                    kills += 1
                    if (out / "results.sqlite").exists() and len(store_content(out)["cells"]) > before:
                        landed_after_a_cell += 1
                    continue
                assert res["rc"] == 0, (tmp_path / f"ep{episodes}-{restarts - 1}.log").read_text()
                break
            else:
                raise AssertionError(f"sweep {episodes} never completed in 40 starts")
            assert_same_run(out, reference)
            episodes += 1
    finally:
        server.close()
    print(f"\nkills survived: {kills}/{kills} in {episodes} sweeps ({restarts} starts; {landed_after_a_cell} kills after a cell was stored; seed {SEED})")
    assert kills >= KILLS and episodes >= 2


# ----------------------------------------------------------------------------- cells that raise
@METHODS.register
@dataclass
class _Raises(CompressionMethod):
    """Test-only: every batch raises (``where=cache``) or ``prepare`` raises (``where=prepare``)."""

    name = "fault_raise"
    hook = "attention"
    kind: str = "runtime"  # runtime, oom (torch.cuda.OutOfMemoryError), memory (MemoryError)
    where: str = "cache"

    def _raise(self):
        if self.kind == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fault injected)")
        if self.kind == "memory":
            raise MemoryError("fault injected")
        raise RuntimeError("fault injected")

    def prepare(self, ctx):
        if self.where == "prepare":
            self._raise()

    def make_cache(self, ctx, batch):
        if self.where == "cache":
            self._raise()


@METHODS.register
@dataclass
class _PoisonLogits(CompressionMethod):
    """Test-only: the language model head returns NaN (for every sample, or only in batches
    holding the sample whose prompt contains ``only``)."""

    name = "fault_nan"
    hook = "attention"
    only: str = ""

    def prepare(self, ctx):
        self._poison = [False]
        head = ctx.model.get_output_embeddings()
        self._handle = head.register_forward_hook(lambda m, a, out: out * float("nan") if self._poison[0] else None)

    def make_cache(self, ctx, batch):
        if self.only:
            from vlmcompress.tasks.scoring import normalize_answer

            texts = ctx.processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
            self._poison[0] = any(normalize_answer(self.only) in normalize_answer(t) for t in texts)
        else:
            self._poison[0] = True

    def remove(self, ctx):
        if getattr(self, "_handle", None) is not None:
            self._handle.remove()
            self._handle = None


def test_cells_that_raise_are_recorded_and_the_others_finish(tiny_llava_dir, tmp_path):
    from vlmcompress.tasks import TASKS as REG

    samples = REG.get("synth_count").samples(7, 4)
    victim = next(s for s in samples if sum(o.question == s.question for o in samples) == 1)
    faults = [
        "fault_raise(kind=runtime,where=cache)",
        "fault_raise(kind=runtime,where=prepare)",
        "fault_raise(kind=oom,where=prepare)",
        "fault_raise(kind=oom,where=cache)",
        "fault_raise(kind=memory,where=cache)",
        "fault_nan",
    ]
    partial = f"fault_nan(only='{victim.question}')"
    cfg = RunConfig(model=str(tiny_llava_dir), tasks=TASKS.split(","), limit=4, batch_size=2, seed=7, output=str(tmp_path / "o"), settings=[*faults, partial, SETTING])
    res = run(cfg)
    failed = {(f["setting"], f["task"]): f["error"] for f in res["failed_cells"]}
    assert set(failed) == {(s, t) for s in faults for t in TASKS.split(",")}
    for (setting, _), error in failed.items():
        assert "\n" not in error and len(error) < 400
        word = {"runtime": "RuntimeError", "oom": "OutOfMemoryError", "memory": "MemoryError"}.get(setting.split("kind=")[-1].split(",")[0], "non-finite logits")
        assert word in error, (setting, error)
    cells = {(c["setting"], c["task"]): c for c in res["cells"]}
    # the others finished, and match a run without the faults
    clean = run(RunConfig(model=str(tiny_llava_dir), tasks=TASKS.split(","), limit=4, batch_size=2, seed=7, output=str(tmp_path / "clean"), settings=[SETTING]))
    for c in clean["cells"]:
        assert cells[(c["setting"], c["task"])]["scores"] == c["scores"] and cells[(c["setting"], c["task"])]["status"] == "complete"
    # NaN logits in one sample's batch: that sample is an error, the rest are scored
    p = cells[(partial, "synth_count")]
    assert (p["status"], p["n"], p["n_errors"]) == ("partial", 3, 1)
    assert "non-finite logits" in p["loyalty_detail"]["errors"][0] and p["loyalty_detail"]["errors"][0].startswith(victim.id)
    assert cells[(partial, "synth_exists")]["status"] == "complete"
    print(f"\nfaults injected: {len(faults) * 2 + 1} cells (6 kinds), survived: all recorded, {len(res['cells'])} cells finished")


# ----------------------------------------------------------------------------- a full disk
def _small_disk(path: Path):
    """A 2 MiB file system at ``path`` (tmpfs; root only), or None."""
    path.mkdir()
    if os.geteuid() != 0:
        return None
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True).returncode != 0:
        return None
    return lambda: subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes free (as statvfs counts them)."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        while True:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(free - leave, 1 << 16))
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def _cli_run(model_dir: Path, out: Path, settings: list[str]):
    args = ["run", "--model", str(model_dir), "--tasks", TASKS, "--limit", "4", "--batch-size", "2", "--seed", "7", "--output", str(out)]
    for s in settings or ["none"]:
        args += ["--compress", s]
    return CliRunner().invoke(cli, args)


def _readable(out: Path) -> int:
    store = Store(out / "results.sqlite")
    try:
        cells = store.cells()
        for c in cells:
            store.samples(c["cell_key"])
        return len(cells)
    finally:
        store.close()


class _DiskFillsWhileAppending:
    """Stands for ``os`` in the output writer: the first write of sample lines lands half
    its bytes, then the disk is full (ENOSPC)."""

    def __init__(self) -> None:
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if bytes(data[:9]) == b'{"model":':
            self.full = True
            return os.write(fd, bytes(data[: max(1, len(data) // 2)]))
        return os.write(fd, data)


def test_a_full_disk_is_one_line_and_a_later_run_resumes(tiny_llava_dir, tmp_path, monkeypatch):
    from vlmcompress.runner import outputs

    reference = tmp_path / "reference"
    assert _cli_run(tiny_llava_dir, reference, [SETTING, "fault_nan(only='zzz')"]).exit_code == 0
    disk = tmp_path / "disk"
    undo = _small_disk(disk)
    # a real 2 MiB file system filled to none, a third and two thirds of what the rest of
    # the run writes (else SQLite's "disk is full" simulated), then samples.jsonl's append
    cases = [("tmpfs" if undo else "sqlite", i) for i in range(3)] + [("append", 3)]
    survived = []
    try:
        for how, i in cases:
            out = disk / f"o{i}"
            res = _cli_run(tiny_llava_dir, out, [])  # the baseline cells
            assert res.exit_code == 0, res.output
            jsonl_before = jsonl_rows(out)
            if how == "tmpfs":
                filler = _fill(disk, i * max(0, _bytes(reference) - _bytes(out)) // 3)
            elif how == "sqlite":
                count = {"n": 0}
                real = Store._position

                def full(self, key, _real=real, _count=count, _after=i):
                    _count["n"] += 1
                    if _count["n"] > _after:
                        raise sqlite3.OperationalError("database or disk is full")
                    return _real(self, key)

                monkeypatch.setattr(Store, "_position", full)
            else:
                monkeypatch.setattr(outputs, "os", _DiskFillsWhileAppending())
            res = _cli_run(tiny_llava_dir, out, [SETTING, "fault_nan(only='zzz')"])
            assert res.exit_code == 2, res.output
            lines = [line for line in res.output.splitlines() if line.startswith("error:")]
            assert len(lines) == 1 and "Traceback" not in res.output, res.output
            assert "No space left on device" in lines[0] or "disk is full" in lines[0], lines[0]
            assert _readable(out) >= 2  # every cell written before the disk filled
            if how == "append":  # the half-written lines were cut back: every line whole
                assert jsonl_rows(out) == jsonl_before
            if how == "tmpfs":
                filler.unlink()
            else:
                monkeypatch.undo()
            res = _cli_run(tiny_llava_dir, out, [SETTING, "fault_nan(only='zzz')"])
            assert res.exit_code == 0, res.output
            assert_same_run(out, reference)
            survived.append(f"{how}: " + lines[0].split("error: ")[-1].split(": ")[0][:30] + " … " + lines[0].split("': ")[-1][:30])
    finally:
        if undo:
            undo()
    print(f"\nfull disk: {len(survived)}/{len(cases)} survived: {survived}")
