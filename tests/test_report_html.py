"""report.html and report.md: thumbnails and questions next to disagreements, the per-family
summary, scored/errored marks, Pareto plots only on axes that vary, escaping of backticks,
`$` and markup; and property-based fuzzing of both writers."""

import math
import re

import pytest

from vlmcompress.report.html import pareto_front, render_html
from vlmcompress.report.markdown import render_markdown
from vlmcompress.tasks import TASKS

SEED = 1234


def _cell(setting, task="synth_count", acc=1.0, n=4, n_errors=0, weight=4 * 2**20, kv=1024, flops=None, prefill_s=0.2, p=1.0):
    eff = {"weight_bytes": weight, "kv_bytes": kv, "prefill_s": prefill_s, "decode_s_per_token": 0.01}
    if flops is not None:
        eff.update(prefill_flops=flops, prefill_flops_full=1e9)
    return {
        "model": "m", "setting": setting, "task": task, "n": n, "n_errors": n_errors, "scores": {"accuracy": acc},
        "scores_ci": {"accuracy": [max(0.0, acc - 0.1), min(1.0, acc + 0.1)]}, "loyalty": 1.0 if setting == "none" else 0.8,
        "loyalty_detail": {"mcnemar_p": 1.0 if setting == "none" else p}, "efficiency": eff,
    }


def _results(*cells, **config):
    return {"config": {"seed": SEED, "limit": 8, **config}, "versions": {}, "date": "d", "cells": list(cells)}


# ----------------------------------------------------------------------------- disagreements

def test_disagreement_rows_show_the_image_and_question_of_a_synthetic_sample():
    sample = TASKS.get("synth_count").samples(SEED, 4)[3]
    results = _results(_cell("none"), _cell("rtn(bits=4)", acc=0.5))
    rows = [{"sample_id": sample.id, "prediction": "<b>7</b>", "baseline": sample.answer, "gold": sample.answer}]
    page = render_html(results, {("m", "rtn(bits=4)", "synth_count"): rows})
    assert "<img class='thumb' alt='sample image' src='data:image/png;base64," in page
    assert sample.question.replace("?", "") in page.replace("?", "")
    assert "&lt;b&gt;7&lt;/b&gt;" in page and "<b>7</b>" not in page
    # the counterfactual task's ids name a set and a variant
    cf = TASKS.get("synth_counterfactual").samples(SEED, 6)[4]
    results = _results(_cell("none", task="synth_counterfactual"), _cell("rtn(bits=4)", task="synth_counterfactual", acc=0.5))
    page = render_html(results, {("m", "rtn(bits=4)", "synth_counterfactual"): [{"sample_id": cf.id, "prediction": "x", "baseline": cf.answer, "gold": cf.answer}]})
    assert page.count("class='thumb'") == 1


def test_no_picture_when_the_sample_cannot_be_reproduced_and_never_a_failure():
    sample = TASKS.get("synth_count").samples(SEED, 2)[1]
    results = _results(_cell("none"), _cell("rtn(bits=4)", acc=0.5))
    wrong_gold = [{"sample_id": sample.id, "prediction": "1", "baseline": "2", "gold": "not the gold"}]  # the generator changed
    odd_ids = [{"sample_id": sid, "prediction": "1", "baseline": "2", "gold": "3"} for sid in ("synth_count/x/1", "synth_count/1/99999999", "other/1/2", "")]
    for rows in (wrong_gold, odd_ids):
        page = render_html(results, {("m", "rtn(bits=4)", "synth_count"): rows})
        assert "class='thumb'" not in page and "Where settings disagree" in page
    # a real benchmark without a local copy (no network from a report), an unknown task
    for task, sid in (("pope", "pope/3"), ("no_such_task", "no_such_task/1")):
        results = _results(_cell("none", task=task), _cell("rtn(bits=4)", task=task, acc=0.5))
        page = render_html(results, {("m", "rtn(bits=4)", task): [{"sample_id": sid, "prediction": "yes", "baseline": "no", "gold": "no"}]})
        assert "class='thumb'" not in page and "yes" in page


# ----------------------------------------------------------------------------- summaries and marks

FAMILY_SETTINGS = [
    ("rtn(bits=4,group_size=64)", 0.9, 2**20),
    ("awq(bits=4,group_size=64)", 0.95, 2**20),
    ("wanda(sparsity=0.5)", 0.8, 4 * 2**20),
    ("kivi(bits=2,group=32,residual=32)", 0.97, 4 * 2**20),
    ("snapkv(ratio=0.4)", 0.85, 4 * 2**20),
    ("visionzip(ratio=0.4)", 0.9, 4 * 2**20),
    ("fastv(ratio=0.4,query=all)", 0.92, 4 * 2**20),
    ("awq(bits=4,group_size=64)+visionzip(ratio=0.4)", 0.7, 2**20),
]


