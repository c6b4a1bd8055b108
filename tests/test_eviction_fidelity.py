"""KV-cache eviction against its references: each reference's selection rule is written
out here by hand (kvpress's presses, KVCache-Factory's and kvpress's PyramidKV budgets,
EffiVLM-Bench's StreamingLLM split, LOOK-M's merges), plainly and independently of the
package, and compared on small tensors.  No reference package is imported.

kvpress's ``compression_ratio`` is the share removed: ``ratio = 1 - compression_ratio``,
and the ratios below make ``L * ratio`` an exact integer so both floor it alike."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import DynamicCache

from vlmcompress.errors import ConfigError
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.eviction import scores as S
from vlmcompress.methods.layout import BatchLayout, SequenceLayout
from vlmcompress.methods.layout.flops import DecoderShape

torch.set_num_threads(1)

H_Q, H_KV, D = 4, 2, 8
SCALING = D**-0.5
ATTN = SimpleNamespace(scaling=SCALING, head_dim=D)


def rand_qk(L, seed, h_q=H_Q, h_kv=H_KV, d=D, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return sharp * torch.randn(h_q, L, d, generator=g), sharp * torch.randn(h_kv, L, d, generator=g)


def naive_attention(q, k, scaling):
    """Full causal attention of every position, float64, explicit loops: ``[H_q, L, L]``."""
    h_q, L, _ = q.shape
    rep = h_q // k.shape[0]
    out = torch.zeros(h_q, L, L, dtype=torch.float64)
    for h in range(h_q):
        kh = k[h // rep].double()
        for i in range(L):
            out[h, i, : i + 1] = torch.softmax((q[h, i].double() @ kh[: i + 1].T) * scaling, -1)
    return out


def kvpress_keep(scores, n_kept):
    """kvpress ``ScorerPress.compress``: ``scores.topk(n_kept)`` per KV head, as sorted lists."""
    return [sorted(row) for row in scores.topk(n_kept, dim=-1).indices.tolist()]


def single_layout(L, ids=None):
    mask = torch.ones(1, L, dtype=torch.bool)
    ids = torch.arange(L)[None] % 50 + 3 if ids is None else ids
    return BatchLayout(input_ids=ids, prompt_mask=mask, image_mask=torch.zeros_like(mask), seq_index=torch.arange(L)[None].clone(), seq_valid=mask.clone())


def method_keep(spec, q, k, layer=1, layers=4):
    """The method's kept positions ``[H_kv][n]`` for one sample alone."""
    m = build_setting(spec).methods[0]
    m._shape = DecoderShape(64, 128, q.shape[0], k.shape[0], k.shape[-1], 100, layers=layers)
    L = k.shape[1]
    layout = single_layout(L)
    tail = m.query_tail(layer, layout)
    q_tail = q[None, :, L - tail :] if tail else None
    index, valid = m.on_prefill_kv(layer, layout, ATTN, q_tail, k[None], k[None].clone())[:2]
    return [sorted(index[0, h][valid[0]].tolist()) for h in range(index.shape[1])]


# ----------------------------------------------------------------------------- StreamingLLM


def effivlm_streaming_keep(L, ratio):
    """EffiVLM-Bench ``StreamingLLMKVCluster``: capacity ``max(1, int(L r))``, window
    ``max(1, int(0.1 capacity))``, the first ``capacity - window`` and the last ``window``."""
    cap = max(1, int(L * ratio))
    w = max(1, int(cap * 0.1))
    if L < cap:
        return list(range(L))
    return list(range(cap - w)) + list(range(L - w, L))


@pytest.mark.parametrize("L,ratio", [(100, 0.4), (37, 0.4), (57, 0.3), (200, 0.1), (23, 0.05)])
def test_streamingllm_effivlm_split_keeps_first_b_minus_w_and_last_w(L, ratio):
    q, k = rand_qk(L, 0)
    got = method_keep(f"streamingllm(ratio={ratio},split=effivlm)", q, k)
    assert got == [effivlm_streaming_keep(L, ratio)] * H_KV
    if L == 100:  # B = 40, w = 4: 36 leading tokens, not the paper's 4
        assert got[0] == list(range(36)) + [96, 97, 98, 99]


