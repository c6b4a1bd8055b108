"""KV-cache quantization (issue 5): layouts against independent float64 references, KIVI's
residual bookkeeping step by step, quantize-once, padding invariance, byte accounting,
knob validation, and greedy generation on the tiny LLaVA and Qwen2-VL models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from vlmcompress.errors import ConfigError
from vlmcompress.methods import METHODS, CompressionContext, build_setting
from vlmcompress.methods.kv_quant import layouts as L
from vlmcompress.methods.kv_quant.cache import QuantizedKVLayer, analytic_bytes, fp16_bytes
from vlmcompress.methods.kv_quant.methods import left_pad_lengths

# ----------------------------------------------------------------------------- references


def reference_quantize(x: torch.Tensor, kind: str, bits: int, group: int = 0):
    """Explicit loop over blocks in float64; scale and zero rounded to fp16 as they are stored."""
    x = x.double()
    b_, h_, t_, d_ = x.shape
    qmax = 2**bits - 1
    codes = torch.empty(x.shape, dtype=torch.int64)
    deq = torch.empty(x.shape, dtype=torch.float64)
    if kind == "tensor":
        blocks = [(b, slice(None), slice(None), slice(None)) for b in range(b_)]
    elif kind == "channel":
        blocks = [(b, h, slice(g, g + group), d) for b in range(b_) for h in range(h_) for g in range(0, t_, group) for d in range(d_)]
    else:
        blocks = [(b, h, t, slice(g, g + group)) for b in range(b_) for h in range(h_) for t in range(t_) for g in range(0, d_, group)]
    for idx in blocks:
        blk = x[idx]
        lo, hi = blk.min(), blk.max()
        scale = ((hi - lo) / qmax).half().double()
        scale = scale if scale > 0 else torch.tensor(1.0, dtype=torch.float64)
        zero = lo.half().double()
        q = torch.clamp(torch.round((blk - zero) / scale), 0, qmax)
        codes[idx] = q.long()
        deq[idx] = q * scale + zero
    return codes, deq


def kivi_fp16_counts(prefill: int, steps: int, residual: int) -> list[tuple[int, int]]:
    """(fp16 keys, fp16 values) after prefill and after each decode step, transcribed from
    the branches of KIVI's ``LlamaAttention_KIVI.forward`` (models/llama_kivi.py)."""
    r = residual
    if prefill % r != 0:
        k_full = prefill if prefill < r else prefill % r
    else:
        k_full = 0
    v_full = prefill if prefill <= r else r
    out = [(k_full, v_full)]
    for _ in range(steps):
        k_full += 1
        if k_full == r:  # key_states_full.shape[-2] == residual_length -> quantize, full = None
            k_full = 0
        v_full += 1
        if v_full > r:  # value_full_length > residual_length -> quantize the oldest one
            v_full -= 1
        out.append((k_full, v_full))
    return out


LAYOUTS = [("tensor", 0), ("channel", 4), ("token", 4)]


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kind,group", LAYOUTS)
def test_layout_codes_and_values_match_float64_reference(kind, group, bits):
    g = torch.Generator().manual_seed(bits * 7 + len(kind))
    x = torch.randn(2, 3, 8, 8, generator=g) * 3 + 0.5
    x[1, 2, 5, 3] = 40.0  # an outlier changes its own block's range only
    lay = L.KVLayout(kind, bits, group)
    q = L.quantize_kv(x, lay)
    ref_codes, ref_deq = reference_quantize(x, kind, bits, group)
    assert torch.equal(q.codes(bits).long(), ref_codes)
    assert torch.allclose(L.dequantize_kv(q, lay, torch.float64), ref_deq, rtol=0, atol=1e-6)
    # packed: bits/8 bytes per code along D, no waste at D=8
    assert q.packed.dtype == torch.uint8 and q.packed.shape[-1] == 8 * bits // 8
    # blocks never span the batch: sample 0 alone gives the same codes
    q0 = L.quantize_kv(x[:1], lay)
    assert torch.equal(q0.packed, q.packed[:1])


