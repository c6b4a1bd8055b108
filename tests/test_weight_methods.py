"""Weight quantization and pruning: the pure math against independent computations, and
the methods on tiny LLaVA / Qwen2-VL models (every part a real transformers class)."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from vlmcompress.errors import ConfigError
from vlmcompress.eval.calibration import FixedBatches
from vlmcompress.footprint import held_weight_bytes
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.weights.awq import awq_search, fold_scales, linear_output_mse, scaled_fake_quant
from vlmcompress.methods.weights.calibration import SequentialPass
from vlmcompress.methods.weights.ecoflap import allocate_sparsity, zeroth_order_scores
from vlmcompress.methods.weights.gptq import gptq_quantize
from vlmcompress.methods.weights.magnitude import magnitude_mask
from vlmcompress.methods.weights.memory import quant_bits_analytic
from vlmcompress.methods.weights.packed import PackedLinear
from vlmcompress.methods.weights.rtn import rtn_quantize_weight
from vlmcompress.methods.weights.sparsegpt import sparsegpt_prune
from vlmcompress.methods.weights.targets import select_linears
from vlmcompress.methods.weights.wanda import wanda_mask
from vlmcompress.models.llava import LlavaAdapter
from vlmcompress.models.qwen2_vl import Qwen2VLAdapter
from vlmcompress.models.tiny import tiny_llava, tiny_qwen2_vl
from vlmcompress.quant import dequantize, fake_quantize, unpack

torch.set_num_threads(1)


def correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    mix = torch.eye(d) + 0.9 * torch.randn(d, d, generator=g) / math.sqrt(d)
    return (z @ mix) * (1 + 3 * torch.rand(d, generator=g))  # correlated, uneven scales


def output_error(X, W, Wq):
    return float(((X @ W.T - X @ Wq.T) ** 2).sum())


# ------------------------------------------------------------------ GPTQ


@pytest.mark.parametrize("bits,group", [(3, 16), (4, 32), (2, 64)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group):
    X = correlated_inputs()
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    H = 2 / X.shape[0] * X.T @ X
    codes, scale, zero = gptq_quantize(W, H, bits, group, damp=0.01, block_size=16)
    Wg = dequantize(codes, scale, zero, bits, (1, group), "int")
    Wr = fake_quantize(W, bits, (1, group), zero_point="int", param_dtype=torch.float16)
    assert output_error(X, W, Wg) < 0.8 * output_error(X, W, Wr)
    codes_ao, s_ao, z_ao = gptq_quantize(W, H, bits, group, act_order=True, block_size=16)
    assert output_error(X, W, dequantize(codes_ao, s_ao, z_ao, bits, (1, group), "int")) < output_error(X, W, Wr)


def test_gptq_with_diagonal_hessian_is_rtn():
    # With H diagonal, chol(H⁻¹) is diagonal: no error reaches other columns, so GPTQ
    # rounds every weight to nearest with the same group params as RTN.
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    H = torch.diag(torch.rand(32) + 0.5)
    codes, scale, zero = gptq_quantize(W, H, 3, 8, block_size=8)
    qw = rtn_quantize_weight(W, 3, (1, 8), zero_point="int")
    assert torch.equal(codes, unpack(qw.qweight, 3, 32))
    assert torch.equal(scale.half(), qw.scale)


def test_gptq_block_size_does_not_change_the_result():
    X = correlated_inputs(d=32)
    W = torch.randn(8, 32)
    H = 2 / X.shape[0] * X.T @ X
    a = gptq_quantize(W.double(), H.double(), 4, 8, block_size=32)[0]
    b = gptq_quantize(W.double(), H.double(), 4, 8, block_size=4)[0]
    assert (a != b).float().mean() < 0.01  # equal up to float ties


# ------------------------------------------------------------------ AWQ


def test_awq_chosen_alpha_lowers_output_mse():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(256, 64, generator=g)
    X[:, :4] *= 20  # a few salient input channels, as in LLM activations
    W = torch.randn(48, 64, generator=g)
    x_mean = X.abs().mean(0)
    s, alpha, losses = awq_search(x_mean, lambda s: linear_output_mse(X, [W], s, 3, 32), n_grid=20)
    assert len(losses) == 20 and alpha > 0
    assert min(losses) == losses[int(round(alpha * 20))] < 0.9 * losses[0]
    # the search's loss is the real output MSE of the scaled quantization
    ref = float(((X @ W.T - X @ scaled_fake_quant(W, s, 3, 32).T) ** 2).mean())
    assert ref == pytest.approx(min(losses), rel=1e-5)


def test_awq_fold_keeps_the_float_model():
    model, processor = tiny_llava()
    batch = _batches(LlavaAdapter(model, processor), 1, seed=0)[0]
    with torch.no_grad():
        ref = model(**batch).logits
        layer = model.model.language_model.layers[0]
        s = torch.rand(model.config.text_config.hidden_size) + 0.5
        fold_scales(layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], s)
        s2 = torch.rand(model.config.text_config.intermediate_size) + 0.5
        fold_scales(layer.mlp.up_proj, [layer.mlp.down_proj], s2)
        out = model(**batch).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_awq_on_block_output_lowers_mse_against_alpha_zero():
    """On a real decoder block: the α AWQ picks gives a block-output MSE no worse than α=0."""
    model, processor = tiny_llava()
    adapter = LlavaAdapter(model, processor)
    sp = SequentialPass(model, adapter, _batches(adapter, 2, seed=1))
    inputs = sp.capture()
    from vlmcompress.methods.weights.calibration import BlockRun

    layer = adapter.decoder_layers[0]
    block = BlockRun(layer, inputs, [b["attention_mask"].bool() for b in sp.batches])
    reference = block.outputs()
    lins = [layer.mlp.gate_proj, layer.mlp.up_proj]
    feats = []
    h = lins[0].register_forward_hook(lambda m, a, o: feats.append(a[0].reshape(-1, a[0].shape[-1])))
    block.outputs()
    h.remove()
    x_mean = torch.cat(feats).abs().mean(0)
    originals = [lin.weight.data.clone() for lin in lins]

    def loss(s):
        for lin, w in zip(lins, originals):
            lin.weight.data.copy_(scaled_fake_quant(w, s, 2, 32))
        try:
            return block.mse(reference)
        finally:
            for lin, w in zip(lins, originals):
                lin.weight.data.copy_(w)

    _, alpha, losses = awq_search(x_mean, loss, 20)
    assert min(losses) <= losses[0]
    assert losses[0] > 0


# ------------------------------------------------------------------ pruning masks


def _brute_row_mask(score, k):
    mask = np.zeros(score.shape, dtype=bool)
    for r in range(score.shape[0]):
        order = sorted(range(score.shape[1]), key=lambda j: (score[r, j], j))
        mask[r, order[:k]] = True
    return mask


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.7])
def test_wanda_mask_exact_per_row(sparsity):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(16, 64, generator=g)
    norm = torch.rand(64, generator=g) * 5
    mask = wanda_mask(W, norm, sparsity)
    k = int(64 * sparsity)
    assert (mask.sum(1) == k).all()
    score = (W.abs() * norm).double().numpy()
    assert np.array_equal(mask.numpy(), _brute_row_mask(score, k))


@pytest.mark.parametrize("fn", ["wanda", "sparsegpt", "magnitude"])
def test_two_four_masks(fn):
    g = torch.Generator().manual_seed(5)
    W = torch.randn(16, 64, generator=g)
    X = correlated_inputs(d=64)
    if fn == "wanda":
        mask = wanda_mask(W, X.norm(dim=0), 0.0, (2, 4))
    elif fn == "magnitude":
        mask = magnitude_mask(W, 0.0, (2, 4))
    else:
        Wp, mask = sparsegpt_prune(W, 2 / 512 * X.T @ X, 0.0, (2, 4), block_size=16)
        assert (Wp[mask] == 0).all()
    groups = mask.reshape(16, 16, 4)
    assert (groups.sum(-1) == 2).all()


@pytest.mark.parametrize("mask_mode", ["row", "block"])
@pytest.mark.parametrize("sparsity", [0.5, 0.25, 0.6])
def test_sparsegpt_mask_counts_and_better_than_wanda(sparsity, mask_mode):
    X = correlated_inputs(d=64)
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(6))
    H = 2 / X.shape[0] * X.T @ X
    Wp, mask = sparsegpt_prune(W, H, sparsity, block_size=16, mask=mask_mode)
    if mask_mode == "row":  # exact per-row sparsity
        assert (mask.sum(1) == int(64 * sparsity)).all()
    else:  # int(numel · sparsity) per [24, 16] block, rows compared jointly
        assert all(int(mask[:, i : i + 16].sum()) == int(24 * 16 * sparsity) for i in range(0, 64, 16))
    assert (Wp[mask] == 0).all()
    Ww = W.masked_fill(wanda_mask(W, X.norm(dim=0), sparsity), 0)
    assert output_error(X, W, Wp) < output_error(X, W, Ww)


def test_magnitude_mask_is_layerwise_smallest():
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    mask = magnitude_mask(W, 0.4)
    k = int(W.numel() * 0.4)
    thresh = np.sort(np.abs(W.numpy()).ravel())[k - 1]
    assert mask.sum() == k
    assert np.array_equal(mask.numpy(), np.abs(W.numpy()) <= thresh)


# ------------------------------------------------------------------ ECoFLaP pieces


def test_allocate_sparsity_by_hand():
    assert allocate_sparsity([1.0, 1.0, 1.0], [10, 10, 10], 0.5) == pytest.approx([0.5, 0.5, 0.5])
    # kept ∝ importance: normalised importance [0.5, 1.5] -> kept [0.25, 0.75]
    assert allocate_sparsity([1.0, 3.0], [10, 10], 0.5) == pytest.approx([0.75, 0.25], abs=1e-9)
    # the cap: the unimportant block stops at 0.9, the other keeps the rest of the budget
    assert allocate_sparsity([1.0, 100.0], [10, 10], 0.5, 0.9) == pytest.approx([0.9, 0.1], abs=1e-9)


def test_zeroth_order_score_of_a_linear_loss():
    a = [torch.randn(3, 4), torch.randn(5)]
    params = [torch.zeros(3, 4), torch.zeros(5)]
    loss = lambda: float(sum((ai * p).sum() for ai, p in zip(a, params)))  # noqa: E731
    scores = zeroth_order_scores(loss, [[params[0]], [params[1]]], eps=1e-3, seed=11)
    gen = torch.Generator().manual_seed(11)
    z0 = torch.randn(3, 4, generator=gen)
    z1 = torch.randn(5, generator=gen)
    assert scores == pytest.approx([abs(float((a[0] * z0).sum())), abs(float((a[1] * z1).sum()))], rel=1e-3)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params)  # restored


# ------------------------------------------------------------------ memory


def test_bytes_counted_match_formula():
    W = torch.randn(4, 256)
    qw = rtn_quantize_weight(W, 2, (1, 128))  # float zero: fp16 scale + fp16 zero
    assert qw.nbytes() == 4 * 256 * 2 // 8 + 4 * 2 * (2 + 2) == 288
    assert quant_bits_analytic(4, 256, 2, (1, 128), "float") == 4 * 256 * 2.25
    qi = rtn_quantize_weight(W, 3, (1, 128), zero_point="int")  # int zero: packed 3-bit codes
    assert qi.nbytes() == 4 * (256 // 8 * 3) + 4 * 2 * 2 + 4 * 3  # codes + fp16 scales + 2 zeros in 3 bytes (padded)


# ------------------------------------------------------------------ on models


def _batches(adapter, n, seed):
    rng = np.random.default_rng(seed)
    questions = ["what color is the big square?", "how many circles are there?", "is there a red triangle?"]
    imgs = [PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]
    return [adapter.build_inputs(imgs, [questions[i % 3] for i in range(n)])]


FAMILIES = [(tiny_llava, LlavaAdapter), (tiny_qwen2_vl, Qwen2VLAdapter)]


def _apply(make, adapter_cls, spec, seed=0):
    model, processor = make()
    adapter = adapter_cls(model, processor)
    ctx = CompressionContext(model, adapter, processor, calibration=FixedBatches(lambda: _batches(adapter, 3, seed=9)))
    for m in build_setting(spec).ordered():
        m.prepare(ctx)
    return model, adapter, ctx


@pytest.mark.parametrize("make,adapter_cls", FAMILIES)
@pytest.mark.parametrize("spec", ["rtn(bits=16)", "gptq(bits=16)", "awq(bits=16)", "outlier(bits=16)", "magnitude(sparsity=0)", "wanda(sparsity=0)", "sparsegpt(sparsity=0)", "ecoflap(sparsity=0)"])
def test_noop_settings_leave_outputs_unchanged(make, adapter_cls, spec):
    ref_model, processor = make()
    batch = _batches(adapter_cls(ref_model, processor), 2, seed=3)[0]
    model, _, ctx = _apply(make, adapter_cls, spec)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref_model(**batch).logits)
    assert ctx.info["weight_bytes"] == ctx.info["weight_bytes_original"]


@pytest.mark.parametrize("make,adapter_cls", FAMILIES)
@pytest.mark.parametrize("spec", ["gptq(bits=4,group_size=32)", "awq(bits=3,group_size=32)", "wanda(nm=2:4)", "sparsegpt(sparsity=0.5)", "ecoflap(sparsity=0.5)", "outlier(bits=2,outlier_frac=0.05)"])
def test_methods_run_on_every_family(make, adapter_cls, spec):
    ref_model, processor = make()
    batch = _batches(adapter_cls(ref_model, processor), 2, seed=3)[0]
    model, adapter, ctx = _apply(make, adapter_cls, spec)
    with torch.no_grad():
        out, ref = model(**batch).logits, ref_model(**batch).logits
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    vision_before = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():  # vision tower, projector, embeddings, lm_head untouched
        if "language_model.layers" not in name:
            assert torch.equal(p, vision_before[name]), name
    if spec.startswith(("wanda", "sparsegpt")):
        for lin in select_linears(model, adapter, "decoder").values():
            assert (lin.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6)
    if ctx.info.get("calibration_samples") is not None:
        assert ctx.info["calibration_samples"] == 3 and ctx.info["calibration_s"] >= 0
    assert ctx.info["weight_bytes_analytic"] > 0


@pytest.mark.parametrize("spec", ["rtn(bits=3,group_size=32)", "gptq(bits=4,group_size=16)", "outlier(bits=2,outlier_frac=0.05)", "awq(bits=4,group_size=32)"])
def test_packed_storage_matches_simulated_and_shrinks_memory(spec):
    sim, adapter, ctx_sim = _apply(tiny_llava, LlavaAdapter, spec)
    packed, _, ctx_p = _apply(tiny_llava, LlavaAdapter, spec[:-1] + ",storage=packed)")
    batch = _batches(adapter, 2, seed=3)[0]
    with torch.no_grad():
        a, b = packed(**batch).logits, sim(**batch).logits
    if spec.startswith("awq"):  # on the int4 kernel, with bf16 activations (test_weight_kernels.py)
        assert (a - b).abs().max() < 0.05 * b.abs().max()
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    from vlmcompress.methods.weights.kernels import Int4KernelLinear

    # 4-bit groups of 32 run on the int4 kernel, the other formats dequantize
    assert any(isinstance(m, Int4KernelLinear if spec.startswith("awq") else PackedLinear) for m in packed.modules())
    assert ctx_p.info["weight_storage"] == "packed"
    assert ctx_sim.info["weight_storage"] == "simulated"
    # bytes counted from the packed model's tensors = bytes counted in simulated mode < original
    # (dense floats at the reference dtype, float16 for this float32 model)
    assert ctx_p.info["weight_bytes"] == ctx_sim.info["weight_bytes"] < ctx_sim.info["weight_bytes_original"]
    # what the process holds (float32 dense layers on a CPU) shrinks too
    assert ctx_p.info["weight_bytes_in_memory"] == held_weight_bytes(packed) < ctx_sim.info["weight_bytes_in_memory"] == held_weight_bytes(sim)


def test_targets_default_and_opt_in():
    model, processor = tiny_llava(layers=2)
    adapter = LlavaAdapter(model, processor)
    dec = select_linears(model, adapter, "decoder")
    assert len(dec) == 7 * 2 and all("language_model.layers" in n for n in dec)
    both = select_linears(model, adapter, "decoder+vision+projector")
    assert any("vision_tower" in n for n in both) and any("multi_modal_projector" in n for n in both)
    assert "lm_head" not in "".join(both) and "lm_head" in "".join(select_linears(model, adapter, "lm_head"))
    assert set(select_linears(model, adapter, r"mlp\.down_proj")) == {n for n in dec if n.endswith("down_proj")}


@pytest.mark.parametrize(
    "spec,knob",
    [("rtn(bits=5)", "bits"), ("gptq(bits=1)", "bits"), ("wanda(sparsity=1.2)", "sparsity"), ("sparsegpt(nm=3:2)", "nm"), ("outlier(outlier_frac=0.2)", "outlier_frac"), ("awq(granularity=group)", "granularity"), ("ecoflap(max_layer_sparsity=0.3)", "max_layer_sparsity"), ("rtn(targets=decoder+[)", "targets")],
)
def test_wrong_knobs_are_refused_when_built(spec, knob):
    with pytest.raises(ConfigError, match=knob):
        build_setting(spec)


@pytest.mark.parametrize("spec", ["rtn(bits=4,group_size=96)", "gptq(group_size=4096)", "awq(group_size=128)", "wanda(nm=2:3)"])
def test_group_size_checked_against_layers_before_any_work(spec):
    model, processor = tiny_llava()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    ctx = CompressionContext(model, LlavaAdapter(model, processor), processor, calibration=FixedBatches(lambda: calls.append(1) or []))
    (method,) = build_setting(spec).methods
    with pytest.raises(ConfigError, match="group_size|nm"):
        method.prepare(ctx)
    assert not calls
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
