"""Native dtypes and honest bytes, placement and attention flags, serving-style timing.

The embedded model's checkpoint is float16; on a CPU it computes in float32, but weight
and KV bytes are reported at float16, as a GPU user holds them."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from click.testing import CliRunner

from vlmcompress.cli import cli
from vlmcompress.footprint import reference_dtype, set_reference_dtype
from vlmcompress.models.loading import EMBEDDED_PATH, flash_attention_available, resolve_dtypes
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return n, header


def _checkpoint():
    """(float16 bytes of every stored tensor, decoder-linear weight count), read from the
    safetensors file itself (not from the loaded model)."""
    path = EMBEDDED_PATH / "model.safetensors"
    n, header = _safetensors_header(path)
    assert {v["dtype"] for v in header.values()} == {"F16"}
    fp16_bytes = sum(math.prod(v["shape"]) * 2 for v in header.values())
    # the data section of the file is exactly those bytes
    assert fp16_bytes == path.stat().st_size - 8 - n == max(v["data_offsets"][1] for v in header.values())
    decoder = sum(
        math.prod(v["shape"]) for k, v in header.items() if ".layers." in k and "language_model" in k and k.endswith(".weight") and any(f".{p}." in k for p in DECODER_LINEARS)
    )
    return fp16_bytes, decoder


def _samples(out_dir):
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    return {(r["setting"], r["task"], r["sample_id"]): r["prediction"] for r in rows}


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded-auto")
    res = run(RunConfig(model="embedded", tasks=["synth_count"], limit=4, batch_size=4, output=str(out), settings=["rtn(bits=4)"]))
    return out, res


def test_auto_dtype_on_cpu_computes_float32_and_reports_float16(embedded_run):
    _, res = embedded_run
    assert RunConfig().dtype == "auto"
    for cell in res["cells"]:
        assert cell["efficiency"]["compute_dtype"] == "float32"
        assert cell["efficiency"]["reference_dtype"] == "float16"


def test_baseline_weight_bytes_are_the_checkpoints_float16_bytes(embedded_run):
    _, res = embedded_run
    fp16_bytes, _ = _checkpoint()
    base = next(c for c in res["cells"] if c["setting"] == "none")
    assert base["efficiency"]["weight_bytes"] == fp16_bytes
    # what the float32 process really holds is about twice that
    assert base["efficiency"]["weight_bytes_in_memory"] >= 2 * fp16_bytes


def test_4bit_ratio_is_the_analytic_one_not_half_of_it(embedded_run):
    _, res = embedded_run
    fp16_bytes, decoder = _checkpoint()
    cells = {c["setting"]: c["efficiency"] for c in res["cells"]}
    ratio = cells["rtn(bits=4)"]["weight_bytes"] / cells["none"]["weight_bytes"]
    # decoder linears at 4 bits + an fp16 scale and an fp16 (float) zero per group of 128;
    # everything else stays at 2 bytes a weight
    bits = 4 + 32 / 128
    expected = (fp16_bytes - 2 * decoder + decoder * bits / 8) / fp16_bytes
    assert ratio == pytest.approx(expected, rel=1e-6)
    assert cells["rtn(bits=4)"]["weight_bytes_analytic"] / cells["rtn(bits=4)"]["weight_bytes_original"] == pytest.approx(expected, rel=1e-6)
    assert cells["rtn(bits=4)"]["weight_bytes_original"] == fp16_bytes
    # against a float32 baseline the same setting would have looked about twice as good
    fp32_view = (2 * (fp16_bytes - 2 * decoder) + decoder * bits / 8) / (2 * fp16_bytes)
    assert ratio > 1.3 * fp32_view


def test_plain_cache_kv_bytes_at_two_bytes_an_element(embedded_run):
    out, res = embedded_run
    cfg = json.loads((EMBEDDED_PATH / "config.json").read_text())["text_config"]
    per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    store = Store(out / "results.sqlite")
    try:
        base = next(c for c in store.cells() if c["setting"] == "none")
        rows = store.samples(base["cell_key"])
    finally:
        store.close()
    assert rows
    for r in rows:
        st = r["stats"]
        assert st["kv_bytes"] == per_token * (st["prompt_tokens"] + st["generated_tokens"] - 1)


def test_request_timing_gives_ttft_and_tpot_and_the_same_predictions(embedded_run, tmp_path):
    batch_out, batch_res = embedded_run
    res = run(RunConfig(model="embedded", tasks=["synth_count"], limit=4, batch_size=4, output=str(tmp_path), settings=["rtn(bits=4)"], timing="request"))
    assert len(res["cells"]) == len(batch_res["cells"]) == 2
    for cell in res["cells"]:
        eff = cell["efficiency"]
        assert eff["timing_mode"] == "request" and eff["request_timer"] == "perf_counter"
        assert eff["ttft_s"] > 0 and eff["tpot_s"] > 0, eff
        assert eff["request_samples"] == cell["n"] == 4
        assert eff["request_prediction_mismatches"] == 0
        assert eff["prefill_s"] > 0  # the batch figures stay next to them
    assert all(c["efficiency"]["timing_mode"] == "batch" and "ttft_s" not in c["efficiency"] for c in batch_res["cells"])
    # every cell of one process shares a timing session (speed-ups compare only those)
    sessions = {c["efficiency"]["timing_session"] for c in res["cells"]}
    assert len(sessions) == 1 and sessions.isdisjoint(c["efficiency"]["timing_session"] for c in batch_res["cells"])
    assert _samples(tmp_path) == _samples(batch_out)
    assert {c["setting"]: c["scores"] for c in res["cells"]} == {c["setting"]: c["scores"] for c in batch_res["cells"]}


@pytest.mark.skipif(flash_attention_available(), reason="flash-attn is installed here")
def test_flash_attention_without_the_package_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--attn-implementation", "flash_attention_2", "--limit", "2", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "flash-attn" in errors[0] and "not installed" in errors[0], res.output
    assert "Traceback" not in res.output


def test_device_map_auto_and_eager_attention_run_on_cpu(tmp_path):
    out = tmp_path / "o"
    args = ["run", "--tasks", "synth_count", "--limit", "3", "--batch-size", "3", "--device", "cpu", "--device-map", "auto", "--attn-implementation", "eager", "--output", str(out), "--compress", "none"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "computing in float32 on cpu (checkpoint float16); weight and KV bytes reported at float16" in res.output
    cell = json.loads((out / "results.json").read_text())["cells"][0]
    eff = cell["efficiency"]
    assert eff["device_map"] == "auto" and eff["model_devices"] == ["cpu"] and eff["attn_implementation"] == "eager"
    assert cell["n"] == 3


def test_bad_flags_are_refused_before_any_work():
    from vlmcompress.errors import ConfigError

    for kw, fragment in [
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"device_map": "everywhere"}, "device_map='everywhere'"),
        ({"attn_implementation": "flex"}, "attn_implementation='flex'"),
        ({"timing": "wall"}, "timing='wall'"),
        ({"device_map": "auto", "device": "cuda:1"}, "CUDA_VISIBLE_DEVICES"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            RunConfig(**kw).validate()


def test_resolved_dtypes():
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    assert resolve_dtypes("auto", f16, "cuda") == (f16, f16)
    assert resolve_dtypes("auto", bf16, "cuda:0") == (bf16, bf16)
    assert resolve_dtypes("auto", f16, "cpu") == (f32, f16)
    assert resolve_dtypes("auto", bf16, "cpu") == (f32, bf16)
    # a float32 (or unnamed) checkpoint is reported at float16, the dtype it is served in
    assert resolve_dtypes("auto", f32, "cuda") == (f32, f16)
    assert resolve_dtypes("auto", None, "cpu") == (f32, f16)
    assert resolve_dtypes("bfloat16", f16, "cpu") == (bf16, f16)


def test_quantized_cache_residual_follows_the_reference_dtype():
    from vlmcompress.methods.kv_quant.methods import _store_dtype
    from vlmcompress.models.tiny import tiny_llava

    model, _ = tiny_llava()
    assert model.dtype == torch.float32 and reference_dtype(model) == torch.float16 == _store_dtype(model)
    set_reference_dtype(model, torch.bfloat16)  # a bfloat16 checkpoint run in float32
    assert reference_dtype(model) == torch.bfloat16 == _store_dtype(model)
    model.to(torch.float16)  # a 16-bit run keeps its own dtype, as its own cache would
    assert _store_dtype(model) == torch.float16