def test_layouts_on_hand_computed_tensors():
    # keys per channel, 4 tokens per group: channel 0 = 0,1,2,3 -> scale 1, zero 0; channel 1 constant.
    x = torch.tensor([[0.0, 10.0], [1.0, 10.0], [2.0, 10.0], [3.0, 10.0]]).reshape(1, 1, 4, 2)
    q = L.quantize_kv(x, L.KVLayout("channel", 2, 4))
    assert q.codes(2).reshape(4, 2).tolist() == [[0, 0], [1, 0], [2, 0], [3, 0]]
    assert q.scale.flatten().tolist() == [1.0, 1.0] and q.zero.flatten().tolist() == [0.0, 10.0]
    assert L.dequantize_kv(q, L.KVLayout("channel", 2, 4), torch.float32).reshape(4, 2).tolist() == x.reshape(4, 2).tolist()
    # values per token, 2 channels per group: [0, 3 | -3, 3] -> codes [0, 3 | 0, 3], scales 1 and 2
    v = torch.tensor([0.0, 3.0, -3.0, 3.0]).reshape(1, 1, 1, 4)
    qv = L.quantize_kv(v, L.KVLayout("token", 2, 2))
    assert qv.codes(2).flatten().tolist() == [0, 3, 0, 3]
    assert qv.scale.flatten().tolist() == [1.0, 2.0] and qv.zero.flatten().tolist() == [0.0, -3.0]
    assert qv.packed.flatten().tolist() == [0 | 3 << 2 | 0 << 4 | 3 << 6]  # four 2-bit codes, code i in bits 2i
    # one range for the whole tensor: min -3, max 3 at 2 bits -> scale 2
    qt = L.quantize_kv(v, L.KVLayout("tensor", 2))
    assert qt.codes(2).flatten().tolist() == [2, 3, 0, 3]  # (0+3)/2 = 1.5 rounds half to even -> 2


def test_outlier_split_keeps_extremes_exactly():
    x = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10) - 50.0  # -50 .. 49
    idx, val, lo, hi = L.split_outliers(x, 0.04)  # 4 outliers: 2 largest, 2 smallest
    assert sorted(val[0].tolist()) == [-50.0, -49.0, 48.0, 49.0]
    assert lo.item() == -48.0 and hi.item() == 47.0


def test_label_parses_to_kv_group():
    assert L.parse_label("g-KC128VT128") == ("g", "channel", 128, "token", 128)
    m = build_setting("kv_group(bits=2,label=g-KC128VT128)").methods[0]
    assert (m.k_axis, m.k_group, m.v_axis, m.v_group) == ("channel", 128, "token", 128)
    assert build_setting("kv_group(bits=2,label=g-KT64VC32,residual=64)").normalized == build_setting(
        "kv_group(bits=2,k_axis=token,k_group=64,v_axis=channel,v_group=32,residual=64)"
    ).normalized
    assert build_setting("kivi(bits=2)").normalized == "kivi(attend_quantized=false,bits=2,group=32,residual=128)"


# ----------------------------------------------------------------------------- residual window


@pytest.mark.parametrize("prefill", [1, 7, 8, 9, 15, 16, 17, 23])
def test_stream_leaves_exactly_kivis_fp16_tokens_and_quantizes_each_token_once(prefill, monkeypatch):
    R, G, steps, H, D = 8, 4, 11, 2, 8
    calls: list[int] = []
    real = L.quantize_kv
    monkeypatch.setattr(L, "quantize_kv", lambda x, lay: (calls.append(x.shape[2]), real(x, lay))[1])
    m = build_setting(f"kivi(bits=2,group={G},residual={R})").methods[0]
    layer = QuantizedKVLayer(*m.stream_specs())
    g = torch.Generator().manual_seed(prefill)
    k_all = torch.randn(1, H, prefill + steps, D, generator=g)
    v_all = torch.randn(1, H, prefill + steps, D, generator=g)
    expected = kivi_fp16_counts(prefill, steps, R)
    for step in range(steps + 1):
        lo, hi = (0, prefill) if step == 0 else (prefill + step - 1, prefill + step)
        layer.update(k_all[:, :, lo:hi], v_all[:, :, lo:hi])
        ks, vs = layer.k_rows[0], layer.v_rows[0]
        assert (ks.residual.shape[2], vs.residual.shape[2]) == expected[step]
        n = hi
        for s, x in ((ks, k_all), (vs, v_all)):
            n_q = n - s.residual.shape[2]
            assert s.n_quantized == n_q
            assert torch.equal(s.residual, x[:, :, n_q:n].half())  # the newest tokens, untouched
            if n_q:  # what is stored equals one quantization of the whole quantized prefix
                one_shot = real(x[:, :, :n_q].half(), s.spec.layout)
                assert torch.equal(s.packed, one_shot.packed)
                assert torch.equal(s.scale, one_shot.scale) and torch.equal(s.zero, one_shot.zero)
    total_quantized = layer.k_rows[0].n_quantized + layer.v_rows[0].n_quantized
    assert sum(calls) == total_quantized  # no token handed to the quantizer twice
    assert layer.k_rows[0].tokens_sent_to_quantizer == layer.k_rows[0].n_quantized