def _family_results():
    return _results(_cell("none"), *[_cell(s, acc=a, weight=w) for s, a, w in FAMILY_SETTINGS])


def test_html_and_markdown_summarise_each_method_family():
    results = _family_results()
    page = render_html(results)
    section = page[page.index("Per method family"):]
    section = section[: section.index("</table>")]
    rows = re.findall(r"<tr><td class='l'>([^<]+)</td><td class='l'>([^<]+)</td><td class='l'>#(\d+) <code>([^<]+)</code></td><td class='num'>([0-9.]+)", section)
    got = {fam: (members, int(num), names, float(op)) for fam, members, num, names, op in rows}
    assert got["weight quantization"] == ("2, 3", 3, "awq", 0.95)  # the higher OP of rtn and awq
    assert got["weight pruning"][2] == "wanda" and got["KV-cache quantization"][2] == "kivi"
    assert got["KV-cache eviction"][2] == "snapkv"
    assert got["visual-token pruning"] == ("7, 8", 8, "fastv", 0.92)
    assert got["stack"][2] == "awq+visionzip"
    md = render_markdown(results)
    assert "### Per method family" in md
    assert "| weight quantization | 2 | `awq(bits=4,group_size=64)` | 0.950 |" in md
    assert "| visual-token pruning | 2 | `fastv(ratio=0.4,query=all)` | 0.920 |" in md


def test_scored_and_errored_counts_are_marked_where_samples_errored():
    results = _results(_cell("none", n=6), _cell("rtn(bits=4)", acc=0.5, n=4, n_errors=2))
    page = render_html(results)
    assert "<small class='err' title='4 scored, 2 errored'>4/6</small>" in page
    assert page.count("class='err' title=") == 1  # the complete baseline has no mark
    md = render_markdown(results)
    row = next(line for line in md.splitlines() if line.startswith("| `rtn(bits=4)`") and "[" in line)
    assert "(4/6)" in row
    assert not any("(6/6)" in line for line in md.splitlines())
    flips = next(line for line in md.splitlines() if line.startswith("| `rtn(bits=4)` | synth_count |"))
    assert flips.rstrip().endswith("| 4 | 2 |")  # scored, errored


def test_markdown_escapes_backticks_in_settings_and_model_output():
    results = _results(_cell("none"), _cell("a`b(c=```)", acc=0.5))
    results["failed_cells"] = [{"model": "m", "setting": "x`y", "task": "synth_count", "error": "model said `rm -rf` <script>"}]
    md = render_markdown(results)
    assert "| ```` a`b(c=```) ```` |" in md  # a fence longer than any run of backticks inside
    assert "`` x`y ``" in md
    assert "model said \\`rm -rf\\` &lt;script&gt;" in md
    assert "<script" not in _outside_code_spans(md)
    page = render_html(results)
    assert "a`b(c=```)" in page and "&lt;script&gt;" in page and "<script" not in page


def test_dollar_signs_in_settings_never_reach_matplotlib_math():
    settings = ["$x^2$", "rtn(a=$)", "\\frac{$", "$$\\undefinedcommand{$"]
    results = _results(_cell("none"), *[_cell(s, acc=0.5 + 0.1 * k, weight=(k + 1) * 2**20, kv=512 * (k + 1), flops=1e8 * (k + 1), prefill_s=0.1 * (k + 1)) for k, s in enumerate(settings)])
    page = render_html(results)
    assert page.count("data:image/png;base64,") == 4  # weights, KV, FLOPs, speed-up
    for s in settings:
        assert f"<code>{s}</code>" in page
    md = render_markdown(results)
    assert "`$x^2$`" in md


def test_plots_only_on_axes_that_vary():
    results = _results(_cell("none"), _cell("rtn(bits=4)", acc=0.5, weight=2**20))  # same KV bytes, no FLOPs, same prefill time
    page = render_html(results)
    assert "alt='OP against weight bytes'" in page
    assert "alt='OP against KV-cache bytes per sample'" not in page
    assert "alt='OP against prefill FLOPs per sample'" not in page
    assert "alt='OP against measured prefill speed-up" not in page


def test_prefill_flops_of_settings_that_keep_every_token_are_the_full_count():
    results = _results(_cell("none"), _cell("visionzip(ratio=0.4)", acc=0.9, flops=4e8))
    page = render_html(results)
    assert "1.00 G" in page and "400.00 M" in page  # the baseline costs the full prompt (prefill_flops_full)
    assert "alt='OP against prefill FLOPs per sample'" in page


def test_pareto_front():
    pts = [(1, 1.0, 0.5), (2, 2.0, 0.9), (3, 3.0, 0.8), (4, 0.5, 0.4)]
    assert [p[0] for p in pareto_front(pts, lower_is_better=True)] == [4, 1, 2]
    assert [p[0] for p in pareto_front(pts, lower_is_better=False)] == [3, 2]


