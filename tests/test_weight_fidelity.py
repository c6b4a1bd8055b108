"""Fidelity of GPTQ, SparseGPT and ECoFLaP to their reference implementations.

Every expected value here is worked out independently of the code under test: the
reference's rule written out by hand on small tensors (float64 where an algorithm
runs), or numbers computed by hand in the comments.  Each test fails on the earlier
behaviour (absmax/(2^(b-1)-1) symmetric scale; group params from updated weights only;
per-row SparseGPT mask; one joint ECoFLaP direction per block and kept fraction ∝ score).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmcompress.errors import ConfigError
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.weights.ecoflap import allocate_sparsity, allocate_sparsity_floor, zeroth_order_layer_scores
from vlmcompress.methods.weights.gptq import gptq_quantize
from vlmcompress.methods.weights.sparsegpt import sparsegpt_prune
from vlmcompress.methods.weights.targets import block_index_of, select_linears

torch.set_num_threads(1)


def correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + 0.9 * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return (z @ mix) * (1 + 3 * torch.rand(d, generator=g, dtype=torch.float64))


def hessian(X):
    return 2 / X.shape[0] * X.T @ X


def upper_chol_of_damped_inverse(H, damp=0.01):
    """The reference's ``Hinv``: upper Cholesky factor of ``(H + damp·mean(diag H)·I)⁻¹``,
    here through an explicit inverse (the references go through ``cholesky_inverse``)."""
    Hd = H + damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(Hd)).T  # U with Uᵀ U = Hd⁻¹


# ------------------------------------------------------------------ GPTQ: symmetric quantizer


def reference_sym_params(row, bits):
    """GPTQ ``Quantizer(sym=True)`` on one row with a negative value: ``xmax = max|x|``,
    ``xmin = -xmax``, ``scale = (xmax - xmin) / maxq``, ``zero = (maxq + 1) / 2``."""
    maxq = 2**bits - 1
    xmax = max(abs(v) for v in row)
    return (xmax - (-xmax)) / maxq, (maxq + 1) / 2


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_symmetric_scale_and_full_code_range(bits):
    maxq = 2**bits - 1
    rows = [
        [-1.0, 0.5, 0.25, 1.0, -0.3, 0.0, 0.7, -0.6],  # +max and -max both present
        [0.2, -0.4, 0.4, 0.1, -0.05, 0.3, -0.2, 0.15],
        [-2.0, 0.1, 0.3, -0.7, 1.1, -1.9, 0.6, 0.05],
    ]
    W = torch.tensor(rows, dtype=torch.float64)
    H = torch.eye(8, dtype=torch.float64)  # diagonal H: no error reaches other columns, GPTQ = round to nearest
    codes, scale, zero = gptq_quantize(W, H, bits, 8, symmetric=True, block_size=8)
    for r, row in enumerate(rows):
        s_ref, z_ref = reference_sym_params(row, bits)
        s16 = float(torch.tensor(s_ref).half())  # the scale is stored in fp16
        assert float(scale[r, 0]) == s16 and float(zero[r, 0]) == z_ref == 2 ** (bits - 1)
        expect = [min(max(round(v / s16) + z_ref, 0), maxq) for v in row]  # python round: half to even, as torch
        assert codes[r].tolist() == expect
    # -max|x| maps to code 0 and +max|x| to maxq: the whole range is used
    assert int(codes[0].min()) == 0 and int(codes[0].max()) == maxq
    assert int(codes[2].min()) == 0  # the -2.0
    # the old absmax / (2^(b-1) - 1) scale is not what is stored
    assert float(scale[0, 0]) != pytest.approx(1.0 / (2 ** (bits - 1) - 1))


# ------------------------------------------------------------------ GPTQ: static groups


def reference_asym_params(cols, bits):
    """GPTQ ``Quantizer(sym=False)`` per row: ``xmin = min(x, 0)``, ``xmax = max(x, 0)``,
    ``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)``; the scale then
    stored in fp16 (this project's storage dtype)."""
    maxq = 2**bits - 1
    xmin = torch.clamp(cols.min(1).values, max=0)
    xmax = torch.clamp(cols.max(1).values, min=0)
    s = (xmax - xmin) / maxq
    z = torch.round(-xmin / s)
    return s.half().double(), z


def reference_gptq_static(W, H, bits, G, symmetric, damp=0.01):
    """GPTQ with static groups, one column at a time (no lazy blocks), float64: the group
    params come from the original weights; each column is rounded and its error
    ``(w - q) / U_jj`` spread over the later columns through row ``j`` of ``U``."""
    maxq = 2**bits - 1
    W = W.clone()
    params = []
    for g in range(W.shape[1] // G):
        cols = W[:, g * G : (g + 1) * G]
        if symmetric:
            s = (2 * cols.abs().max(1).values / maxq).half().double()
            params.append((s, torch.full_like(s, (maxq + 1) / 2)))
        else:
            params.append(reference_asym_params(cols, bits))
    U = upper_chol_of_damped_inverse(H, damp)
    codes = torch.zeros(W.shape, dtype=torch.long)
    for j in range(W.shape[1]):
        s, z = params[j // G]
        q = torch.clamp(torch.round(W[:, j] / s) + z, 0, maxq)
        codes[:, j] = q.long()
        err = (W[:, j] - (q - z) * s) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
    return codes, torch.stack([p[0] for p in params], 1), torch.stack([p[1] for p in params], 1)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_static_groups_params_from_original_weights(bits, symmetric):
    X = correlated_inputs(d=64)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = hessian(X)
    codes, scale, zero = gptq_quantize(W, H, bits, 16, block_size=32, symmetric=symmetric, static_groups=True)
    ref_codes, ref_scale, ref_zero = reference_gptq_static(W, H, bits, 16, symmetric)
    assert torch.equal(scale.double(), ref_scale)
    assert torch.equal(zero.double(), ref_zero)
    assert torch.equal(codes.long(), ref_codes)
    # the dynamic (default) rule takes later groups' params from the error-updated
    # weights: they differ from the original weights' params
    _, scale_dyn, _ = gptq_quantize(W, H, bits, 16, block_size=32, symmetric=symmetric)
    assert torch.equal(scale_dyn[:, 0].double(), ref_scale[:, 0])  # the first group sees no update yet
    assert not torch.equal(scale_dyn[:, 1:].double(), ref_scale[:, 1:])


def test_gptq_static_groups_knob_reaches_the_method():
    (method,) = build_setting("gptq(bits=4,static_groups=true,symmetric=true)").methods
    assert method.static_groups is True and method.symmetric is True
    assert build_setting("gptq(bits=4)").methods[0].static_groups is False


# ------------------------------------------------------------------ SparseGPT: joint block mask


def reference_sparsegpt(W, H, sparsity, block, damp=0.01):
    """SparseGPT's ``fasterprune`` (unstructured), one column at a time, float64.

    At each block start the costs ``w² / U_jj²`` of the whole ``[rows, block]`` slice
    (weights as updated by the earlier blocks) are sorted together and the reference's
    threshold ``t = sorted(cost)[int(numel · sparsity)]`` taken; the reference prunes
    ``cost <= t``.  Returns the weights, the mask pruned with ``cost < t`` (the
    ``int(numel · sparsity)`` lowest) and, per block, the reference's ``<=`` mask."""
    W = W.clone()
    U = upper_chol_of_damped_inverse(H, damp)
    rows, cols = W.shape
    mask = torch.zeros(W.shape, dtype=torch.bool)
    ref_le = []
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        cost = W[:, i1:i2] ** 2 / U.diagonal()[i1:i2] ** 2
        t = torch.sort(cost.flatten()).values[int(cost.numel() * sparsity)]
        ref_le.append(cost <= t)
        mask[:, i1:i2] = cost < t
        for j in range(i1, i2):
            w = W[:, j].clone()
            q = torch.where(mask[:, j], torch.zeros_like(w), w)
            err = (w - q) / U[j, j]
            W[:, j:] -= torch.outer(err, U[j, j:])
            W[:, j] = q
    return W, mask, ref_le


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_sparsegpt_block_mask_is_the_reference_joint_threshold(sparsity):
    X = correlated_inputs(d=32, seed=2)
    H = hessian(X)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Wp, mask = sparsegpt_prune(W, H, sparsity, block_size=16)
    ref_W, ref_mask, ref_le = reference_sparsegpt(W, H, sparsity, 16)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(Wp, ref_W, rtol=0, atol=1e-9)
    for b, le in enumerate(ref_le):  # the reference's `<=` prunes exactly one weight more per block
        ours = mask[:, 16 * b : 16 * (b + 1)]
        assert int(le.sum()) == int(ours.sum()) + 1 == int(12 * 16 * sparsity) + 1
        assert (ours <= le).all()
    counts = mask.sum(1)
    assert len(set(counts.tolist())) > 1  # rows are compared jointly: per-row counts differ
    assert int(counts.sum()) == 2 * int(12 * 16 * sparsity)


def test_sparsegpt_row_mask_keeps_the_exact_per_row_rule():
    X = correlated_inputs(d=32, seed=2)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, mask = sparsegpt_prune(W, hessian(X), 0.5, block_size=16, mask="row")
    assert (mask.sum(1) == 16).all()
    with pytest.raises(ConfigError, match="mask"):
        build_setting("sparsegpt(mask=column)")


# ------------------------------------------------------------------ ECoFLaP: allocation


def test_floor_allocation_by_hand():
    # floor = ceil(100 · (1 - 0.6)) = 40 each; budget int(200 · 0.5) = 100; rest 20 shared
    # 1:3 -> +5, +15 -> keep 45, 55 -> sparsity 0.55, 0.45
    assert allocate_sparsity_floor([1.0, 3.0], [100, 100], 0.5, 0.6) == pytest.approx([0.55, 0.45], abs=1e-12)
    # (the kept-fraction-∝-score rule gives 0.6, 0.4 here)
    assert allocate_sparsity([1.0, 3.0], [100, 100], 0.5, 0.6) == pytest.approx([0.6, 0.4], abs=1e-9)
    # sizes differ; the share is ∝ the score, not parameter-weighted:
    # floor ceil(200·0.2)=40, 20, 20 -> 80; budget 200; rest 120 split 3:1:1 -> +72, +24, +24
    # -> keep 112, 44, 44 of 200, 100, 100
    assert allocate_sparsity_floor([3.0, 1.0, 1.0], [200, 100, 100], 0.5, 0.8) == pytest.approx([0.44, 0.56, 0.56], abs=1e-12)
    # a full group leaves the sharing: floor 10, 10; budget 140; rest 120 -> +ceil(0.12)=1,
    # +ceil(119.88)=120 -> keep 11, 130 -> capped 100; rest 29 all to the first -> 40
    assert allocate_sparsity_floor([1.0, 1000.0], [100, 100], 0.3, 0.9) == pytest.approx([0.6, 0.0], abs=1e-12)
    # equal scores and sizes: the uniform target
    assert allocate_sparsity_floor([2.0, 2.0, 2.0], [10, 10, 10], 0.5, 0.9) == pytest.approx([0.5, 0.5, 0.5], abs=1e-12)


def test_floor_allocation_trims_the_ceiling_overshoot():
    # floor 10, 10; budget 100; rest 80 -> +ceil(80/101)=1, +ceil(8000/101)=80 -> keep 11, 90
    # (101 > 100): one weight is taken back from the group keeping the most -> 11, 89.
    # (The reference's trim step adds it instead, a sign slip: 11, 91.)
    assert allocate_sparsity_floor([1.0, 100.0], [100, 100], 0.5, 0.9) == pytest.approx([0.89, 0.11], abs=1e-12)


def reference_floor_keep(scores, sizes, target, max_sparsity):
    """ECoFLaP's ``compute_the_sparsity_per_group`` written out (trim step with the
    corrected sign): kept weights per group."""
    n = np.array(sizes, dtype=np.int64)
    s = np.array(scores, dtype=np.float64)
    T = int(n.sum() * (1 - target))
    floor = np.ceil(np.round(n * (1 - max_sparsity), 9)).astype(np.int64)
    keep = floor.copy()
    while keep.sum() < T:
        rest = T - keep.sum()
        add = np.ceil(s / s.sum() * rest).astype(np.int64)
        keep = keep + add
        s[keep >= n] = 0
        keep = np.minimum(keep, n)
    extra = keep.sum() - T
    for i in np.argsort(-keep, kind="stable"):
        take = min(extra, keep[i] - floor[i])
        keep[i] -= take
        extra -= take
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_floor_allocation_matches_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(50, 400, 8).tolist()
    scores = (rng.random(8) ** 3 * 10).tolist()
    target, cap = 0.5, 0.8
    got = allocate_sparsity_floor(scores, sizes, target, cap)
    keep = reference_floor_keep(scores, sizes, target, cap)
    assert got == pytest.approx([1 - k / n for k, n in zip(keep, sizes)], abs=1e-12)
    kept = sum(round((1 - g) * n) for g, n in zip(got, sizes))
    assert kept == int(sum(sizes) * (1 - target))  # the budget exactly
    assert max(got) <= cap + 1e-12


# ------------------------------------------------------------------ ECoFLaP: per-matrix zeroth-order scores


def test_layer_scores_perturb_each_matrix_alone_per_batch():
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    originals = [p.clone() for p in params]
    coef = [[torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)] for _ in range(3)]

    def loss_of(b):  # batch b's loss: linear in both matrices, so the central difference is exact
        return lambda: float(sum((c * p).sum() for c, p in zip(coef[b], params)))

    scores = zeroth_order_layer_scores([loss_of(b) for b in range(3)], params, eps=1e-3, n_directions=2, seed=7)
    # by hand: directions drawn matrix by matrix, then batch by batch, then direction;
    # only the perturbed matrix moves, so each difference sees that matrix's coefficient
    gen = torch.Generator().manual_seed(7)
    expect = []
    for k, p in enumerate(params):
        total = 0.0
        for b in range(3):
            for _ in range(2):
                z = torch.randn(p.shape, generator=gen)
                total += abs(float((coef[b][k] * z.double()).sum()))
        expect.append(total)  # summed over batches and directions, not averaged
    assert scores == pytest.approx(expect, rel=1e-6)
    assert all(torch.equal(p, o) for p, o in zip(params, originals))  # restored exactly


# ------------------------------------------------------------------ ECoFLaP on a model


def _calibration(adapter, n):
    import PIL.Image

    rng = np.random.default_rng(9)
    imgs = [PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]
    qs = ["what color is the big square?", "how many circles are there?"]

    class Source:
        def batches(self):
            return [adapter.build_inputs([im], [qs[i % 2]]) for i, im in enumerate(imgs)]  # one sample per batch

        def describe(self):
            return {}

    return Source()


def test_ecoflap_block_sparsity_follows_the_reference_rule(monkeypatch):
    from vlmcompress.methods.weights import ecoflap as eco
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.tiny import tiny_llava

    calls = []
    real = eco.lm_loss
    monkeypatch.setattr(eco, "lm_loss", lambda *a: calls.append(len(a[2])) or real(*a))
    model, processor = tiny_llava()
    adapter = LlavaAdapter(model, processor)
    ctx = CompressionContext(model, adapter, processor, calibration=_calibration(adapter, 2))
    (method,) = build_setting("ecoflap(sparsity=0.5,max_layer_sparsity=0.7)").methods
    method.prepare(ctx)
    targets = select_linears(model, adapter, "decoder")
    block_of = block_index_of(model, adapter)
    # 2 forward passes per matrix and calibration batch, each on one batch
    assert len(calls) == 2 * len(targets) * 2 and set(calls) == {1}
    layer_scores = ctx.info["ecoflap_layer_scores"]
    assert set(layer_scores) == set(targets)
    # the block score is the sum of its matrices' scores; the allocation is the floor rule
    blocks = sorted(set(block_of[n] for n in targets))
    sums = [sum(v for n, v in layer_scores.items() if block_of[n] == b) for b in blocks]
    sizes = [sum(t.weight.numel() for n, t in targets.items() if block_of[n] == b) for b in blocks]
    assert ctx.info["ecoflap_block_scores"] == pytest.approx(sums)
    want = allocate_sparsity_floor(sums, sizes, 0.5, 0.7)
    assert ctx.info["ecoflap_block_sparsity"] == pytest.approx(want)
    for b, sp in zip(blocks, want):  # Wanda at the block's sparsity, per output row
        for n, t in targets.items():
            if block_of[n] == b:
                assert int((t.weight == 0).sum()) == t.weight.shape[0] * int(t.weight.shape[1] * sp)


def test_ecoflap_knobs():
    (m,) = build_setting("ecoflap(sparsity=0.5)").methods
    assert (m.perturb, m.granularity, m.score_aggregate, m.allocation) == ("layer", "block", "sum", "floor")
    build_setting("ecoflap(sparsity=0.5,perturb=block,allocation=proportional)")  # the earlier rule stays reachable
    with pytest.raises(ConfigError, match="granularity"):
        build_setting("ecoflap(sparsity=0.5,perturb=block,granularity=layer)")