def test_update_returns_full_precision_new_states_and_dequantized_past():
    m = build_setting("kivi(bits=2,group=4,residual=4)").methods[0]
    layer = QuantizedKVLayer(*m.stream_specs())
    x = torch.randn(1, 1, 9, 4)
    k, _ = layer.update(x[:, :, :8], x[:, :, :8])
    assert torch.equal(k, x[:, :, :8])  # prefill attention is exact (KIVI quantizes after attention)
    k, _ = layer.update(x[:, :, 8:], x[:, :, 8:])
    lay = m.stream_specs()[0].layout
    past = L.dequantize_kv(L.quantize_kv(x[:, :, :8].half(), lay), lay, torch.float32)
    assert torch.equal(k[:, :, :8], past) and torch.equal(k[:, :, 8:], x[:, :, 8:])
    assert not torch.equal(k[:, :, :8], x[:, :, :8])


def test_attend_quantized_reads_the_stored_cache_even_in_prefill():
    m = build_setting("kv_uniform(bits=2,attend_quantized=true)").methods[0]
    layer = m.build_cache(1, 4, None).layers[0]
    x = torch.randn(1, 1, 6, 4)
    k, v = layer.update(x, x)
    lay = L.KVLayout("tensor", 2)
    stored = L.dequantize_kv(L.quantize_kv(x.half(), lay), lay, torch.float32)
    assert torch.equal(k, stored) and torch.equal(v, stored) and not torch.equal(k, x)


# ----------------------------------------------------------------------------- padding

SPECS = [
    "kivi(bits=2,group=4,residual=8)",
    "kv_group(bits=3,k_axis=token,k_group=4,v_axis=channel,v_group=4,residual=4)",
    "kv_uniform(bits=2)",
    "kv_outlier(bits=4,outlier_frac=0.05)",
]


def _stream_state(s):
    return [s.packed, s.scale, s.zero, s.residual, s.outlier_idx, s.outlier_val]


@pytest.mark.parametrize("spec", SPECS)
def test_padding_never_enters_a_sample(spec):
    m = build_setting(spec).methods[0]
    g = torch.Generator().manual_seed(3)
    H, D, T, pad = 2, 8, 11, 5
    sample_k, sample_v = torch.randn(1, H, T + 4, D, generator=g), torch.randn(1, H, T + 4, D, generator=g)
    other_k, other_v = torch.randn(1, H, T + pad + 4, D, generator=g), torch.randn(1, H, T + pad + 4, D, generator=g)
    junk = torch.full((1, H, pad, D), 1e4)  # padding with huge values: any leak changes ranges

    def run(pad_lengths):
        alone = QuantizedKVLayer(*m.stream_specs())
        batch = QuantizedKVLayer(*m.stream_specs(), pad_lengths=pad_lengths)
        alone.update(sample_k[:, :, :T], sample_v[:, :, :T])
        bk = torch.cat([torch.cat([junk, sample_k[:, :, :T]], 2), other_k[:, :, : T + pad]])
        bv = torch.cat([torch.cat([junk, sample_v[:, :, :T]], 2), other_v[:, :, : T + pad]])
        batch.update(bk, bv)
        for i in range(4):  # decode steps
            ka, _ = alone.update(sample_k[:, :, T + i : T + i + 1], sample_v[:, :, T + i : T + i + 1])
            kb, _ = batch.update(torch.cat([sample_k[:, :, T + i : T + i + 1], other_k[:, :, T + pad + i : T + pad + i + 1]]),
                                 torch.cat([sample_v[:, :, T + i : T + i + 1], other_v[:, :, T + pad + i : T + pad + i + 1]]))
        return alone, batch, ka, kb

    alone, batch, ka, kb = run([pad, 0])
    for sa, sb in ((alone.k_rows[0], batch.k_rows[0]), (alone.v_rows[0], batch.v_rows[0])):
        for a, b in zip(_stream_state(sa), _stream_state(sb)):
            assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(kb[0, :, pad:], ka[0]) and torch.equal(kb[0, :, :pad], torch.zeros_like(kb[0, :, :pad]))
    assert alone.byte_log[0] == batch.byte_log[0]
    # control: a layer not told about the padding does quantize it, and differs
    _, blind, _, _ = run(None)
    assert not all(torch.equal(a, b) for a, b in zip(_stream_state(alone.k_rows[0])[:3], _stream_state(blind.k_rows[0])[:3]))


