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


def test_summary_off_a_terminal_keeps_whole_setting_names_and_the_mean(capsys):
    from vlmcompress.cli import _print_summary

    long_setting = "awq(bits=4,group_size=64)+visionzip(ratio=0.4)+kivi(bits=2,group=32,residual=32)"

    def cell(setting, task, acc):
        return {"model": "m", "setting": setting, "task": task, "primary_metric": "accuracy", "scores": {"accuracy": acc}}

    results = {"cells": [cell("none", "synth_count", 1.0), cell("none", "synth_ocr", 0.5), cell(long_setting, "synth_count", 0.25)]}
    _print_summary(results)
    out = capsys.readouterr().out
    assert "…" not in out
    # the setting column folds long names onto several lines; joined back they are whole
    folded = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    assert long_setting in folded
    header = next(line for line in out.splitlines() if "setting" in line)
    assert "count" in header and "ocr" in header and "synth_" not in header  # shared prefix dropped
    none_row = next(line for line in out.splitlines() if line.startswith("│ none "))
    assert none_row.split("│")[-2].strip() == "0.750"  # mean of 1.0 and 0.5
    long_row = next(line for line in out.splitlines() if line.startswith("│ awq("))
    assert long_row.split("│")[-2].strip() == "0.250" and "–" in long_row  # ocr missing: dash, mean of what exists