def test_wide_grids_scroll_inside_their_own_box():
    tasks = [f"task_{k}" for k in range(12)]
    results = _results(*[_cell(s, task=t) for s in ("none", "rtn(bits=4)") for t in tasks])
    page = render_html(results)
    assert "<div class='scroll'><table class='grid'>" in page
    assert ".scroll{overflow-x:auto" in page and "position:sticky" in page


# ----------------------------------------------------------------------------- export-lmms-eval

def _stored_run(tmp_path, results_json=True):
    import json

    from vlmcompress.store import Store

    run = tmp_path / "run"
    store = Store(run / "results.sqlite")
    for setting, pred in (("none", "yes"), ("rtn(bits=4)+kivi(bits=2)", "no")):
        cell = {"cell_key": f"{setting}|pope", "model": "org/model", "setting": setting, "setting_normalized": setting, "task": "pope", "n": 2, "n_errors": 0,
                "scores": {"pope_f1_score": 0.5}, "scores_ci": {"pope_f1_score": [0.1, 0.9]}, "loyalty": {"agreement": 1.0}, "efficiency": {}, "primary_metric": "pope_f1_score"}
        rows = [{"sample_id": f"pope/{i}", "prediction": pred, "gold": "yes", "score": 1.0, "meta": {"doc_id": i}, "stats": {}} for i in range(2)]
        store.save_cell(cell, rows)
    if hasattr(store, "save_failed_cell"):
        store.save_failed_cell({"cell_key": "x|pope", "model": "org/model", "setting": "wanda(sparsity=0.5)", "setting_normalized": "wanda", "task": "pope"}, "out of memory")
    store.close()
    if results_json:
        (run / "results.json").write_text(json.dumps({"date": "2026-12-04T17:00:00+00:00", "config": {"limit": 2, "batch_size": 2}, "cells": []}))
    return run