def test_left_pad_lengths():
    assert left_pad_lengths(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])) == [2, 0]
    with pytest.raises(ValueError, match="left-padded"):
        left_pad_lengths(torch.tensor([[1, 1, 0, 0]]))


def test_batch_edits_move_samples_without_requantizing():
    m = build_setting("kivi(bits=2,group=4,residual=4)").methods[0]
    layer = QuantizedKVLayer(*m.stream_specs())
    x = torch.randn(3, 2, 10, 8)
    layer.update(x, x)
    before = [layer.k_rows[i].packed for i in range(3)]
    layer.reorder_cache(torch.tensor([2, 0, 1]))
    assert [layer.k_rows[i].packed for i in range(3)] == [before[2], before[0], before[1]]
    layer.batch_select_indices(torch.tensor([1]))
    assert len(layer.k_rows) == 1 and layer.k_rows[0].packed is before[0]


# ----------------------------------------------------------------------------- bytes


def test_analytic_bytes_by_hand():
    # kivi 2-bit, G=4, R=8, one head of 8 channels, 13 tokens:
    # keys: 8 quantized (8 tok x 2 bytes of codes + 2 groups x 8 ch x (scale+zero) x 2 B) + 5 fp16 x 16 B = 16+64+80
    # values: 5 quantized (5 x 2 B + 5 tok x 2 groups x 4 B) + 8 fp16 x 16 B = 10+40+128
    k_spec, v_spec = build_setting("kivi(bits=2,group=4,residual=8)").methods[0].stream_specs()
    assert analytic_bytes(k_spec, 1, 8, 13) == 160 and analytic_bytes(v_spec, 1, 8, 13) == 178
    layer = QuantizedKVLayer(k_spec, v_spec)
    layer.update(torch.randn(1, 1, 13, 8), torch.randn(1, 1, 13, 8))
    assert layer.byte_log[0][-1] == (13, 338)
    assert fp16_bytes(1, 8, 13) * 2 == 416


@pytest.mark.parametrize("spec", SPECS + ["kv_group(bits=2,k_group=128,v_group=128,residual=128)"])
def test_measured_bytes_equal_analytic_and_shrink(spec):
    m = build_setting(spec).methods[0]
    H, D, T = 2, 128, 1000
    cache = m.build_cache(2, D, [0, 37])
    for layer in cache.layers:
        layer.update(torch.randn(2, H, T, D), torch.randn(2, H, T, D))
        for _ in range(3):
            layer.update(torch.randn(2, H, 1, D), torch.randn(2, H, 1, D))
    stats = cache.footprint()
    assert [s["kv_tokens"] for s in stats] == [T + 3, T - 37 + 3]
    for s in stats:
        assert s["kv_bytes"] == s["kv_bytes_analytic"]
        assert s["kv_bytes_fp16"] == 2 * 2 * H * D * s["kv_tokens"] * 2
    assert stats[0]["kv_bytes"] < stats[0]["kv_bytes_fp16"]  # (G=4 costs 8 bits of scale+zero per element)
    # bytes read back at an earlier length (a sample that ended before the batch did)
    early = [s["kv_bytes"] for s in cache.footprint([1, 1])]  # the prompt and one decoded entry
    assert early[0] < stats[0]["kv_bytes"]
    assert early[0] == sum(layer.byte_log[0][1][1] for layer in cache.layers)


def test_two_bit_group_128_is_about_seven_times_smaller_on_a_long_sequence():
    # 2 + 32/128 = 2.25 bits per element against 16, less the fp16 residual (T mod R keys, R values)
    cache = build_setting("kv_group(bits=2,label=g-KC128VT128)").methods[0].build_cache(1, 128, None)
    cache.layers[0].update(torch.randn(1, 2, 8192, 128), torch.randn(1, 2, 8192, 128))
    s = cache.footprint()[0]
    assert s["kv_bytes"] == s["kv_bytes_analytic"]
    assert 6.5 < s["kv_bytes_fp16"] / s["kv_bytes"] < 16 / 2.25


