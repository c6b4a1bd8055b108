from click.testing import CliRunner

from vlmcompress.cli import cli


def _run(args):
    return CliRunner().invoke(cli, args)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    cases = {
        ("run", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")): "does not exist",
        ("run", "--compress", "rtn(bits=4", "--output", str(tmp_path / "o")): "malformed compression spec",
        ("run", "--compress", "nosuchmethod", "--output", str(tmp_path / "o")): "unknown method 'nosuchmethod'",
        ("run", "--tasks", "nosuchtask", "--output", str(tmp_path / "o")): "unknown task 'nosuchtask'",
        ("report", str(tmp_path)): "no results.sqlite",
    }
    for args, fragment in cases.items():
        res = _run(list(args))
        assert res.exit_code == 2, (args, res.output)
        err_lines = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert len(err_lines) == 1 and fragment in err_lines[0], res.output
        assert "Traceback" not in res.output


def test_hub_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _run(["run", "--model", "someorg/some-model", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "cannot load model 'someorg/some-model'" in res.output and "Traceback" not in res.output


def test_run_and_report_on_a_tiny_model(tiny_llava_dir, tmp_path):
    out = tmp_path / "o"
    res = _run(["run", "--model", str(tiny_llava_dir), "--tasks", "synth_count", "--limit", "3", "--batch-size", "3", "--output", str(out), "--compress", "none"])
    assert res.exit_code == 0, res.output
    assert f"report: {out / 'report.md'}" in res.output
    (out / "report.md").unlink()
    res = _run(["report", str(out)])
    assert res.exit_code == 0 and (out / "report.md").exists()


def test_list_commands():
    assert "synth_ocr" in _run(["list", "tasks"]).output
    assert "qwen2_vl" in _run(["list", "models"]).output
    assert "none" in _run(["list", "methods"]).output
