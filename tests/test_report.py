import json

from vlmcompress.report.html import render_html
from vlmcompress.report.markdown import render_markdown
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store
from vlmcompress.runner.outputs import write_outputs

EVIL = "<script>alert('x')</script>&"


def _cells():
    base = {"model": "m", "setting": "none", "task": "t", "n": 4, "scores": {"accuracy": 1.0}, "scores_ci": {"accuracy": [1.0, 1.0]},
            "loyalty": 1.0, "loyalty_detail": {"mcnemar_p": 1.0}, "efficiency": {"weight_bytes": 4 * 2**20, "kv_bytes": 1024, "prefill_s": 0.2, "decode_s_per_token": 0.01}}
    comp = {**base, "setting": f"x(a={EVIL})", "scores": {"accuracy": 0.5}, "scores_ci": {"accuracy": [0.1, 0.9]}, "loyalty": 0.5,
            "loyalty_detail": {"mcnemar_p": 0.01}, "efficiency": {"weight_bytes": 2**20, "kv_bytes": 512, "prefill_s": 0.1, "decode_s_per_token": 0.01}}
    return {"config": {"seed": 1}, "versions": {}, "date": "d", "cells": [base, comp]}


def test_html_escapes_every_model_and_user_string():
    results = _cells()
    page = render_html(results, {("m", results["cells"][1]["setting"], "t"): [{"sample_id": "s1", "prediction": EVIL, "baseline": "ok", "gold": EVIL}]})
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;") == 4  # setting (twice), prediction, gold
    assert "class='bad'" in page  # significant drop is marked
    assert "data:image/png;base64," in page  # the Pareto plot


def test_markdown_reports_op_speedup_and_escapes_table_breakers():
    results = _cells()
    results["cells"][1]["setting"] = "a|b"
    md = render_markdown(results)
    assert "a\\|b" in md
    # OP of the compressed row: sqrt(0.5^2) = 0.5; prefill speed-up 0.2 / 0.1 = 2x; significant drop starred
    row = next(l for l in md.splitlines() if l.startswith("| `a\\|b`") and "[" in l)
    assert "0.500*" in row and row.rstrip().endswith("| 0.500 | – | 0.500 |")  # OP, OG (one task: none), loyalty
    assert "(2.00×)" in md


def test_run_writes_an_html_report_with_escaped_predictions(tiny_llava_dir, tmp_path):
    run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=3, batch_size=3, output=str(tmp_path), settings=["none"]))
    store = Store(tmp_path / "results.sqlite")
    key = store.cells()[0]["cell_key"]
    store.db.execute("UPDATE samples SET prediction = ? WHERE cell_key = ?", (EVIL, key))
    store.db.commit()
    write_outputs(tmp_path, store, {})
    store.close()
    page = (tmp_path / "report.html").read_text()
    assert (tmp_path / "report.html").exists() and "<script>" not in page
    assert json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])["prediction"] == EVIL
