"""Settings that cannot compose are refused before any work; knobs that need the model are
checked before the baseline runs; LVLM-Compress-Bench's u/o/g KV quantizers attend to the
quantized prompt cache by default (KIVI does not)."""

import pytest
import torch
from PIL import Image

from vlmcompress.errors import ConfigError
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.runner import RunConfig, run
from vlmcompress.store import Store


@pytest.mark.parametrize(
    "spec, words",
    [
        ("kivi(bits=2)+kv_uniform(bits=4)", ["kivi", "kv_uniform", "kv cache"]),  # the second cache was silently ignored
        ("rtn(bits=4)+rtn(bits=8)", ["rtn", "twice"]),
        ("rtn(bits=4)+gptq(bits=4)", ["rtn", "gptq", "weight quantization"]),
        ("wanda(sparsity=0.5)+magnitude(sparsity=0.3)", ["wanda", "magnitude", "weight pruning"]),
        ("rtn(bits=4)+wanda(sparsity=0.5)", ["rtn", "wanda", "quantized and pruned"]),
    ],
)
def test_stacks_that_cannot_compose_are_refused_with_one_line(spec, words):
    with pytest.raises(ConfigError) as err:
        build_setting(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("spec", ["awq(bits=4)+kivi(bits=2)", "fastv(ratio=0.5)+snapkv(ratio=0.5)", "visionzip(ratio=0.4)+snapkv(ratio=0.5)+kivi(bits=2)", "wanda(sparsity=0.5)+kv_group(bits=4)"])
def test_stacks_that_compose_are_accepted(spec):
    assert len(build_setting(spec).methods) == spec.count("+") + 1


def _cells(out_dir):
    store = Store(out_dir / "results.sqlite")
    try:
        return store.cells()
    finally:
        store.close()


@pytest.mark.parametrize(
    "spec, match",
    [
        ("rtn(bits=4,group_size=96)", "group_size=96"),  # the tiny decoder's layers are 64 wide
        ("rtn(bits=4,targets=decoder+no_such_layer_xyz)", "no_such_layer_xyz"),
        ("kivi(bits=2,group=32)", "head_dim"),  # channel groups wider than the tiny model's head_dim=16
    ],
)
def test_knobs_that_do_not_fit_the_model_are_refused_before_the_baseline(tiny_llava_dir, tmp_path, spec, match):
    cfg = RunConfig(model=str(tiny_llava_dir), tasks=["synth_attribute"], limit=4, batch_size=4, output=str(tmp_path), settings=[spec])
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert _cells(tmp_path) == []  # not even the baseline cell was computed


def test_uniform_outlier_group_attend_to_the_quantized_prompt_by_default_kivi_does_not():
    assert [build_setting(s).methods[0].attend_quantized for s in ("kv_uniform", "kv_outlier", "kv_group", "kivi")] == [True, True, True, False]


def _first_logits(model, proc, adapter, spec):
    img = Image.fromarray((torch.arange(64 * 64 * 3) % 251).reshape(64, 64, 3).to(torch.uint8).numpy())
    batch = adapter.build_inputs([img], ["what color is the circle"])
    ctx = CompressionContext(model, adapter, proc)
    setting = build_setting(spec)
    cache = setting.methods[0].make_cache(ctx, batch) if setting.methods else None
    with torch.inference_mode():
        out = model(**batch, past_key_values=cache, use_cache=True)
    return out.logits[0, -1]


def test_two_bit_uniform_changes_the_prefill_itself_kivi_leaves_it_exact():
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.tiny import tiny_llava

    model, proc = tiny_llava()
    adapter = LlavaAdapter(model, proc)
    base = _first_logits(model, proc, adapter, "none")
    # KIVI: the prompt's attention reads the states at full precision -> identical logits
    assert torch.equal(_first_logits(model, proc, adapter, "kivi(bits=2,group=8,residual=8)"), base)
    # u/o/g (GEAR-style): attention reads the 2-bit cache already at prefill -> the logits move
    for spec in ("kv_uniform(bits=2)", "kv_group(bits=2,k_group=8,v_group=8,residual=8)"):
        assert not torch.allclose(_first_logits(model, proc, adapter, spec), base, atol=1e-4), spec


@pytest.mark.parametrize("spec", ["h2o(ratio=nan)", "magnitude(sparsity=nan)", "snapkv(ratio=inf)", "kv_outlier(bits=4,outlier_frac=-inf)"])
def test_non_finite_float_knobs_are_refused(spec):
    with pytest.raises(ConfigError, match="finite"):
        build_setting(spec)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("snapkv(ratio=0.4)+h2o(ratio=0.4)", ["snapkv", "h2o", "kv eviction"]),
        ("vlcache(ratio=0.4)+kivi(bits=2)", ["vlcache", "kivi", "quantized cache"]),
    ],
)
def test_eviction_stacks_that_cannot_compose_are_refused(spec, words):
    with pytest.raises(ConfigError) as err:
        build_setting(spec)
    for w in words:
        assert w in str(err.value)


def test_two_vision_pruners_are_refused():
    with pytest.raises(ConfigError, match="visionzip and prumerge_plus"):
        build_setting("visionzip(ratio=0.4)+prumerge_plus(ratio=0.4)")


def test_fastv_layer_beyond_the_decoder_is_refused_before_the_baseline(tiny_llava_dir, tmp_path):
    cfg = RunConfig(model=str(tiny_llava_dir), tasks=["synth_attribute"], limit=4, batch_size=4, output=str(tmp_path), settings=["fastv(layer=9)"])
    with pytest.raises(ConfigError, match="layer=9"):
        run(cfg)
    assert _cells(tmp_path) == []