def test_export_lmms_eval_writes_one_folder_per_setting(tmp_path):
    import json

    from click.testing import CliRunner

    from vlmcompress.cli import cli

    run = _stored_run(tmp_path)
    out = tmp_path / "lmms"
    res = CliRunner().invoke(cli, ["export-lmms-eval", str(run), str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2  # one per folder; the failed cell is left out
    folders = sorted(p for p in (out / "org_model").iterdir())
    assert [f.name for f in folders] == ["none", "rtn_bits=4_kivi_bits=2"]
    for line, folder in zip(sorted(lines), folders):
        assert line.startswith(str(folder)) and "1 sample file(s)" in line
    block = json.loads((out / "org_model" / "none" / "2026-12-04T17-00-00+00-00_results.json").read_text())
    assert block["results"]["pope"]["pope_f1_score,none"] == 0.5 and block["config"]["limit"] == 2
    log = [json.loads(l) for l in (out / "org_model" / "none" / "2026-12-04T17-00-00+00-00_samples_pope.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in log] == [0, 1] and log[0]["resps"] == [["yes"]]


def test_export_lmms_eval_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from vlmcompress.cli import cli

    def invoke(*args):
        res = CliRunner().invoke(cli, ["export-lmms-eval", *map(str, args)])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        return res.output

    assert "holds no results.sqlite" in invoke(tmp_path / "nothing", tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.sqlite").write_bytes(b"not a database at all" * 100)
    assert "error:" in invoke(bad, tmp_path / "o")
    run = _stored_run(tmp_path / "a", results_json=False)
    (run / "results.json").write_text("{ not json")
    assert "results.json' is not readable JSON" in invoke(run, tmp_path / "o")  # and this store holds no config either
    # no results.json at all: the export still runs (dates unknown unless the store knows them)
    run = _stored_run(tmp_path / "b", results_json=False)
    res = CliRunner().invoke(cli, ["export-lmms-eval", str(run), str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- fuzzing

CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)")


def _outside_code_spans(md: str) -> str:
    return CODE_SPAN.sub("", md)


try:  # the explicit tests above run without hypothesis; the fuzzing needs it
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    st = None


if st is None:

    def test_fuzz_report_writers():
        pytest.importorskip("hypothesis")

else:

    NASTY = ["<script>alert(1)</script>", "`", "```", "$", "$x^2$", "\\", "|", "&amp;", "\x00", "\x07", "\x1b[31m", "\n", "\r\n", "\ud800", "</td>", "'\"", "]]>", "*_[x](y)"]
    texts = st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec=None, categories=None), max_size=20),
        st.lists(st.sampled_from(NASTY), max_size=6).map("".join),
        st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=10)),
        st.sampled_from(["x" * 50_000 + "<script>", "`" * 300, "$" * 1000]),
    )
    numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1), st.integers(min_value=0, max_value=2**40))


    @st.composite
    def results_docs(draw):
        tasks = draw(st.lists(texts, min_size=1, max_size=3, unique=True))
        settings_ = ["none"] + draw(st.lists(texts.filter(lambda s: s != "none"), min_size=1, max_size=3, unique=True))
        model = draw(texts)
        cells = []
        for s in settings_:
            for t in tasks:
                if s != "none" and draw(st.booleans()) and len(cells) > len(tasks):
                    continue  # a cell still to come
                lo, hi = draw(numbers), draw(numbers)
                cells.append({
                    "model": model, "setting": s, "task": t, "primary_metric": draw(st.sampled_from(["accuracy", "f1"])),
                    "n": draw(st.integers(0, 10**6)), "n_errors": draw(st.integers(0, 10)),
                    "scores": {draw(st.sampled_from(["accuracy", "f1"])): draw(numbers)}, "scores_ci": {"accuracy": [lo, hi], "f1": [lo, hi]},
                    "loyalty": draw(numbers), "loyalty_detail": {"mcnemar_p": draw(numbers), "right_to_wrong": draw(numbers)},
                    "efficiency": {k: draw(numbers) for k in ("weight_bytes", "kv_bytes", "prefill_s", "decode_s_per_token", "prefill_flops", "prefill_flops_full")},
                })
        failed = [{"model": model, "setting": draw(texts), "task": draw(texts), "error": draw(texts)}] if draw(st.booleans()) else []
        doc = {"config": {"seed": draw(st.one_of(st.integers(), texts)), "limit": draw(numbers), "batch_size": draw(texts)},
               "versions": {"torch": draw(texts)}, "date": draw(texts), "cells": cells, "failed_cells": failed}
        disagreements = {
            (model, c["setting"], c["task"]): [
                {"sample_id": draw(texts), "prediction": draw(texts), "baseline": draw(texts), "gold": draw(texts)} for _ in range(draw(st.integers(0, 2)))
            ]
            for c in cells if c["setting"] != "none"
        }
        return doc, disagreements


    def _check_page(page: str) -> None:
        page.encode("utf-8")  # writable as UTF-8: no lone surrogate
        assert "<script" not in page.lower()
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", page)


    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(results_docs())
    def test_fuzz_markdown_never_raises_and_escapes(doc):
        results, _ = doc
        md = render_markdown(results)
        md.encode("utf-8")
        assert "<script" not in _outside_code_spans(md).lower()
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", md)
        for line in md.splitlines():  # every table row stays one row: as many cells as its header
            assert "\r" not in line


    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(results_docs())
    def test_fuzz_html_never_raises_and_escapes(doc):
        results, disagreements = doc
        page = render_html(results, disagreements)
        _check_page(page)
        for c in results["cells"]:  # a setting with `$` is shown, escaped, not swallowed as math
            s = c["setting"]
            if "$" in s and len(s) < 200 and not re.search(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff<>&'\"`,+]", s):
                assert s in page


    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 1e12, allow_nan=False), st.floats(0, 2, allow_nan=False)), min_size=2, max_size=12))
    def test_fuzz_pareto_plots_with_crowded_points(points):
        """Coincident and nearly coincident points, huge and tiny values: the plot is drawn or
        left out, never an error."""
        from vlmcompress.report.html import _AXES, _pareto_png

        pts = [(k + 1, x, y) for k, (x, y) in enumerate(points)]
        for axis in _AXES:
            png = _pareto_png(pts, axis)
            xs = [x for _, x, _ in pts]
            if png is None:
                assert max(xs) - min(xs) <= 1e-9 * max(abs(v) for v in xs) or len(pts) < 2
        front = pareto_front(pts, True)
        assert all(not (math.isnan(p[2])) for p in front)


def test_disagreements_fold_into_one_closed_block_per_setting():
    """A long run's disagreements are one collapsible block per setting whose summary says
    how many rows it holds and in which tasks; the rows are still all in the page."""
    samples = TASKS.get("synth_count").samples(SEED, 3)
    results = _results(_cell("none"), _cell("rtn(bits=4)", acc=0.5), _cell("wanda(sparsity=0.5)", acc=0.5))
    rows = [{"sample_id": s.id, "prediction": "9", "baseline": s.answer, "gold": s.answer} for s in samples]
    page = render_html(results, {("m", "rtn(bits=4)", "synth_count"): rows[:2], ("m", "wanda(sparsity=0.5)", "synth_count"): rows})
    assert page.count("<details class='disagree'>") == 2 and "<details class='disagree' open" not in page
    assert "2 shown in 1 task: synth_count</summary>" in page and "3 shown in 1 task: synth_count</summary>" in page
    assert page.count("class='thumb'") == 5
    rtn_block = page[page.index("<details class='disagree'>") : page.index("</details>")]
    assert "rtn(bits=4)" in rtn_block and "wanda" not in rtn_block
