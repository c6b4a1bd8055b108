"""VisionZip and PruMerge+ against their references' rules, worked out by hand here
(dvlab-research/VisionZip, 42Shawn/LLaVA-PruMerge, EffiVLM-Bench's budgeted and
Qwen2-VL versions): plain loops over small tensors, or over the tensors a tiny real
model produces, compared with what the methods keep and what reaches the language
model.  No reference code is imported."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmcompress.errors import ConfigError
from vlmcompress.methods import build_setting
from vlmcompress.methods.visual_tokens import select as V

from test_eviction import QUESTIONS, _images, generate, llava, qwen  # noqa: F401  (fixtures)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- hand references
def desc(values, k):
    """Indices of the ``k`` largest values, largest first (ties: earlier index)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def unit(v):
    return v / v.norm()


def ref_prumerge_select(att, budget):
    """EffiVLM-Bench's budgeted PruMerge+ selection, in its order: ``max(#IQR outliers, 1)``
    best tokens, then ``arange(0, N, N // budget)`` minus those, cut to the budget."""
    N = len(att)
    a = np.array(att, dtype=np.float32)
    q1, q3 = np.percentile(a, 25), np.percentile(a, 75)
    iqr_token = max(int((a > q3 + 1.5 * (q3 - q1)).sum()), 1)
    if budget <= iqr_token:
        return desc(att, budget)
    idx = desc(att, iqr_token)
    fill = [x for x in range(0, N, max(1, N // budget)) if x not in idx]
    return idx + fill[: budget - iqr_token]


def ref_prumerge_merge(x, keys, att, idx, k_nb):
    """Each kept token + sum of raw-attention-weighted features of its ``k_nb`` most
    cosine-similar OTHER tokens (kept or not), from the unmerged features."""
    N = x.shape[0]
    out = {}
    for i in idx:
        others = [j for j in range(N) if j != i]
        sim = {j: float(unit(keys[i]) @ unit(keys[j])) for j in others}
        top = sorted(others, key=lambda j: (-sim[j], j))[: min(k_nb, len(others))]
        out[i] = x[i] + sum(att[j] * x[j] for j in top)
    return out


def ref_visionzip(x, scores, keys, n_dom, n_ctx, cls=False):
    """VisionZip: dominant (CLS first when ``cls``) + strided targets among the rest, each
    ``target + mean(assigned)`` by cosine argmax.  Returns {index: feature}."""
    P = len(scores)
    dom = ([0] + [i + 1 for i in desc(scores[1:], n_dom - 1)]) if cls else desc(scores, n_dom)
    rest = [i for i in range(P) if i not in dom]
    step = max(1, len(rest) // n_ctx)
    tpos = list(range(0, len(rest), step))[:n_ctx]
    targets = [rest[t] for t in tpos]
    groups = {t: [] for t in targets}
    for pos, m in enumerate(rest):
        if pos in tpos:
            continue
        sims = [float(unit(keys[m]) @ unit(keys[t])) for t in targets]
        groups[targets[sims.index(max(sims))]].append(m)
    out = {i: x[i] for i in dom}
    for t in targets:
        out[t] = x[t] + (torch.stack([x[m] for m in groups[t]]).mean(0) if groups[t] else 0)
    return out


def image_slots(batch, image_token_id, r):
    return [p for p in range(batch["input_ids"].shape[1]) if int(batch["input_ids"][r, p]) == image_token_id]


def kept_in_image(layers, batch, image_token_id, r):
    pos = layers[0][r, 0]
    kept = set(pos[pos >= 0].tolist())
    return [i for i, p in enumerate(image_slots(batch, image_token_id, r)) if p in kept]


def lin(linear, x):
    """A Linear layer applied in float64."""
    return torch.nn.functional.linear(x, linear.weight.double(), linear.bias.double())


def assert_features(final, expected):
    for i, want in expected.items():
        assert torch.allclose(final[i].double(), want.double(), atol=1e-4, rtol=1e-4), i


# ----------------------------------------------------------------------------- PruMerge+ on small tensors
def test_prumerge_cls_attention_is_one_full_width_softmax():
    """(1a) LLaVA-PruMerge: ``softmax(q @ k^T * C**-0.5)`` on the undivided q_proj/k_proj
    outputs, CLS row; not the per-head softmax summed over heads (which sums to H)."""
    g = torch.Generator().manual_seed(0)
    n, T, E, H = 2, 5, 6, 3
    q, k = torch.randn(n, E, generator=g), torch.randn(n, T, E, generator=g)
    got = V.cls_query_attention(q, k, H, (E // H) ** -0.5, full_width=True)
    for i in range(n):
        logits = [sum(float(q[i, e]) * float(k[i, t, e]) for e in range(E)) / math.sqrt(E) for t in range(T)]
        z = sum(math.exp(v) for v in logits)
        assert got[i].tolist() == pytest.approx([math.exp(v) / z for v in logits], abs=1e-6)
    # VisionZip's: the encoder's own per-head softmax, summed over heads
    heads = V.cls_query_attention(q, k, H, (E // H) ** -0.5, full_width=False)
    hd = E // H
    for i in range(n):
        want = [0.0] * T
        for h in range(H):
            logits = [sum(float(q[i, h * hd + d]) * float(k[i, t, h * hd + d]) for d in range(hd)) / math.sqrt(hd) for t in range(T)]
            z = sum(math.exp(v) for v in logits)
            want = [w + math.exp(v) / z for w, v in zip(want, logits)]
        assert heads[i].tolist() == pytest.approx(want, abs=1e-6)
    assert float(heads[0].sum()) == pytest.approx(H) and float(got[0].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "att, budget, want",
    [
        # two outliers; grid 0, 3, 6, ... (20 // 6 = 3) minus them: 0, 6, 9, 12
        ([0.01] * 3 + [0.9] + [0.01] * 7 + [0.5] + [0.01] * 8, 6, [0, 3, 6, 9, 11, 12]),
        # outliers sit on the grid 0, 4, 8, 12: the next grid points fill in
        ([0.9] + [0.01] * 3 + [0.8] + [0.01] * 11, 4, [0, 4, 8, 12]),
        # no outlier (a ramp): the best token (15) all the same, then the grid
        ([i / 100 for i in range(16)], 4, [0, 4, 8, 15]),
        # more outliers than budget: the best ones
        ([0.01] * 16 + [0.5, 0.6, 0.7, 0.8], 2, [18, 19]),
    ],
)
def test_prumerge_plus_uniform_fill_is_the_reference_grid(att, budget, want):
    """(1c) the uniform samples are ``arange(0, N, N // budget)`` minus the adaptive set,
    not a stride over the list of free tokens."""
    assert sorted(ref_prumerge_select(att, budget)) == want  # the hand rule itself
    assert V.prumerge_plus_select(torch.tensor(att), budget).tolist() == want


def small_image(seed, P=12, C=4, D=5):
    g = torch.Generator().manual_seed(seed)
    att = torch.rand(P, generator=g) * 0.1
    att[[2, 7]] = torch.tensor([0.9, 0.6])  # two IQR outliers
    return torch.randn(P, C, generator=g), torch.randn(P, D, generator=g), att


def test_prumerge_merge_draws_from_every_other_token():
    """(merge) a kept token absorbs its most similar OTHER tokens, kept ones included
    (merger tower: no extra token); here some neighbour sets hold kept tokens."""
    x, keys, att = small_image(1)
    method = build_setting("prumerge_plus(ratio=0.5,neighbours=3)").ordered()[0]
    new, keep = method.reduce_image(x, att, keys)
    idx = ref_prumerge_select(att.tolist(), 6)
    assert keep.nonzero().flatten().tolist() == sorted(idx)
    expected = ref_prumerge_merge(x, keys, att.tolist(), idx, 3)
    assert_features(new, expected)
    # the case this test is about: some kept token has a kept neighbour
    kn = torch.nn.functional.normalize(keys, dim=-1)
    assert any(set(sorted((j for j in range(12) if j != i), key=lambda j: -float(kn[i] @ kn[j]))[:3]) & (set(idx) - {i}) for i in idx)


def test_prumerge_extra_token_takes_the_last_pruned_slot():
    """(1b) CLS towers: the reference appends sum_j a_j x_j over the pruned tokens; here it
    takes one of the budget's slots (the last pruned placeholder), the reference rule
    running at budget - 1, so the budget is still met exactly."""
    x, keys, att = small_image(2)
    method = build_setting("prumerge_plus(ratio=0.5,neighbours=3)").ordered()[0]
    new, keep = method.reduce_image(x, att, keys, cls_tower=True)
    idx = ref_prumerge_select(att.tolist(), 5)  # budget 6 = 5 selected + the extra token
    pruned = [j for j in range(12) if j not in idx]
    slot = max(pruned)
    assert keep.nonzero().flatten().tolist() == sorted(idx + [slot]) and int(keep.sum()) == 6
    expected = ref_prumerge_merge(x, keys, att.tolist(), idx, 3)
    expected[slot] = sum(float(att[j]) * x[j] for j in pruned)
    assert_features(new, expected)
    # the CLS row under "full" is never kept, merged or counted as a patch
    new2, keep2 = method.reduce_image(torch.cat([x[:1] * 0 + 7, x]), torch.cat([torch.ones(1), att]), torch.cat([keys[:1], keys]), cls_tower=True, cls_row=True)
    assert not keep2[0] and torch.equal(new2[0], x[0] * 0 + 7)
    assert (keep2[1:].nonzero().flatten().tolist()) == sorted(ref_prumerge_select(att.tolist(), 5) + [slot])


# ----------------------------------------------------------------------------- scoring sites
def test_scoring_sites(llava, qwen):
    """PruMerge+ scores in the CLIP layer after the feature layer (LLaVA-PruMerge hooks
    layers[23] under select_layer=-2), VisionZip at the feature layer; both at the
    second-to-last vision block of Qwen2-VL (EffiVLM-Bench)."""
    model, _, adapter = llava
    layers = model.model.vision_tower.encoder.layers
    assert adapter.vision_scoring("visionzip").attention is layers[-2].self_attn
    assert adapter.vision_scoring("prumerge_plus").attention is layers[-1].self_attn
    qmodel, _, qadapter = qwen
    assert qadapter.vision_scoring("visionzip").attention is qmodel.model.visual.blocks[-2].attn
    assert qadapter.vision_scoring("prumerge_plus").attention is qmodel.model.visual.blocks[-2].attn


def test_tower_without_cls_is_refused():
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    from vlmcompress.models.llava import LlavaAdapter

    cfg = LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    adapter = LlavaAdapter(LlavaForConditionalGeneration(cfg).eval(), None)
    with pytest.raises(ConfigError, match="no CLS token"):
        adapter.vision_scoring("visionzip")


# ----------------------------------------------------------------------------- through tiny LLaVA
def run_with_captures(bundle, spec, scoring_attn, projector, batch=None, questions=QUESTIONS):
    """Generate one token under ``spec``; capture the scoring layer's attention input, the
    projector's input before and after the method rewrites it, and the kept slots."""
    seen = {}

    def keep(name, value):  # hooks must return None, or they replace what they see
        seen.setdefault(name, value.detach().clone())

    hooks = [
        scoring_attn.register_forward_pre_hook(lambda m, a, kw: keep("h", kw["hidden_states"] if "hidden_states" in kw else a[0]), with_kwargs=True),
        projector.register_forward_pre_hook(lambda m, a, kw: keep("raw", kw["image_features"] if "image_features" in kw else a[0]), with_kwargs=True, prepend=True),
        projector.register_forward_hook(lambda m, a, kw, out: keep("final", kw["image_features"] if "image_features" in kw else a[0]), with_kwargs=True),
    ]
    try:
        _, _, layers, batch = generate(bundle, spec, questions=questions, new_tokens=1, batch=batch)
    finally:
        for h in hooks:
            h.remove()
    return seen, layers, batch


def test_llava_prumerge_plus_follows_the_reference(llava):
    """(1a, 1b, 1c, merge) on tiny LLaVA: full-width CLS softmax in the layer after the
    feature layer, budgeted selection, merge over every other token with full-width
    keys, extra token in the last pruned slot; what reaches the projector checked."""
    model, _, adapter = llava
    layers = model.model.vision_tower.encoder.layers
    attn = layers[-1].self_attn
    seen, kept_layers, batch = run_with_captures(llava, "prumerge_plus(ratio=0.25)", attn, adapter.projector)
    n, P, _ = seen["raw"].shape
    budget = V.visual_budget(P, 0.25)
    assert (P, budget) == (64, 16)
    with torch.no_grad():
        for i in range(n):
            h = seen["h"][i].double()
            q = lin(attn.q_proj, h[0])
            k = lin(attn.k_proj, h)  # [65, E]: heads side by side
            E = k.shape[-1]
            probs = torch.softmax(k @ q * E**-0.5, 0)  # the CLS row, one softmax over all 65 tokens
            a = probs[1:].tolist()  # CLS column dropped after the softmax
            x = seen["raw"][i].double()
            idx = ref_prumerge_select(a, budget - 1)
            pruned = [j for j in range(P) if j not in idx]
            slot = max(pruned)
            assert kept_in_image(kept_layers, batch, adapter.image_token_id, i) == sorted(idx + [slot])
            expected = ref_prumerge_merge(x, k[1:], a, idx, 32)
            expected[slot] = sum(a[j] * x[j] for j in pruned)
            assert_features(seen["final"][i], expected)


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_llava_visionzip_cls_token(strategy):
    """(2) VisionZip keeps CLS among the dominant tokens.  "full": the projector reads CLS
    as row 0, and it is kept + the best n_dom - 1 patches (never a contextual target);
    "default": transformers drops CLS before the projector, and the dominant slots all
    go to patches (top n_dom by CLS attention)."""
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.tiny import tiny_llava

    model, proc = tiny_llava(layers=1)
    model.config.vision_feature_select_strategy = strategy
    proc.vision_feature_select_strategy = strategy
    bundle = (model, proc, LlavaAdapter(model, proc))
    attn = model.model.vision_tower.encoder.layers[-2].self_attn
    seen, kept_layers, batch = run_with_captures(bundle, "visionzip(ratio=0.25,dominant_share=0.25)", attn, bundle[2].projector)
    n, P, _ = seen["raw"].shape
    cls = strategy == "full"
    assert P == (65 if cls else 64)
    n_keep = V.visual_budget(P, 0.25)
    n_dom = round(n_keep * 0.25)
    with torch.no_grad():
        for i in range(n):
            h = seen["h"][i].double()
            H, hd = attn.num_heads, attn.head_dim
            q = lin(attn.q_proj, h[0]).view(H, hd)
            k = lin(attn.k_proj, h).view(-1, H, hd)
            s = sum(torch.softmax(k[:, hh] @ q[hh] / math.sqrt(hd), 0) for hh in range(H))  # per head, summed
            keys = k.mean(1)  # raw_key_states.mean(1): averaged over heads
            off = 0 if cls else 1
            expected = ref_visionzip(seen["raw"][i].double(), s[off:].tolist(), keys[off:], n_dom, n_keep - n_dom, cls=cls)
            assert kept_in_image(kept_layers, batch, bundle[2].image_token_id, i) == sorted(expected)
            if cls:  # CLS's own score ranks below n_dom patches here: ranking it as a patch would drop it
                assert 0 in expected and sum(v > float(s[0]) for v in s[1:].tolist()) >= n_dom
            assert_features(seen["final"][i], expected)


# ----------------------------------------------------------------------------- through tiny Qwen2-VL
def qwen_one_image(adapter):
    return adapter.build_inputs([_images(1, seed=5)[0]], [QUESTIONS[0]])  # one image per forward: EffiVLM-Bench's setting


def run_qwen(bundle, spec):
    model, _, adapter = bundle
    visual = model.model.visual
    seen = {}

    def grab_attn(m, a, kw):
        seen.setdefault("attn", ((kw["hidden_states"] if "hidden_states" in kw else a[0]).detach().clone(), kw["position_embeddings"]))

    def keep(name, value):  # hooks must return None, or they replace what they see
        seen.setdefault(name, value.detach().clone())

    hooks = [
        visual.blocks[-2].attn.register_forward_pre_hook(grab_attn, with_kwargs=True),
        visual.merger.register_forward_hook(lambda m, a, out: keep("raw", out), prepend=True),
        visual.register_forward_hook(lambda m, a, out: keep("final", out.pooler_output)),
    ]
    batch = qwen_one_image(adapter)
    try:
        _, _, layers, batch = generate(bundle, spec, questions=[QUESTIONS[0]], new_tokens=1, batch=batch)
    finally:
        for h in hooks:
            h.remove()
    return seen, layers, batch


def effivlm_qwen_scores(attn, hidden, pos_emb):
    """EffiVLM-Bench's Qwen2-VL scoring, one image: per-head softmax(q k^T / sqrt(head_dim))
    of the second-to-last block, mean over heads then queries, then over each 2x2 window
    (``view(-1, 4).mean``); returns the scores and the post-rotary keys ``[N, H, D]``."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    N = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(N, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *pos_emb)
    q, k = q.double(), k.double()
    D = q.shape[-1]
    A = torch.softmax(torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(D), -1)  # [H, N, N]
    return A.mean(0).mean(0).view(-1, 4).mean(1), k


def test_qwen2_vl_visionzip_follows_effivlm(qwen):
    """(2) Qwen2-VL VisionZip as EffiVLM-Bench ports it: scored at blocks[-2], keys averaged
    over heads and the window, dominant + contextual chosen and merged on the merger's
    OUTPUT (one row per LLM token)."""
    model, _, adapter = qwen
    seen, layers, batch = run_qwen(qwen, "visionzip(ratio=0.5,dominant_share=0.5)")
    with torch.no_grad():
        scores, k = effivlm_qwen_scores(model.model.visual.blocks[-2].attn, *seen["attn"])
    G = scores.numel()
    metric = k.transpose(0, 1).reshape(k.shape[1], G, 4, -1).mean(2).mean(0)  # view(H, N/4, 4, D).mean(2).mean(0)
    n_keep = V.visual_budget(G, 0.5)
    assert (G, n_keep) == (16, 8)
    expected = ref_visionzip(seen["raw"].double(), scores.tolist(), metric, 4, 4)
    assert kept_in_image(layers, batch, adapter.image_token_id, 0) == sorted(expected)
    assert_features(seen["final"], expected)


def test_qwen2_vl_prumerge_plus_follows_effivlm(qwen):
    """(1) Qwen2-VL PruMerge+ as EffiVLM-Bench ports it: window-mean scores of blocks[-2],
    keys with heads side by side averaged over the window, budgeted selection, merge over
    every other token on the merger's output, and no extra token."""
    model, _, adapter = qwen
    seen, layers, batch = run_qwen(qwen, "prumerge_plus(ratio=0.5,neighbours=3)")
    with torch.no_grad():
        scores, k = effivlm_qwen_scores(model.model.visual.blocks[-2].attn, *seen["attn"])
    G = scores.numel()
    keys = k.reshape(k.shape[0], -1).view(G, 4, -1).mean(1)  # k.view(seq, -1), then view(N/4, 4, -1).mean(1)
    idx = ref_prumerge_select(scores.tolist(), V.visual_budget(G, 0.5))
    assert kept_in_image(layers, batch, adapter.image_token_id, 0) == sorted(idx)
    assert_features(seen["final"], ref_prumerge_merge(seen["raw"].double(), keys, scores.tolist(), idx, 3))