@pytest.mark.parametrize("L,cr", [(64, 0.5), (100, 0.75), (40, 0.25)])
def test_streamingllm_default_is_kvpress_sinks(L, cr):
    """kvpress ``StreamingLLMPress``: score 1 everywhere but 0 on ``[n_sink, n_sink + n_pruned)``."""
    q, k = rand_qk(L, 1)
    n_kept = int(L * (1 - cr))
    scores = torch.ones(H_KV, L)
    scores[:, 4 : 4 + L - n_kept] = 0
    assert method_keep(f"streamingllm(ratio={1 - cr})", q, k) == kvpress_keep(scores, n_kept)
    assert build_setting("streamingllm").methods[0].split == "sinks"


# ----------------------------------------------------------------------------- PyramidKV budgets


def kvcache_factory_budget(L, B, w, beta, n_layers, layer):
    """KVCache-Factory / EffiVLM-Bench ``PyramidKVCluster``: entries layer ``layer`` keeps
    (window included) with ``max_capacity_prompt = B`` and ``window_size = w``."""
    min_num = (B - w) // beta
    max_num = (B - w) * 2 - min_num
    if max_num >= L - w:
        max_num = L - w
        min_num = (B - w) * 2 - max_num
    steps = (max_num - min_num) // (n_layers - 1)
    if L < B:
        return L
    if L < (B - w) * 2:
        return B
    return max_num - layer * steps + w


def kvpress_budget(L, cr, w, beta, n_layers, layer):
    """kvpress ``PyramidKVPress.get_layer_budget`` (entries kept, window included)."""
    cap = w + L * (1 - cr)
    min_num = (cap - w) / beta
    max_num = (cap - w) * 2 - min_num
    if max_num >= L - w:
        max_num = L - w
        min_num = (cap - w) * 2 - max_num
    if not (L >= max_num >= min_num >= w):
        return round(L * (1 - cr))
    return round(max_num - layer * (max_num - min_num) / (n_layers - 1))


def test_pyramid_kvcache_factory_rule_known_values():
    # short prompt (L < 2 (B - w)): uniform on every layer, where the earlier rule built a capped pyramid
    assert S.pyramid_budgets(20, 16, 2, 4, 20.0, "kvcache_factory") == [16, 16, 16, 16]
    assert S.pyramid_budgets(20, 16, 2, 4, 20.0, "linear") == [20, 17, 15, 12]
    # integer min and steps: sel 270, min 13, max 527, steps 514 // 3 = 171
    assert S.pyramid_budgets(1000, 300, 30, 4, 20.0, "kvcache_factory") == [557, 386, 215, 44]
    assert S.pyramid_budgets(1000, 300, 30, 4, 20.0, "linear") == [556, 386, 214, 44]  # real steps, rounded


@pytest.mark.parametrize("L", [40, 64, 100, 257, 1000])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4, 0.5, 0.75])
@pytest.mark.parametrize("n_layers,beta", [(4, 20.0), (28, 20.0), (5, 4.0)])
def test_pyramid_kvcache_factory_rule_matches_reference(L, ratio, n_layers, beta):
    B = S.kv_budget(L, ratio)
    w = S.recent_window(B)
    got = S.pyramid_budgets(L, B, w, n_layers, beta, "kvcache_factory")
    if B - w <= 0:  # KVCache-Factory refuses a budget no larger than its window; uniform here
        assert got == [B] * n_layers
        return
    assert got == [kvcache_factory_budget(L, B, w, int(beta), n_layers, i) for i in range(n_layers)]


def test_pyramid_kvpress_rule_known_values():
    # from kvpress 0.5.5 on a 4-layer model, window_size 8 (recorded from PyramidKVPress itself)
    assert S.pyramid_budgets(64, 48, 8, 4, 20.0, "kvpress") == [56, 51, 45, 40]
    assert S.pyramid_budgets(64, 32, 8, 4, 20.0, "kvpress") == [56, 40, 24, 8]
    assert S.pyramid_budgets(64, 16, 8, 4, 20.0, "kvpress") == [16] * 4
    assert S.pyramid_budgets(100, 50, 8, 4, 20.0, "kvpress") == [92, 64, 36, 8]
    assert S.pyramid_budgets(100, 50, 8, 4, 4.0, "kvpress") == [88, 62, 38, 12]
    assert S.pyramid_budgets(100, 75, 8, 4, 20.0, "kvpress") == [92, 81, 69, 58]