# ----------------------------------------------------------------------------- knobs


@pytest.mark.parametrize(
    "spec,words",
    [
        ("kivi(bits=5)", ["bits=5"]),
        ("kv_uniform(bits=1)", ["bits=1"]),
        ("kv_group(residual=100)", ["residual=100", "k_group=128"]),
        ("kivi(group=32,residual=48)", ["residual=48", "group=32"]),
        ("kv_group(k_axis=head)", ["k_axis", "head"]),
        ("kv_group(v_axis=row)", ["v_axis", "row"]),
        ("kv_outlier(outlier_frac=0)", ["outlier_frac"]),
        ("kv_group(label=u-KC128VT128)", ["label"]),
        ("kv_group(label=g-KC64VT64,k_group=32,residual=64)", ["k_group=32", "label"]),
        ("kv_group(label=nonsense)", ["label"]),
    ],
)
def test_bad_knobs_are_refused_up_front(spec, words):
    with pytest.raises(ConfigError) as err:
        build_setting(spec)
    for w in words:
        assert w in str(err.value)


def test_channel_group_wider_than_head_dim_is_refused(tiny):
    model, proc, adapter, _ = tiny["llava"]
    ctx = CompressionContext(model, adapter, proc)
    batch = adapter.build_inputs([_image(0)], ["what"])
    with pytest.raises(ConfigError, match=r"group=32.*head_dim=16"):
        build_setting("kivi(bits=2)").methods[0].make_cache(ctx, batch)
    with pytest.raises(ConfigError, match=r"v_group=128.*head_dim=16"):
        build_setting("kv_group(bits=2)").methods[0].make_cache(ctx, batch)


def test_stacks_with_a_weight_method():
    weight = [n for n in ("awq", "rtn", "gptq") if n in METHODS.names()]
    if not weight:
        pytest.skip("no weight-quantization method registered yet")
    setting = build_setting(f"{weight[0]}(bits=4)+kivi(bits=2)")
    assert [m.hook for m in setting.ordered()] == ["weights", "kv_cache"]


# ----------------------------------------------------------------------------- on real models


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8"))


QUESTIONS = ["what", "how many red squares are there in the picture on the left side", "color of the big circle"]


@pytest.fixture(scope="module")
def tiny():
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.qwen2_vl import Qwen2VLAdapter
    from vlmcompress.models.tiny import tiny_llava, tiny_qwen2_vl

    out = {}
    for fam, build, adapter in (("llava", tiny_llava, LlavaAdapter), ("qwen2_vl", tiny_qwen2_vl, Qwen2VLAdapter)):
        model, proc = build()
        out[fam] = (model, proc, adapter(model, proc), CompressionContext(model, adapter(model, proc), proc))
    return out


