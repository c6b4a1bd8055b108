"""AWQ's scale search against its references (llm-awq ``auto_scale``, AutoAWQ
``AwqQuantizer``): with ``search=reference`` every group's α is the one minimising the
output MSE of its own sub-module (self-attention for q/k/v, o_proj, MLP for gate/up,
down_proj) on the *float* model's inputs of that sub-module; ``search=sequential`` keeps
the earlier whole-block search on the already-quantized chain.

The grid search here is re-implemented from scratch on a float copy of the model, whose
sub-module inputs are recorded with hooks during ordinary full forward passes (no part of
the calibration pass is used)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from vlmcompress.eval.calibration import FixedBatches
from vlmcompress.methods import CompressionContext
from vlmcompress.methods.weights.awq import AWQ
from vlmcompress.models.llava import LlavaAdapter
from vlmcompress.models.tiny import tiny_llava
from vlmcompress.quant import fake_quantize

torch.set_num_threads(1)

LAYERS = 2
QUESTIONS = ["what color is the big square?", "how many circles are there?", "is there a red triangle left of the blue one?"]
# the four groups of a Llama block, in AWQ's order: (linears, module whose output is compared)
GROUPS = [
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    (("self_attn.o_proj",), "self_attn.o_proj"),
    (("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    (("mlp.down_proj",), "mlp.down_proj"),
]


def _model(layers=LAYERS, seed=0):
    # kv_heads == heads: o_proj has the width of v_proj, so all four groups are scaled
    return tiny_llava(layers=layers, kv_heads=4, seed=seed)


def _batches(adapter, n_batches=2, per=3, seed=0):
    """Two batches of three samples with prompts of different lengths (so, padding)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        imgs = [PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(per)]
        out.append(adapter.build_inputs(imgs, [QUESTIONS[(b + i) % 3] for i in range(per)]))
    return out


def _run_awq(layers=LAYERS, seed=0, **knobs):
    """AWQ on a fresh tiny model: ``(model, adapter, ctx)``."""
    model, processor = _model(layers, seed)
    adapter = LlavaAdapter(model, processor)
    ctx = CompressionContext(model, adapter, processor, calibration=FixedBatches(_batches(adapter)))
    method = AWQ(**{"bits": 3, "group_size": 32, **knobs})
    method.validate()
    method.prepare(ctx)
    return model, adapter, ctx


def _decoder_alphas(ctx, layers=LAYERS):
    alphas = ctx.info["awq_alphas"]
    return alphas[-layers * len(GROUPS) :]  # the decoder's groups come last


# ------------------------------------------------------------------ independent grid search


