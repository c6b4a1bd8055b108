import json
from dataclasses import dataclass

import pytest

from vlmcompress.errors import ConfigError
from vlmcompress.eval import loop as eval_loop
from vlmcompress.methods import METHODS, CompressionMethod
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store


@METHODS.register
@dataclass
class _BlankImage(CompressionMethod):
    """Test-only vision-hook method: replaces every image by a constant one, so that the
    model's answers change in a way the test can predict by running the same thing by hand."""

    name = "test_blank_image"
    hook = "vision"
    value: float = 0.0

    def make_cache(self, ctx, batch):  # sees each batch before generation; no cache of its own
        batch["pixel_values"].fill_(self.value)


@METHODS.register
@dataclass
class _BreakOneSample(CompressionMethod):
    """Test-only: a batch holding the sample with question ``question`` fails."""

    name = "test_break_sample"
    hook = "attention"
    question: str = ""

    def make_cache(self, ctx, batch):  # sees each batch before generation; no cache of its own
        from vlmcompress.tasks.scoring import normalize_answer

        texts = [normalize_answer(t) for t in ctx.processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)]
        if any(normalize_answer(self.question) in t for t in texts):
            raise RuntimeError("broken sample")


TASKS = ["synth_attribute", "synth_exists"]


def _config(model_dir, out, **kw):
    return RunConfig(model=str(model_dir), tasks=TASKS, limit=10, batch_size=4, output=str(out), **kw)


def test_results_json_has_the_promised_shape(tiny_llava_dir, tmp_path):
    res = run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=0.5)"]))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == res
    assert {"config", "versions", "date", "cells"} <= set(res)
    assert len(res["cells"]) == 4
    for c in res["cells"]:
        assert {"model", "setting", "task", "n", "scores", "loyalty", "efficiency"} <= set(c)
        assert 0 <= c["scores"]["accuracy"] <= 1
        for key in ("prefill_s", "decode_s_per_token", "peak_memory_bytes", "weight_bytes", "kv_bytes"):
            assert c["efficiency"][key] > 0, key
    base = [c for c in res["cells"] if c["setting"] == "none"]
    assert all(c["loyalty"] == 1.0 for c in base)
    assert {c["setting"] for c in res["cells"]} == {"none", "test_blank_image(value=0.5)"}
    assert (tmp_path / "report.md").read_text().count("test_blank_image") >= 2
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 40


def test_weight_bytes_and_kv_bytes_match_the_tensors(tiny_llava_dir, tmp_path):
    from safetensors import safe_open

    from vlmcompress.models import load_model

    res = run(_config(tiny_llava_dir, tmp_path, settings=["none"]))
    model = load_model(str(tiny_llava_dir)).model
    # the tiny checkpoint is float32 and runs in float32 on the CPU, but bytes are reported
    # at the reference dtype (float16 for a float32 checkpoint): every stored tensor at 2 bytes
    with safe_open(str(tiny_llava_dir / "model.safetensors"), "pt") as f:
        expected = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys()) * 2
    cell = res["cells"][0]
    assert cell["efficiency"]["weight_bytes"] == expected
    assert cell["efficiency"]["compute_dtype"] == "float32" and cell["efficiency"]["reference_dtype"] == "float16"
    held = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert cell["efficiency"]["weight_bytes_in_memory"] == held
    # keys+values at the reference dtype: layers * 2 * kv_heads * head_dim * 2 bytes per cached token
    tc = model.config.get_text_config()
    per_token = tc.num_hidden_layers * 2 * tc.num_key_value_heads * (tc.hidden_size // tc.num_attention_heads) * 2
    store = Store(tmp_path / "results.sqlite")
    rows = store.samples(store.cells()[0]["cell_key"])
    store.close()
    for r in rows:
        st = r["stats"]
        assert st["kv_bytes"] == per_token * (st["prompt_tokens"] + st["generated_tokens"] - 1)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_loyalty_is_measured_against_the_baseline_rows(tiny_llava_dir, tmp_path):
    res = run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=1.0)"]))
    store = Store(tmp_path / "results.sqlite")
    by = {(c["setting"], c["task"]): store.samples(c["cell_key"]) for c in store.cells()}
    store.close()
    for c in res["cells"]:
        base = {r["sample_id"]: r["prediction"] for r in by[("none", c["task"])]}
        mine = by[(c["setting"], c["task"])]
        from vlmcompress.tasks import TASKS as REG

        norm = REG.get(c["task"]).normalize
        expected = sum(norm(r["prediction"]) == norm(base[r["sample_id"]]) for r in mine) / len(mine)
        assert c["loyalty"] == pytest.approx(expected)


