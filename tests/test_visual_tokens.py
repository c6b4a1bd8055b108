"""Visual-token pruning and merging: selection math against independent computations,
original positions under FastV, batching, and generation through real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmcompress.errors import ConfigError
from vlmcompress.methods import build_setting
from vlmcompress.methods.visual_tokens import select as V
from vlmcompress.methods.layout.flops import DecoderShape, decode_flops, prefill_flops

from test_eviction import QUESTIONS, _images, generate, llava, qwen  # noqa: F401  (fixtures)

torch.set_num_threads(1)


def python_top(values, n):
    return sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:n])


def test_visual_budget():
    assert V.visual_budget(64, 0.01) == 1 and V.visual_budget(64, 0.4) == 25 and V.visual_budget(576, 0.1) == 57
    assert V.visual_budget(0, 0.5) == 0


def test_fastv_keep_matches_reference():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(30, generator=g)
    image = torch.zeros(30, dtype=torch.bool)
    image[5:25] = True
    keep = V.fastv_keep(scores, image, 0.3)
    img = list(range(5, 25))
    chosen = [img[i] for i in python_top([float(scores[j]) for j in img], 6)]
    expected = [i for i in range(30) if not image[i] or i in chosen]
    assert keep.nonzero().flatten().tolist() == expected


def test_visionzip_select_and_merge_match_reference():
    g = torch.Generator().manual_seed(1)
    P, n_keep = 16, 8
    att = torch.rand(P, generator=g)
    metric = torch.randn(P, 6, generator=g)
    feats = torch.randn(P, 5, generator=g)
    dom, tgt, merged, assign = V.visionzip_select(att, metric, n_keep, 0.75)
    n_dom = round(8 * 0.75)
    exp_dom = python_top(att.tolist(), n_dom)
    assert dom.tolist() == exp_dom
    rest = [i for i in range(P) if i not in exp_dom]
    step = len(rest) // (n_keep - n_dom)
    exp_tgt = [rest[i] for i in range(0, len(rest), step)][: n_keep - n_dom]
    assert tgt.tolist() == exp_tgt
    exp_merged = [i for i in rest if i not in exp_tgt]
    assert merged.tolist() == exp_merged
    mn = F.normalize(metric, dim=-1)
    exp_assign = [int(torch.argmax(torch.stack([mn[i] @ mn[t] for t in exp_tgt]))) for i in exp_merged]
    assert assign.tolist() == exp_assign
    out = V.merge_into_targets(feats, tgt, merged, assign)
    for j, t in enumerate(exp_tgt):
        members = [exp_merged[i] for i, a in enumerate(exp_assign) if a == j]
        want = feats[t] + (feats[members].mean(0) if members else 0)
        assert torch.allclose(out[t], want, atol=1e-6)
    assert torch.equal(out[exp_dom], feats[exp_dom])


def test_prumerge_plus_select_iqr_then_uniform():
    att = torch.full((20,), 0.01)
    att[[3, 11]] = torch.tensor([0.9, 0.5])  # the only IQR outliers
    kept = V.prumerge_plus_select(att, 6)
    assert {3, 11} <= set(kept.tolist()) and len(kept) == 6
    # the uniform samples are the grid 0, 3, 6, ... (step 20 // 6) minus the outliers, in order
    grid = [i for i in range(0, 20, 20 // 6) if i not in (3, 11)]
    assert kept.tolist() == sorted([3, 11] + grid[:4])
    # more outliers than budget: the best ones
    att2 = torch.cat([torch.full((16,), 0.01), torch.tensor([0.5, 0.6, 0.7, 0.8])])
    assert V.prumerge_plus_select(att2, 2).tolist() == [18, 19]


def test_prumerge_merge_reference():
    g = torch.Generator().manual_seed(2)
    feats, keys, att = torch.randn(10, 4, generator=g), torch.randn(10, 3, generator=g), torch.rand(10, generator=g)
    kept = torch.tensor([1, 6])
    out = V.prumerge_merge(feats, keys, att, kept, 3, pool="pruned")  # merge_from=pruned (the reference's pool is checked in test_visual_fidelity)
    kn = F.normalize(keys, dim=-1)
    pruned = [i for i in range(10) if i not in (1, 6)]
    for row, i in enumerate([1, 6]):
        nb = sorted(pruned, key=lambda j: (-float(kn[i] @ kn[j]), j))[:3]
        want = feats[i] + sum(att[j] * feats[j] for j in nb)
        assert torch.allclose(out[row], want, atol=1e-5)


def test_flops_formula_by_hand():
    s = DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10, layers=2)
    per_tok = 2 * 8 * (8 + 8) + 2 * 8 * 8 + 6 * 8 * 16
    assert s.linear_per_token() == per_tok
    assert prefill_flops(s, [3, 2]) == 3 * per_tok + 32 * 6 + 2 * per_tok + 32 * 3 + 160
    assert decode_flops(s, [5, 5]) == 2 * (per_tok + 32 * 6) + 160


def test_validation():
    with pytest.raises(ConfigError, match="ratio"):
        build_setting("visionzip(ratio=1.5)")
    with pytest.raises(ConfigError, match="layer"):
        build_setting("fastv(layer=0)")
    with pytest.raises(ConfigError, match="query"):
        build_setting("fastv(query=first)")


VISUAL = ["fastv(layer=1)", "fastv(layer=2,query=all)", "visionzip", "prumerge_plus"]


@pytest.mark.parametrize("spec", VISUAL)
def test_ratio_one_leaves_outputs_unchanged(llava, spec):
    base, _, _, _ = generate(llava, "none")
    inner = spec[spec.index("(") + 1 : -1] + "," if "(" in spec else ""
    name = spec.split("(")[0]
    if name == "prumerge_plus":  # the reference merges every token even when nothing is pruned
        inner += "merge_from=pruned,"
    out, stats, _, _ = generate(llava, f"{name}({inner}ratio=1.0)")
    assert out.sequences.tolist() == base.sequences.tolist()
    for a, b in zip(base.scores, out.scores):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.01, 0.4])
@pytest.mark.parametrize("spec", VISUAL)
def test_visual_budget_met_in_a_padded_batch(llava, spec, ratio):
    name = spec.split("(")[0]
    inner = spec[spec.index("(") + 1 : -1] + "," if "(" in spec else ""
    out, stats, layers, batch = generate(llava, f"{name}({inner}ratio={ratio})")
    n_layers = 3
    K = 0 if name != "fastv" else int(inner.split("layer=")[1].split(",")[0])
    for r, st in enumerate(stats[0]):
        want = V.visual_budget(st["visual_tokens"], ratio)
        expected = (K * st["visual_tokens"] + (n_layers - K) * want) / n_layers
        assert st["visual_tokens_kept"] == pytest.approx(expected)
        if K == 0:
            assert st["prefill_flops"] < st["prefill_flops_full"]


def check_kept_slots_use_original_rotary(bundle, spec, layer, full_positions, **gen):
    """Generate under ``spec``, capture the rotary ``cos`` that decoder ``layer`` sees at
    prefill and check every kept slot's against the model's own ``cos`` of the full prompt
    at the slot's original position.  Returns the ``[B, N]`` original positions of the
    slots the layer holds (-1: padding) and the batch."""
    _, _, adapter = bundle
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("cos", kwargs["position_embeddings"][0].clone())  # the prefill call

    h = adapter.decoder_layers[layer].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _, _, layers, batch = generate(bundle, spec, new_tokens=1, **gen)
    finally:
        h.remove()
    pos = layers[layer][:, 0]
    cos_full, _ = adapter.rotary_embedding(torch.zeros(1, dtype=torch.float32), full_positions(batch))
    cos = captured["cos"]
    assert cos.shape[1] == pos.shape[1] < batch["input_ids"].shape[1]
    for r in range(pos.shape[0]):
        for slot, p in enumerate(pos[r].tolist()):
            if p >= 0:
                assert torch.allclose(cos[r, slot], cos_full[r, p])
    return pos, batch


def test_fastv_keeps_original_position_ids(llava):
    def generate_positions(batch):  # the positions generate gives the prompt
        return (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)

    pos, _ = check_kept_slots_use_original_rotary(llava, "fastv(layer=2,ratio=0.25)", 2, generate_positions)
    # and the kept positions are not renumbered: they skip the pruned image tokens
    real = pos[0][pos[0] >= 0]
    assert bool((real.diff() > 1).any())


def test_fastv_batch_matches_alone(llava):
    _, _, both, batch = generate(llava, "fastv(layer=1,ratio=0.3)", new_tokens=1)
    T = batch["input_ids"].shape[1]
    for r, q in enumerate(QUESTIONS):
        _, _, alone, one = generate(llava, "fastv(layer=1,ratio=0.3)", questions=[q], images=[_images(2)[r]], new_tokens=1)
        shift = T - one["input_ids"].shape[1]
        b = both[2][r, 0]
        a = alone[2][0, 0]
        assert sorted((b[b >= 0] - shift).tolist()) == sorted(a[a >= 0].tolist())


def test_fastv_runs_on_qwen2_vl(qwen):
    out, stats, _, _ = generate(qwen, "fastv(layer=1,ratio=0.4)")
    assert out.sequences.shape[0] == 2
    assert all(st["visual_tokens_kept"] < st["visual_tokens"] for st in stats[0])


# ----------------------------------------------------------------------------- vision side on Qwen2-VL
# No CLS token: a patch's score is the mean attention it receives in the last vision
# block; 2x2 merger windows (4 consecutive patches) are the unit of selection.


def test_received_attention_matches_full_map():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(3, 13, 4, generator=g), torch.randn(3, 13, 4, generator=g)
    got = V.received_attention(q, k, 0.5, chunk=4)  # chunks that do not divide n
    full = torch.softmax(torch.einsum("hid,hjd->hij", q.double(), k.double()) * 0.5, -1)  # [H, n, n], bidirectional
    want = [sum(float(full[h, i, j]) for h in range(3) for i in range(13)) / (3 * 13) for j in range(13)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-5)


def test_group_tokens_packs_consecutive_patches():
    scores = torch.arange(8.0)
    keys = torch.arange(16.0).view(8, 2)
    s, k = V.group_tokens(scores, keys, 4)  # window means, as EffiVLM-Bench's view(-1, 4).mean
    assert s.tolist() == [(0 + 1 + 2 + 3) / 4, (4 + 5 + 6 + 7) / 4]
    assert k[1].tolist() == [(8 + 10 + 12 + 14) / 4, (9 + 11 + 13 + 15) / 4]
    with pytest.raises(ValueError):
        V.group_tokens(torch.zeros(6), torch.zeros(6, 2), 4)


@pytest.mark.parametrize("name", ["visionzip", "prumerge_plus"])
def test_window_selection_on_hand_built_attention(name):
    """32 patches = 8 merger windows; the attention received is built by hand so that
    windows 5 and 2 dominate (one hot patch each), and the kept windows follow."""
    received = torch.full((32,), 0.01)
    received[5 * 4 + 3] = 0.5  # a patch of window 5
    received[2 * 4 + 0] = 0.3  # a patch of window 2
    g = torch.Generator().manual_seed(4)
    keys, wfeats = torch.randn(32, 3, generator=g), torch.randn(8, 2, generator=g)  # features: the merger's output, one row per window
    scores, wkeys = V.group_tokens(received, keys, 4)
    method = build_setting(f"{name}(ratio=0.5)").ordered()[0]
    new, keep = method.reduce_image(wfeats, scores, wkeys)
    window_scores = [sum(received[4 * w : 4 * w + 4].tolist()) / 4 for w in range(8)]
    assert set(python_top(window_scores, 2)) == {2, 5}
    if name == "visionzip":  # 4 windows kept: 3 dominant (54/64 of 4, rounded), 1 strided contextual
        want = python_visionzip_keep(window_scores, 4, method.dominant_share)
    else:  # the two IQR outliers, then uniform samples
        want = python_prumerge_plus_keep(window_scores, 4)
    assert {2, 5} <= set(want)
    assert keep.nonzero().flatten().tolist() == want
    assert new.shape == wfeats.shape  # still one row per LLM token


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def qwen_multi_image_batch(adapter):
    """Sample 0: two images of different sizes (16 and 8 LLM tokens); sample 1: one small
    image (4 tokens) and a longer question, so both rows are padded differently."""
    images = [[_image(64, 64, 1), _image(32, 64, 2)], [_image(32, 32, 3)]]
    questions = ["what color is it", "what color is the big square in the top left corner of the picture"]
    proc = adapter.processor
    proc.tokenizer.padding_side = "left"
    prompts = [
        proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * len(im) + [{"type": "text", "text": q}]}], add_generation_prompt=True)
        for im, q in zip(images, questions)
    ]
    return dict(proc(images=images, text=prompts, padding=True, return_tensors="pt")), images, questions


def image_runs(row_image):
    """Per image, the positions of its tokens (images are separated by other tokens)."""
    runs, cur = [], []
    for p, is_img in enumerate(row_image.tolist()):
        if is_img:
            cur.append(p)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def kept_positions(layers, r):
    pos = layers[0][r, 0]
    return set(pos[pos >= 0].tolist())


def capture_last_vision_block(model):
    """Hook recording the scoring block's attention inputs (naive reference input): the
    second-to-last vision block, as in EffiVLM-Bench."""
    attn = model.model.visual.blocks[-2].attn
    seen = []
    h = attn.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0].clone(), kw["cu_seqlens"].clone(), kw["position_embeddings"])), with_kwargs=True)
    return attn, seen, h


def naive_window_scores(attn, hidden, cu, pos_emb):
    """Per image: mean attention each patch receives from all patches of its image (full
    softmax map, float64, every head), averaged over each 4-patch merger window; and the
    windows' mean head-averaged keys."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    N = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(N, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *pos_emb)
    out = []
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qi, ki = q[s:e].double().transpose(0, 1), k[s:e].double().transpose(0, 1)
        full = torch.softmax(qi @ ki.transpose(1, 2) * attn.scaling, -1)  # [H, n, n]
        per_patch = full.sum((0, 1)) / (full.shape[0] * full.shape[1])
        keys = k[s:e].mean(1)
        out.append(([float(per_patch[i : i + 4].mean()) for i in range(0, e - s, 4)], keys.reshape((e - s) // 4, 4, -1).mean(1)))
    return out


def python_visionzip_keep(scores, n_keep, share):
    n_dom = min(n_keep, max(1, round(n_keep * share)))
    dom = python_top(scores, n_dom)
    rest = [i for i in range(len(scores)) if i not in dom]
    n_ctx = min(n_keep - n_dom, len(rest))
    targets = [rest[i] for i in range(0, len(rest), max(1, len(rest) // n_ctx))][:n_ctx] if n_ctx else []
    return sorted(dom + targets)


def python_prumerge_plus_keep(scores, n_keep):
    q1, q3 = np.quantile(np.array(scores, dtype=np.float32), [0.25, 0.75])
    bound = q3 + 1.5 * (q3 - q1)
    n_adaptive = max(1, sum(np.float32(v) > bound for v in scores))  # at least the best token
    if n_keep <= n_adaptive:
        return python_top(scores, n_keep)
    adaptive = python_top(scores, n_adaptive)
    grid = [i for i in range(0, len(scores), max(1, len(scores) // n_keep)) if i not in adaptive]  # EffiVLM-Bench's uniform samples
    return sorted(adaptive + grid[: n_keep - n_adaptive])


@pytest.mark.parametrize("spec", ["visionzip(ratio=0.4)", "prumerge_plus(ratio=0.4)", "visionzip(ratio=0.3,dominant_share=0.5)"])
def test_qwen2_vl_selection_equals_independent_computation(qwen, spec):
    model, _, adapter = qwen
    batch, _, _ = qwen_multi_image_batch(adapter)
    attn, seen, h = capture_last_vision_block(model)
    try:
        _, stats, layers, _ = generate(qwen, spec, batch=batch, new_tokens=1)
    finally:
        h.remove()
    method = build_setting(spec).ordered()[0]
    with torch.no_grad():
        reference = naive_window_scores(attn, *seen[0])
    image = batch["input_ids"] == adapter.image_token_id
    per_image = [run for r in range(2) for run in image_runs(image[r])]
    rows = [r for r in range(2) for _ in image_runs(image[r])]
    assert [len(run) for run in per_image] == [16, 8, 4] and len(reference) == 3
    for run, r, (scores, keys) in zip(per_image, rows, reference):
        n_keep = V.visual_budget(len(run), method.ratio)
        if method.name == "visionzip":
            want = python_visionzip_keep(scores, n_keep, method.dominant_share)
        else:
            want = python_prumerge_plus_keep(scores, n_keep)
        got = sorted(i for i, p in enumerate(run) if p in kept_positions(layers, r))
        assert got == want


@pytest.mark.parametrize("ratio", [0.01, 0.4, 0.75])
@pytest.mark.parametrize("name", ["visionzip", "prumerge_plus"])
def test_qwen2_vl_budget_exact_per_image(qwen, name, ratio):
    _, _, adapter = qwen
    batch, _, _ = qwen_multi_image_batch(adapter)
    out, stats, layers, _ = generate(qwen, f"{name}(ratio={ratio})", batch=batch, new_tokens=2)
    image = batch["input_ids"] == adapter.image_token_id
    for r in range(2):
        kept = kept_positions(layers, r)
        runs = image_runs(image[r])
        for run in runs:
            assert sum(p in kept for p in run) == V.visual_budget(len(run), ratio)
        text = [p for p in range(image.shape[1]) if batch["attention_mask"][r, p] and not image[r, p]]
        assert set(text) <= kept  # text tokens always kept
        assert stats[0][r]["visual_tokens_kept"] == sum(V.visual_budget(len(run), ratio) for run in runs)


@pytest.mark.parametrize("name", ["visionzip", "prumerge_plus"])
def test_qwen2_vl_batch_matches_alone(qwen, name):
    _, _, adapter = qwen
    batch, images, questions = qwen_multi_image_batch(adapter)
    out, _, both, _ = generate(qwen, f"{name}(ratio=0.4)", batch=batch, new_tokens=3)
    T = batch["input_ids"].shape[1]
    proc = adapter.processor
    for r in range(2):
        prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * len(images[r]) + [{"type": "text", "text": questions[r]}]}], add_generation_prompt=True)
        one = dict(proc(images=[images[r]], text=[prompt], padding=True, return_tensors="pt"))
        alone_out, _, alone, _ = generate(qwen, f"{name}(ratio=0.4)", batch=one, new_tokens=3)
        shift = T - one["input_ids"].shape[1]
        for l in both:
            b, a = both[l][r, 0], alone[l][0, 0]
            assert sorted((b[b >= 0] - shift).tolist()) == sorted(a[a >= 0].tolist())
        assert out.sequences[r, T:].tolist() == alone_out.sequences[0, one["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("name", ["visionzip", "prumerge_plus"])
def test_qwen2_vl_ratio_one_leaves_outputs_unchanged(qwen, name):
    _, _, adapter = qwen
    batch, _, _ = qwen_multi_image_batch(adapter)
    base, _, _, _ = generate(qwen, "none", batch=batch)
    inner = "merge_from=pruned," if name == "prumerge_plus" else ""  # the reference merges every token even when nothing is pruned
    out, stats, _, _ = generate(qwen, f"{name}({inner}ratio=1.0)", batch=batch)
    assert out.sequences.tolist() == base.sequences.tolist()
    for a, b in zip(base.scores, out.scores):
        assert torch.allclose(a, b, atol=1e-5)
    assert [st["visual_tokens_kept"] for st in stats[0]] == [st["visual_tokens"] for st in stats[0]]


def test_qwen2_vl_kept_tokens_keep_their_3d_positions(qwen):
    _, _, adapter = qwen
    batch, _, _ = qwen_multi_image_batch(adapter)
    # [3, B, T]: the model's own M-RoPE positions of the full prompt
    pos, _ = check_kept_slots_use_original_rotary(qwen, "visionzip(ratio=0.3)", 0, adapter.position_ids, batch=batch)
    mrope = adapter.position_ids(batch)
    image = batch["input_ids"] == adapter.image_token_id
    for r in range(2):
        # kept image tokens are not renumbered: their (h, w) grid coordinates are the original ones
        kept_img = [p for p in pos[r].tolist() if p >= 0 and image[r, p]]
        assert len({tuple(mrope[:, r, p].tolist()) for p in kept_img}) == len(kept_img)


def test_stacks_with_kv_eviction(llava):
    out, stats, layers, batch = generate(llava, "visionzip(ratio=0.4)+snapkv(ratio=0.5)")
    for st in stats[0]:
        llm_prompt = st["prompt_tokens_real"] - st["visual_tokens"] + V.visual_budget(st["visual_tokens"], 0.4)
        assert st["tokens_kept"] == max(1, int(llm_prompt * 0.5))