@pytest.mark.parametrize("L", [40, 64, 200, 256, 1000])  # L (1 - cr) exact, as kvpress keeps it unfloored
@pytest.mark.parametrize("cr", [0.25, 0.5, 0.75, 0.875])
@pytest.mark.parametrize("w,beta", [(8, 20), (8, 4), (2, 20), (32, 20)])
def test_pyramid_kvpress_rule_matches_reference(L, cr, w, beta):
    B = S.kv_budget(L, 1 - cr)
    got = S.pyramid_budgets(L, B, w, 4, float(beta), "kvpress")
    assert got == [kvpress_budget(L, cr, w, beta, 4, i) for i in range(4)]


def test_pyramidkv_method_budget_rules():
    m = build_setting("pyramidkv(ratio=0.5,window_size=8)").methods[0]
    assert m.budget_rule == "kvcache_factory"
    m._shape = DecoderShape(64, 128, 4, 2, 8, 100, layers=4)
    # L = 64, B = 32, w = 8: 64 >= 2 * 24, pyramid on the selected 24 (min 1, max 47, steps 15)
    assert [m.budget(i, 64) for i in range(4)] == [55, 40, 25, 10]
    kp = build_setting("pyramidkv(ratio=0.5,window_size=8,budget_rule=kvpress)").methods[0]
    kp._shape = m._shape
    assert [kp.budget(i, 64) for i in range(4)] == [56, 40, 24, 8]
    assert [kp.window(i, 64) for i in range(4)] == [8, 8, 8, 8]


def kvpress_snapkv_scores(q, k, window, kernel=5):
    """kvpress ``SnapKVPress.score``: window queries' attention over the prefix, mean over
    the window, avg-pooled, averaged per GQA group, the window padded with ``max + 1``."""
    L = k.shape[1]
    att = naive_attention(q, k, SCALING)[:, L - window :, : L - window].float()
    s = att.mean(1)
    s = F.avg_pool1d(s[:, None], kernel_size=kernel, padding=kernel // 2, stride=1)[:, 0]
    s = s.view(k.shape[0], q.shape[0] // k.shape[0], -1).mean(1)
    return F.pad(s, (0, window), value=s.max().item() + 1)


@pytest.mark.parametrize("L,cr", [(64, 0.25), (64, 0.5), (100, 0.5), (100, 0.75)])
def test_pyramidkv_kvpress_rule_keeps_kvpress_sets(L, cr):
    q, k = rand_qk(L, 7)
    w, layers = 8, 4
    for layer in range(layers):
        n_kept = kvpress_budget(L, cr, w, 20, layers, layer)
        expected = kvpress_keep(kvpress_snapkv_scores(q, k, w), n_kept)
        got = method_keep(f"pyramidkv(ratio={1 - cr},window_size=8,budget_rule=kvpress)", q, k, layer=layer, layers=layers)
        assert got == expected


# ----------------------------------------------------------------------------- kvpress scorers


@pytest.mark.parametrize("L,cr", [(64, 0.5), (100, 0.25), (40, 0.75)])
def test_knorm_keeps_lowest_key_norms(L, cr):
    q, k = rand_qk(L, 11)
    expected = kvpress_keep(-k.norm(dim=-1), int(L * (1 - cr)))
    assert method_keep(f"knorm(ratio={1 - cr})", q, k) == expected


def test_knorm_small_example():
    k = torch.zeros(1, 5, 2)
    k[0, :, 0] = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.5])  # norms
    assert S.knorm_select(k, 2).tolist() == [[1, 4]]
    assert S.knorm_select(k, 3).tolist() == [[1, 2, 4]]


