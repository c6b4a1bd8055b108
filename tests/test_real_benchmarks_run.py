"""The embedded model end to end on two real-benchmark tasks read from local hub-layout
copies (the scores mean nothing; the path must work), and `vlmcompress score` on the run's
own samples.jsonl gives the run's numbers."""

import json

import pytest
from click.testing import CliRunner

from lmms_fixtures import write_fixture
from vlmcompress.cli import cli

pytestmark = pytest.mark.usefixtures("offline_datasets")

TASKS = ("pope", "textvqa_val")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for task in TASKS:
        write_fixture(task, root, n=6)
    return root


def test_embedded_model_runs_real_tasks_and_rescoring_reproduces_the_run(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--tasks", ",".join(TASKS), "--data-dir", str(data_dir), "--limit", "5", "--batch-size", "4", "--output", str(out), "--compress", "rtn(bits=4,group_size=64)+kivi(bits=2,group=16,residual=16)"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    cells = {(c["setting"], c["task"]): c for c in results["cells"]}
    assert len(cells) == 4  # baseline and one setting, two tasks
    for (setting, task), c in cells.items():
        assert c["n"] + c["n_errors"] == 5 and c["n_errors"] == 0, c
        assert c["primary_metric"] == {"pope": "pope_f1_score", "textvqa_val": "exact_match"}[task]
        assert c["primary_metric"] in c["scores"] and c["primary_metric"] in c["scores_ci"]
        if setting != "none":
            assert c["efficiency"]["kv_bytes"] < cells[("none", task)]["efficiency"]["kv_bytes"]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["meta"]["doc_id"] for r in rows if r["task"] == "pope" and r["setting"] == "none") == [0, 1, 2, 3, 4]
    for (setting, task), c in cells.items():
        scored = CliRunner().invoke(cli, ["score", task, str(out / "samples.jsonl"), "--data-dir", str(data_dir), "--setting", setting, "--json"])
        assert scored.exit_code == 0, scored.output
        assert json.loads(scored.output) == pytest.approx(c["scores"]), (setting, task)


def test_a_missing_local_copy_is_one_line_before_any_model_work(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, ["run", "--tasks", "pope", "--data-dir", str(empty), "--limit", "2", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error:") and "lmms-lab-encoder/POPE" in line and "huggingface-cli download" in line