def _record_float_inputs(model, adapter, batches):
    """``{(block, sub-module): [(args, kwargs, mask)]}`` from full forwards of the float model."""
    layers = adapter.decoder_layers
    rec: dict[tuple[int, str], list] = {}
    handles = []
    current = {}
    for i, layer in enumerate(layers):
        for _, sub in GROUPS:
            mod = layer.get_submodule(sub)

            def hook(m, args, kwargs, key=(i, sub)):
                rec.setdefault(key, []).append((args, kwargs, current["mask"]))

            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch["attention_mask"].bool()
                model(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return rec


def _real(t, mask):
    return t[mask] if t.dim() == 3 else t.reshape(-1, t.shape[-1])


def _reference_alpha(layer, sub, linear_names, calls, bits, group_size, n_grid=20):
    """The α (and the loss per α) of the reference grid search for one group."""
    module = layer.get_submodule(sub)
    lins = [layer.get_submodule(n) for n in linear_names]
    # the input of the group's Linears (self_attn and mlp get it as hidden_states)
    x = torch.cat([_real(args[0] if args else kwargs["hidden_states"], mask).float() for args, kwargs, mask in calls])
    x_mean = x.abs().mean(0)

    def out(args, kwargs):
        y = module(*args, **kwargs)
        return y[0] if isinstance(y, tuple) else y

    with torch.no_grad():
        ref = [out(a, k) for a, k, _ in calls]
        saved = [lin.weight.data.clone() for lin in lins]
        losses = []
        for g in range(n_grid):
            s = x_mean.pow(g / n_grid).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for lin, w in zip(lins, saved):
                q = fake_quantize(w.float() * s, bits, (1, group_size), zero_point="int", param_dtype=torch.float16)
                lin.weight.data.copy_(q / s)
            sq, n = 0.0, 0
            for (a, k, mask), r in zip(calls, ref):
                d = _real((out(a, k).float() - r.float()) ** 2, mask)
                sq += float(d.sum())
                n += d.numel()
            losses.append(sq / n)
            for lin, w in zip(lins, saved):
                lin.weight.data.copy_(w)
    return losses


@pytest.fixture(scope="module")
def reference_run():
    return _run_awq(search="reference")


# (layers, seed, bits): on the first model the earlier search (quantized chain, block MSE)
# differs from the reference in block 1; on the second, already in block 0's o_proj, where
# the inputs are the same and only the loss (block output vs o_proj output) differs
@pytest.mark.parametrize("layers,seed,bits", [(LAYERS, 0, 3), (1, 0, 2)])
def test_reference_alpha_minimises_the_submodule_mse_on_float_inputs(layers, seed, bits, reference_run):
    """Every group's α (all blocks) is the argmin of its sub-module's output MSE, with the
    sub-module fed the float model's activations (blocks > 0 included)."""
    _, _, ctx = reference_run if (layers, seed, bits) == (LAYERS, 0, 3) else _run_awq(layers, seed, search="reference", bits=bits)
    chosen = _decoder_alphas(ctx, layers)
    float_model, processor = _model(layers, seed)
    adapter = LlavaAdapter(float_model, processor)
    rec = _record_float_inputs(float_model, adapter, _batches(adapter))
    k = 0
    for i, layer in enumerate(adapter.decoder_layers):
        for names, sub in GROUPS:
            losses = _reference_alpha(layer, sub, names, rec[(i, sub)], bits=bits, group_size=32)
            best = int(np.argmin(losses))
            got = int(round(chosen[k] * 20))
            # equal, unless the two are a floating-point tie
            assert got == best or losses[got] <= losses[best] * (1 + 1e-6), (i, sub, chosen[k], best / 20, losses)
            k += 1
    assert k == len(chosen) == layers * len(GROUPS)


def test_reference_inputs_of_later_blocks_are_the_float_models(reference_run):
    """Block 1 gets the same α and ends with the same weights whether or not block 0 was
    quantized before it: its inputs are the float model's."""
    full_model, adapter, full_ctx = reference_run
    part_model, _, part_ctx = _run_awq(search="reference", targets=r"language_model\.layers\.1\.")
    assert part_ctx.info["awq_alphas"] == full_ctx.info["awq_alphas"][len(GROUPS) :]
    full_sd, part_sd = full_model.state_dict(), part_model.state_dict()
    later = [n for n in full_sd if ".layers.1." in n]
    assert later and all(torch.equal(full_sd[n], part_sd[n]) for n in later)
    assert not torch.equal(full_sd[next(n for n in full_sd if ".layers.0.mlp.down_proj" in n)], part_sd[next(n for n in part_sd if ".layers.0.mlp.down_proj" in n)])

    # whereas the sequential search feeds block 1 the quantized block 0's outputs
    seq_full, _, _ = _run_awq(search="sequential")
    seq_part, _, _ = _run_awq(search="sequential", targets=r"language_model\.layers\.1\.")
    a, b = seq_full.state_dict(), seq_part.state_dict()
    assert any(not torch.equal(a[n], b[n]) for n in later if n.endswith("proj.weight"))


def test_reference_decoder_ignores_quantized_vision_tower(reference_run):
    """With the vision tower quantized too, the decoder is still calibrated on the float
    model's activations: same decoder α as with the decoder alone."""
    _, _, ctx = reference_run
    _, _, both = _run_awq(search="reference", targets="decoder+vision")
    assert len(both.info["awq_alphas"]) > LAYERS * len(GROUPS)
    assert _decoder_alphas(both) == _decoder_alphas(ctx)


# the α that the earlier implementation (whole-block MSE on the quantized chain) chose on
# this model and these batches, recorded before the reference search was added
SEQUENTIAL_ALPHAS = {
    (3, True): [0.5, 0.3, 0.75, 0.3, 0.7, 0.15, 0.5, 0.15],
    (2, True): [0.8, 0.3, 0.55, 0.3, 0.9, 0.25, 0.05, 0.4],
    (3, False): [0.5, 0.3, 0.75, 0.3, 0.4, 0.05, 0.45, 0.3],
}


@pytest.mark.parametrize("bits,clip", list(SEQUENTIAL_ALPHAS))
def test_sequential_search_reproduces_the_earlier_alphas(bits, clip):
    _, _, ctx = _run_awq(search="sequential", bits=bits, clip=clip)
    assert ctx.info["awq_alphas"] == SEQUENTIAL_ALPHAS[(bits, clip)]


def test_search_knob_is_checked():
    from vlmcompress.errors import ConfigError
    from vlmcompress.methods import build_setting

    with pytest.raises(ConfigError, match="search"):
        build_setting("awq(search=blockwise)")
    assert build_setting("awq").methods[0].search == "reference"


def test_linear_group_loss_from_the_gram_matrix_is_the_direct_loss():
    """With more input rows than input features the single-Linear loss is evaluated as
    sum((E G) ∘ E) / (n · out), G = XᵀX; it must equal mean((X Eᵀ)²) computed directly."""
    from vlmcompress.methods.weights.awq import SubmoduleLoss, scaled_fake_quant

    g = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(32, 12, bias=False)
    lin.weight.data = torch.randn(12, 32, generator=g)
    x = torch.randn(2, 40, 32, generator=g) * torch.linspace(0.1, 4.0, 32)  # 80 rows > 32 inputs
    loss = SubmoduleLoss(lin, [((x[:1],), {}), ((x[1:],), {})], [None, None], [lin], bits=3, group_size=16)
    assert loss.gram is not None and loss.rows is None
    rows = x.reshape(-1, 32).double()
    for alpha in (0.0, 0.3, 0.7):
        s = x.abs().reshape(-1, 32).mean(0) ** alpha
        s = s / (s.max() * s.min()).sqrt()
        err = scaled_fake_quant(lin.weight.data, s, 3, 16).double() - lin.weight.data.double()
        direct = float(((rows @ err.T) ** 2).mean())
        assert loss(s) == pytest.approx(direct, rel=1e-5)