@pytest.mark.parametrize("L,cr", [(64, 0.5), (100, 0.75)])
def test_keydiff_keeps_keys_least_like_the_mean_direction(L, cr):
    q, k = rand_qk(L, 12)
    anchor = F.normalize(k, p=2, dim=-1).mean(dim=1, keepdim=True)
    expected = kvpress_keep(-F.cosine_similarity(k, anchor, dim=-1), int(L * (1 - cr)))
    assert method_keep(f"keydiff(ratio={1 - cr})", q, k) == expected


@pytest.mark.parametrize("L,cr", [(64, 0.5), (100, 0.75), (33, 0.25)])
def test_tova_ranks_by_last_query_averaged_over_heads(L, cr):
    q, k = rand_qk(L, 13)
    att = naive_attention(q, k, SCALING)[:, -1, : L - 1].float()  # last query, earlier keys
    s = att.mean(0, keepdim=True).repeat(H_KV, 1)  # all query heads, one ranking
    s = F.pad(s, (0, 1), value=s.max().item() + 1)
    got = method_keep(f"tova(ratio={1 - cr})", q, k)
    assert got == kvpress_keep(s, int(L * (1 - cr)))
    assert got[0] == got[1] and got[0][-1] == L - 1


@pytest.mark.parametrize("L,cr", [(64, 0.5), (100, 0.75), (29, 0.25)])
def test_observed_attention_normalises_by_queries_that_see_each_key(L, cr):
    q, k = rand_qk(L, 14)
    att = naive_attention(q, k, SCALING).float()
    s = att.sum(1) / torch.arange(L, 0, -1, dtype=torch.float32)
    s = s.view(H_KV, H_Q // H_KV, L).mean(1)
    got = method_keep(f"observed_attention(ratio={1 - cr},chunk=7)", q, k)
    assert got == kvpress_keep(s, int(L * (1 - cr)))


# ----------------------------------------------------------------------------- LOOK-M merges

# keys [L=7, D=4] of one head; kept positions 0, 2, 5 are unit axes.  Evicted entries and
# their most similar kept key (cosine):  1: [3,0,4,0]/5 -> 5 (0.8);  3: [0,4,3,0]/5 -> 2 (0.8);
# 4: [12,5,0,0]/13 -> 0 (12/13);  6: [2,0,0,0] -> 0 (1.0).
K0 = [[1, 0, 0, 0], [3, 0, 4, 0], [0, 1, 0, 0], [0, 4, 3, 0], [12, 5, 0, 0], [0, 0, 1, 0], [2, 0, 0, 0]]
V0 = [[0, 1], [1, 0], [2, 2], [4, 0], [0, 4], [8, 8], [6, 6]]
KEEP = [0, 2, 5]


def _frac(rows):
    return torch.tensor([[float(Fraction(x)) for x in r] for r in rows])


def _merge_one_head(how):
    k = torch.tensor(K0, dtype=torch.float32)[None]
    v = torch.tensor(V0, dtype=torch.float32)[None]
    return S.lookm_merge(k, v, torch.tensor([KEEP]), how)


def test_lookm_pivot_merge_hand_values():
    mk, mv = _merge_one_head("pivot")
    # kept 0 <- 4, 6: (k0 + (k4 + k0)/2 + (k6 + k0)/2) / 3 = ([1,0,0,0] + [6.5,2.5,0,0] + [1.5,0,0,0]) / 3
    # kept 2 <- 3:    (k2 + (k3 + k2)/2) / 2 = ([0,1,0,0] + [0,2.5,1.5,0]) / 2
    # kept 5 <- 1:    (k5 + (k1 + k5)/2) / 2 = ([0,0,1,0] + [1.5,0,2.5,0]) / 2
    assert torch.allclose(mk[0], _frac([[3, "5/6", 0, 0], [0, "7/4", "3/4", 0], ["3/4", 0, "7/4", 0]]), atol=1e-6)
    # values follow the keys' pairing: ([0,1] + [0,2.5] + [3,3.5]) / 3, ([2,2] + [3,1]) / 2, ([8,8] + [4.5,4]) / 2
    assert torch.allclose(mv[0], _frac([[1, "7/3"], ["5/2", "3/2"], ["25/4", 6]]), atol=1e-6)
    # averaged merging, for contrast: (k0 + k4 + k6) / 3, (k2 + k3) / 2, (k5 + k1) / 2
    ak, av = _merge_one_head("average")
    assert torch.allclose(ak[0], _frac([[5, "5/3", 0, 0], [0, "5/2", "3/2", 0], ["3/2", 0, "5/2", 0]]), atol=1e-6)
    assert torch.allclose(av[0], _frac([[2, "11/3"], [3, 1], ["9/2", 4]]), atol=1e-6)


def test_lookm_weighted_merge_hand_values():
    mk, mv = _merge_one_head("weighted")
    # similarities 0.8, 0.8, 12/13, 1.0 (entries 1, 3, 4, 6), mean 0.8808: only 4 and 6 merge, both into 0
    # k0' = (k0 + 12/13 k4 + 1.0 k6) / 3 = [61/13, 20/13, 0, 0];  v0' = ([0,1] + 12/13 [0,4] + [6,6]) / 3
    assert torch.allclose(mk[0], _frac([["61/13", "20/13", 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), atol=1e-6)
    assert torch.allclose(mv[0], _frac([[2, "139/39"], [2, 2], [8, 8]]), atol=1e-6)


def test_lookm_weighted_filter_averages_each_evicted_slot_over_heads():
    # head 1: the evicted entries' similarities are 1.0 (entry 1 -> 0), then 0.6, 0.6, 0.6
    k1 = [[1, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0], [0, 3, 0, 4], [0, 0, 3, 4], [0, 0, 1, 0], [3, 0, 0, 4]]
    k = torch.tensor([K0, k1], dtype=torch.float32)
    v = torch.tensor([V0, V0], dtype=torch.float32)
    mk, mv = S.lookm_merge(k, v, torch.tensor([KEEP, KEEP]), "weighted")
    # slot means over heads: 0.9, 0.7, 0.7615, 0.8; overall mean 0.7904 -> slots 0 and 3 (positions 1 and 6)
    # head 0: 6 -> 0 (s 1.0), 1 -> 5 (s 0.8); entry 4 (12/13) no longer merges
    assert torch.allclose(mk[0], _frac([["3/2", 0, 0, 0], [0, 1, 0, 0], ["6/5", 0, "21/10", 0]]), atol=1e-6)
    assert torch.allclose(mv[0], _frac([[3, "7/2"], [2, 2], ["22/5", 4]]), atol=1e-6)
    # head 1: 1 -> 0 (s 1.0) and 6 -> 0 (s 0.6): (k0 + k1 + 0.6 k6) / 3
    assert torch.allclose(mk[1], _frac([["8/5", 0, 0, "4/5"], [0, 1, 0, 0], [0, 0, 1, 0]]), atol=1e-6)
    assert torch.allclose(mv[1], _frac([["23/15", "23/15"], [2, 2], [8, 8]]), atol=1e-6)


def test_lookm_method_stores_pivot_merged_entries():
    L = 30
    q, k = rand_qk(L, 15)
    v = torch.randn(H_KV, L, D, generator=torch.Generator().manual_seed(3))
    m = build_setting("lookm(ratio=0.4,merge=pivot)").methods[0]
    layout = single_layout(L)
    layout.image_mask[0, 5:20] = True
    index, valid, k_keep, v_keep = m.on_prefill_kv(1, layout, ATTN, q[None], k[None], v[None])
    keep = index[0][:, valid[0]]
    ek, ev = S.lookm_merge(k, v, keep, "pivot")
    assert torch.allclose(k_keep[0][:, valid[0]], ek) and torch.allclose(v_keep[0][:, valid[0]], ev)
    ak, _ = S.lookm_merge(k, v, keep, "average")
    assert not torch.allclose(ek, ak)


# ----------------------------------------------------------------------------- knobs, batching, generation


def test_new_knobs_are_validated_by_name():
    for spec, knob in [
        ("streamingllm(split=paper)", "split"),
        ("lookm(merge=mean)", "merge"),
        ("pyramidkv(budget_rule=snapkv)", "budget_rule"),
        ("knorm(ratio=0)", "ratio"),
        ("observed_attention(chunk=0)", "chunk"),
    ]:
        with pytest.raises(ConfigError, match=rf"{knob}=.*(allowed|out of range)"):
            build_setting(spec)


NEW_SPECS = [
    "streamingllm(ratio=0.4,split=effivlm)",
    "pyramidkv(ratio=0.5,budget_rule=kvpress,window_size=2)",
    "lookm(ratio=0.4,merge=pivot)",
    "lookm(ratio=0.4,merge=weighted)",
    "knorm(ratio=0.4)",
    "keydiff(ratio=0.4)",
    "tova(ratio=0.3)",
    "observed_attention(ratio=0.3)",
]


@pytest.mark.parametrize("spec", NEW_SPECS)
def test_batch_rows_keep_the_same_entries_as_alone(spec):
    lengths, T = [37, 22], 37
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    keys = torch.zeros(B, H_KV, T, D)
    queries = torch.zeros(B, H_Q, T, D)
    alone = []
    for r, L in enumerate(lengths):
        q, k = rand_qk(L, 20 + r)
        mask[r, T - L :] = True
        keys[r, :, T - L :] = k
        queries[r, :, T - L :] = q
        alone.append(method_keep(spec, q, k))
    m = build_setting(spec).methods[0]
    m._shape = DecoderShape(64, 128, H_Q, H_KV, D, 100, layers=4)
    layout = BatchLayout(
        input_ids=torch.arange(B * T).view(B, T) % 50 + 3, prompt_mask=mask, image_mask=torch.zeros_like(mask),
        seq_index=torch.arange(T).expand(B, T).clone(), seq_valid=mask.clone(),
    )
    tail = m.query_tail(1, layout)
    index, valid = m.on_prefill_kv(1, layout, ATTN, queries[:, :, T - tail :] if tail else None, keys, keys.clone())[:2]
    for r, L in enumerate(lengths):
        got = [sorted((index[r, h][valid[r]] - (T - L)).tolist()) for h in range(H_KV)]
        assert got == alone[r]
        assert len(got[0]) == m.budget(1, L)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def llava():
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.tiny import tiny_llava

    model, proc = tiny_llava(layers=3)
    return model, proc, LlavaAdapter(model, proc)


def _generate(bundle, spec):
    model, proc, adapter = bundle
    batch = adapter.build_inputs(_images(2), ["what color is the big square in the top left corner", "count"])
    methods = build_setting(spec).ordered()
    ctx = CompressionContext(model, adapter, proc)
    for m in methods:
        m.prepare(ctx)
    try:
        with torch.inference_mode():
            out = model.generate(
                **batch, past_key_values=DynamicCache(config=model.config.get_text_config()), max_new_tokens=3, do_sample=False,
                pad_token_id=proc.tokenizer.pad_token_id, return_dict_in_generate=True, output_scores=True,
            )
        stats = methods[0].after_generate(ctx, batch, None) if methods else None
        layout = SequenceLayout.current(model)
        layers = {l: rec.positions.clone() for l, rec in layout.batch.layers.items()} if layout and layout.batch else {}
    finally:
        for m in reversed(methods):
            m.remove(ctx)
    return out, stats, layers, batch


@pytest.mark.parametrize("name", ["knorm", "keydiff", "tova", "observed_attention"])
def test_new_methods_generate_in_a_padded_batch(llava, name):
    base = _generate(llava, "none")[0]
    full = _generate(llava, f"{name}(ratio=1.0)")[0]
    assert full.sequences.tolist() == base.sequences.tolist()
    for a, b in zip(base.scores, full.scores):
        assert torch.allclose(a, b, atol=1e-5)
    out, stats, layers, batch = _generate(llava, f"{name}(ratio=0.4)")
    real = batch["attention_mask"].sum(-1).tolist()
    for r, st in enumerate(stats):
        assert st["tokens_kept"] == S.kv_budget(real[r], 0.4)
    for pos in layers.values():
        for r in range(2):
            kept = pos[r][pos[r] >= 0]
            assert bool(batch["attention_mask"][r, kept].all())