def test_rerun_skips_finished_cells_and_baseline_is_computed_once(tiny_llava_dir, tmp_path, monkeypatch):
    calls = []
    real = eval_loop.evaluate_cell

    def counting(ctx, methods, task, *a, **k):
        calls.append((tuple(m.name for m in methods), task.name))
        return real(ctx, methods, task, *a, **k)

    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", counting)
    run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=0.5)"]))
    assert len(calls) == 4
    # a second setting in the same directory reuses the stored baseline
    run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=0.5)", "test_blank_image(value=1.0)"]))
    assert len(calls) == 6
    assert [c for c in calls[4:] if c[0] == ()] == []


def test_killed_run_resumes_where_it_stopped(tiny_llava_dir, tmp_path, monkeypatch):
    real = eval_loop.evaluate_cell
    count = {"n": 0}

    def dying(*a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt  # as if killed during the third cell
        return real(*a, **k)

    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", dying)
    with pytest.raises(KeyboardInterrupt):
        run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=0.5)"]))
    assert len(json.loads((tmp_path / "results.json").read_text())["cells"]) == 2
    monkeypatch.setattr("vlmcompress.runner.worker.evaluate_cell", real)
    res = run(_config(tiny_llava_dir, tmp_path, settings=["test_blank_image(value=0.5)"]))
    assert len(res["cells"]) == 4
    fresh = run(_config(tiny_llava_dir, tmp_path / "fresh", settings=["test_blank_image(value=0.5)"]))
    key = lambda c: (c["setting"], c["task"])  # noqa: E731
    assert sorted((key(c), c["scores"]["accuracy"]) for c in res["cells"]) == sorted((key(c), c["scores"]["accuracy"]) for c in fresh["cells"])


def test_a_broken_sample_is_reported_not_fatal(tiny_llava_dir, tmp_path):
    from vlmcompress.tasks import TASKS as REG

    samples = REG.get("synth_attribute").samples(1234, 16)
    victim = next(s for s in samples if sum(o.question == s.question for o in samples) == 1)
    setting = [{"test_break_sample": {"question": victim.question}}]
    res = run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_attribute"], limit=16, batch_size=8, output=str(tmp_path), settings=[setting]))
    cell = next(c for c in res["cells"] if c["setting"] != "none")
    assert cell["n_errors"] == 1
    assert cell["n"] == 15
    assert cell["loyalty_detail"]["errors"][0].startswith(victim.id)
    assert "broken sample" in cell["loyalty_detail"]["errors"][0]


def test_batch_size_does_not_change_predictions(tiny_llava_dir, tmp_path):
    a = run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=12, batch_size=1, output=str(tmp_path / "a"), settings=["none"]))
    b = run(RunConfig(model=str(tiny_llava_dir), tasks=["synth_count"], limit=12, batch_size=6, output=str(tmp_path / "b"), settings=["none"]))
    pa = [json.loads(l)["prediction"] for l in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    pb = [json.loads(l)["prediction"] for l in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    assert pa == pb and a["cells"][0]["scores"] == b["cells"][0]["scores"]


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("model: embedded\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'; allowed: .*batch_size"):
        RunConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="device='tpu'"):
        RunConfig(device="tpu").validate()
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


def test_yaml_config_runs_a_sweep(tiny_llava_dir, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        f"model: {tiny_llava_dir}\ntasks: [synth_count]\nlimit: 4\nbatch_size: 2\noutput: {tmp_path / 'out'}\n"
        "compress:\n  - test_blank_image(value=0.25)\n  - [{test_blank_image: {value: 0.75}}]\n"
    )
    res = run(RunConfig.from_yaml(cfg))
    assert [c["setting"] for c in res["cells"]] == ["none", "test_blank_image(value=0.25)", "test_blank_image(value=0.75)"]


def test_qwen2_vl_runs_through_the_same_loop(tiny_qwen_dir, tmp_path):
    res = run(RunConfig(model=str(tiny_qwen_dir), tasks=["synth_count", "synth_multiple_choice"], limit=6, batch_size=3, output=str(tmp_path), settings=["test_blank_image(value=0.5)"]))
    assert len(res["cells"]) == 4
    assert all(c["n"] == 6 and c["efficiency"]["kv_bytes"] > 0 for c in res["cells"])
