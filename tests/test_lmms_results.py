"""results.json carries the block lmms-eval's readers expect (field names as lmms-eval 0.7.3's
evaluator and tracker write them), and the export writes lmms-eval-style folders."""

import json

import pytest

from vlmcompress.runner.lmms_results import export_lmms_eval, lmms_blocks, sample_log

# the keys lmms-eval 0.7.3's evaluator.evaluate returns (results_dict) and its tracker adds
LMMS_TOP_KEYS = {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "git_hash", "date"}
LMMS_SAMPLE_KEYS = {"doc_id", "target", "arguments", "resps", "filtered_resps", "doc_hash"}


def _cell(setting, task, scores, ci, primary, n=5):
    return {
        "cell_key": f"{setting}|{task}", "model": "m", "setting": setting, "task": task, "primary_metric": primary,
        "n": n, "n_errors": 1, "scores": scores, "scores_ci": {primary: ci},
    }


def test_block_has_lmms_eval_field_names_and_values():
    cells = [
        _cell("none", "pope", {"pope_f1_score": 0.8, "pope_accuracy": 0.75}, [0.7, 0.9], "pope_f1_score"),
        _cell("none", "textvqa_val", {"exact_match": 0.5}, [0.3, 0.7], "exact_match"),
        _cell("rtn(bits=4)", "pope", {"pope_f1_score": 0.6, "pope_accuracy": 0.6}, [0.5, 0.7], "pope_f1_score"),
    ]
    blocks = lmms_blocks(cells, {"config": {"batch_size": 4, "limit": 5}, "date": "2026-12-04T17:00:00+00:00", "git_hash": "abc1234"})
    assert set(blocks["m"]) == {"none", "rtn(bits=4)"}
    block = blocks["m"]["none"]
    assert LMMS_TOP_KEYS <= set(block)
    pope = block["results"]["pope"]
    assert pope["alias"] == "pope"
    assert pope["pope_f1_score,none"] == 0.8 and pope["pope_accuracy,none"] == 0.75
    assert pope["pope_f1_score_stderr,none"] == pytest.approx(0.2 / 3.92)  # from the 95% interval
    assert pope["pope_accuracy_stderr,none"] == "N/A"
    assert block["configs"]["pope"]["dataset_path"] == "lmms-lab-encoder/POPE" and block["configs"]["pope"]["test_split"] == "test"
    assert {"metric": "pope_f1_score"} in block["configs"]["pope"]["metric_list"]
    assert block["n-samples"]["pope"] == {"original": 6, "effective": 5}
    assert block["versions"]["textvqa_val"] == "Yaml" and block["n-shot"]["textvqa_val"] == 0
    assert block["config"]["limit"] == 5 and block["git_hash"] == "abc1234"


def test_sample_log_fields_and_export(tmp_path):
    row = {"sample_id": "pope/3", "prediction": "yes", "gold": "no", "score": 0.0, "error": None, "meta": {"doc_id": 3}, "stats": {"kv_bytes": 10},
           "metrics": {"pope_accuracy": {"score": 0.0, "prediction": "yes", "ground_truth": "no"}}}
    log = sample_log(row, "pope")
    assert LMMS_SAMPLE_KEYS <= set(log)
    assert log["doc_id"] == 3 and log["resps"] == [["yes"]] and log["filtered_resps"] == ["yes"] and log["target"] == "no"
    assert log["pope_accuracy"]["ground_truth"] == "no"  # the metric values, as lmms-eval logs them
    cells = [_cell("none", "pope", {"pope_f1_score": 0.8}, [0.7, 0.9], "pope_f1_score")]
    written = export_lmms_eval(cells, {"none|pope": [row]}, {"date": "2026-12-04T17:00:00"}, tmp_path)
    assert len(written) == 1 and written[0].name == "2026-12-04T17-00-00_results.json"
    assert LMMS_TOP_KEYS <= set(json.loads(written[0].read_text()))
    samples = written[0].parent / "2026-12-04T17-00-00_samples_pope.jsonl"
    assert json.loads(samples.read_text().splitlines()[0])["doc_id"] == 3