def _generate(entry, spec: str, idx: list[int], n: int = 8):
    model, _, adapter, ctx = entry
    batch = adapter.build_inputs([_image(i) for i in idx], [QUESTIONS[i] for i in idx])
    setting = build_setting(spec)
    cache = setting.methods[0].make_cache(ctx, batch) if setting.methods else DynamicCache(config=model.config.get_text_config())
    with torch.inference_mode():
        out = model.generate(**batch, past_key_values=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    stats = cache.footprint() if setting.methods else None
    return out[:, batch["input_ids"].shape[1] :].tolist(), stats, batch


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_8bit_kv_keeps_greedy_answers(tiny, family):
    base, _, _ = _generate(tiny[family], "none", [0, 1, 2])
    # prompt attention exact (KIVI's convention) for all four: this checks the stored 8-bit
    # cache, not the random tiny model's near-tied logits at prefill
    for spec in (
        "kivi(bits=8,group=8,residual=16)",
        "kv_group(bits=8,k_axis=token,k_group=8,v_group=8,residual=0,attend_quantized=false)",
        "kv_uniform(bits=8,attend_quantized=false)",
        "kv_outlier(bits=8,outlier_frac=0.02,attend_quantized=false)",
    ):
        got, stats, _ = _generate(tiny[family], spec, [0, 1, 2])
        same = sum(a == b for ra, rb in zip(got, base) for a, b in zip(ra, rb))
        assert same >= 0.9 * 24, (spec, got, base)
        assert all(s["kv_bytes"] == s["kv_bytes_analytic"] < s["kv_bytes_fp16"] for s in stats)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("spec", ["kivi(bits=2,group=8,residual=16)", "kv_outlier(bits=2,outlier_frac=0.05)"])
def test_same_answer_alone_and_in_a_padded_batch(tiny, family, spec):
    got, stats, batch = _generate(tiny[family], spec, [0, 1, 2])
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # the batch really is padded
    for i in range(3):
        alone, alone_stats, _ = _generate(tiny[family], spec, [i])
        assert got[i] == alone[0]
        assert stats[i] == alone_stats[0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kind,group", [("channel", 4), ("token", 8), ("tensor", 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_into_a_slice_is_the_reference_bit_for_bit(bits, kind, group, dtype):
    """The cache's fast read-back writes into a strided slice of attention's buffer; it must
    give exactly what the reference (unpack, then the shared primitive) gives, and touch
    nothing outside the slice."""
    g = torch.Generator().manual_seed(bits * 7 + len(kind))
    lay = L.KVLayout(kind, bits, group)
    x = torch.randn(1, 3, 16, 16, generator=g) * 3 + 0.5
    q = L.quantize_kv(x, lay)
    buffer = torch.full((2, 3, 21, 16), 7.0, dtype=dtype)
    target = buffer[1:2, :, 2:18]  # non-contiguous: a row and a token range of the buffer
    L.dequantize_kv_into(q, lay, target)
    assert torch.equal(target, L.dequantize_kv(q, lay, dtype))
    untouched = torch.ones_like(buffer, dtype=torch.bool)
    untouched[1, :, 2:18] = False
    assert bool((buffer[untouched] == 7.0).all())
    if bits == 2:  # a read-back of 2-bit codes, not a copy of x
        assert (target.float() - x).abs().max() > 0.05


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("pads", [[0, 3, 0, 3], [3, 3, 0, 0], [0, 0, 0, 0]])
def test_rows_read_and_quantized_as_a_group_are_what_each_row_gets_alone(spec, pads, monkeypatch):
    """Rows in the same state are read back and quantized in one call per group (consecutive
    rows straight into attention's buffer, others through a gathered copy); every row's stored
    codes, parameters, residual, bytes and the keys/values attention reads must be those of
    the same row run alone."""
    seen_batches: list[int] = []
    real = L.quantize_kv
    monkeypatch.setattr(L, "quantize_kv", lambda x, lay: (seen_batches.append(x.shape[0]), real(x, lay))[1])
    m = build_setting(spec).methods[0]
    g = torch.Generator().manual_seed(11)
    B, H, D, T, steps = 4, 2, 8, 13, 9
    ks = torch.randn(B, H, T + steps, D, generator=g)
    vs = torch.randn(B, H, T + steps, D, generator=g)
    batch = QuantizedKVLayer(*m.stream_specs(), pad_lengths=pads)
    alone = [QuantizedKVLayer(*m.stream_specs()) for _ in range(B)]
    out_b = [batch.update(ks[:, :, :T], vs[:, :, :T])]
    out_a = [[a.update(ks[r : r + 1, :, pads[r] : T], vs[r : r + 1, :, pads[r] : T]) for r, a in enumerate(alone)]]
    for i in range(T, T + steps):
        out_b.append(batch.update(ks[:, :, i : i + 1], vs[:, :, i : i + 1]))
        out_a.append([a.update(ks[r : r + 1, :, i : i + 1], vs[r : r + 1, :, i : i + 1]) for r, a in enumerate(alone)])
    for (kb, vb), rows in zip(out_b, out_a):
        for r, (ka, va) in enumerate(rows):
            p = pads[r]
            assert torch.equal(kb[r : r + 1, :, p:], ka) and torch.equal(vb[r : r + 1, :, p:], va)
            assert not kb[r, :, :p].any() and not vb[r, :, :p].any()
    for r, a in enumerate(alone):
        for sa, sb in ((a.k_rows[0], batch.k_rows[r]), (a.v_rows[0], batch.v_rows[r])):
            for x, y in zip(_stream_state(sa), _stream_state(sb)):
                assert (x is None and y is None) or torch.equal(x, y)
            assert sa.nbytes() == sb.nbytes()  # a row keeps no share of its group's storage
        assert a.byte_log[0] == batch.byte_log[r]
    grouped = "fixed_range" not in (m.stream_specs()[0].rule, m.stream_specs()[1].rule)
    assert (max(seen_batches, default=1) > 1) == grouped  # the group path did run (and only where it applies)
