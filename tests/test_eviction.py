"""KV-cache eviction: selections against independent computations on hand-built
tensors, budgets, batching, and generation through the real transformers models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from vlmcompress.errors import ConfigError
from vlmcompress.footprint import reference_dtype
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.eviction import scores as S
from vlmcompress.methods.layout import BatchLayout, SequenceLayout
from vlmcompress.methods.layout.flops import DecoderShape

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- independent references
# Written as plainly as possible: full T x T attention, explicit loops, python sorting.


def naive_attention(q, k, scaling):
    """Full causal attention of ALL positions: [H_q, L, L] (float64)."""
    h_q, L, _ = q.shape
    rep = h_q // k.shape[0]
    out = torch.zeros(h_q, L, L, dtype=torch.float64)
    for h in range(h_q):
        kh = k[h // rep].double()
        for i in range(L):
            logits = (q[h, i].double() @ kh[: i + 1].T) * scaling
            out[h, i, : i + 1] = torch.softmax(logits, -1)
    return out


def python_top(scores_row, n):
    """Indices of the n largest values, ties to the earlier index."""
    order = sorted(range(len(scores_row)), key=lambda i: (-scores_row[i], i))
    return order[:n]


def naive_pool(row, kernel):
    """avg_pool1d with zero padding kernel//2 (count_include_pad)."""
    half = kernel // 2
    return [sum(row[j] for j in range(i - half, i + half + 1) if 0 <= j < len(row)) / kernel for i in range(len(row))]


def rand_qk(h_q=4, h_kv=2, L=23, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(h_q, L, d, generator=g), torch.randn(h_kv, L, d, generator=g)


# ----------------------------------------------------------------------------- budgets


def test_budgets_floor_and_minimum():
    assert S.kv_budget(100, 0.29) == 29  # 0.29 * 100 is 28.999... in floating point
    assert S.kv_budget(100, 0.001) == 1
    assert S.kv_budget(7, 1.0) == 7
    assert S.recent_window(60) == 6 and S.recent_window(5) == 1 and S.recent_window(5, window=8) == 5


def test_pyramid_budgets_follow_the_formula():
    # rule="linear": this project's first rule (the references' are in test_eviction_fidelity.py)
    L, B, w, layers, beta = 1000, 400, 40, 5, 20.0
    got = S.pyramid_budgets(L, B, w, layers, beta, rule="linear")
    lo = (B - w) / beta
    hi = 2 * (B - w) - lo
    expected = [w + round(hi - i * (hi - lo) / (layers - 1)) for i in range(layers)]
    assert got == expected
    assert got == sorted(got, reverse=True)
    assert abs(sum(got) / layers - B) <= 1
    # the first layer cannot hold more than the prompt: the top is capped at L and the bottom raised
    assert S.pyramid_budgets(20, 16, 2, 4, 20.0, rule="linear") == [20, 17, 15, 12]
    # one layer: no pyramid, the uniform budget
    assert S.pyramid_budgets(20, 16, 2, 1, 20.0, rule="linear") == [16]


# ----------------------------------------------------------------------------- scorers vs references


@pytest.mark.parametrize("kernel,pooling", [(5, "avg"), (3, "max"), (1, "avg")])
def test_snapkv_matches_independent_computation(kernel, pooling):
    q, k = rand_qk(L=31, seed=1)
    scaling, budget, window = 8**-0.5, 12, 4
    got = S.snapkv_select(q[:, -window:], k, scaling, budget, window, kernel, pooling)
    att = naive_attention(q, k, scaling)[:, -window:, : 31 - window]  # window queries, prefix keys
    rep = 2
    expected = []
    for hk in range(2):
        head_scores = []
        for h in range(hk * rep, (hk + 1) * rep):
            row = att[h].mean(0).tolist()
            if kernel > 1:
                half = kernel // 2
                if pooling == "avg":
                    row = naive_pool(row, kernel)
                else:
                    row = [max(row[j] for j in range(i - half, i + half + 1) if 0 <= j < len(row)) for i in range(len(row))]
            head_scores.append(row)
        mean = [sum(c) / rep for c in zip(*head_scores)]
        keep = sorted(python_top(mean, budget - window) + list(range(31 - window, 31)))
        expected.append(keep)
    assert got.tolist() == expected
    assert got.shape == (2, budget)


@pytest.mark.parametrize("per_head", [True, False])
def test_h2o_chunked_column_sums_match_full_attention(per_head):
    q, k = rand_qk(L=29, seed=2)
    scaling, budget, window = 8**-0.5, 10, 2
    got = S.h2o_select(q, k, scaling, budget, window, per_head=per_head, chunk=7)  # chunks that do not divide L
    cols = naive_attention(q, k, scaling).sum(1)  # [H_q, L]
    per_kv = [(cols[0] + cols[1]) / 2, (cols[2] + cols[3]) / 2]
    if not per_head:
        per_kv = [(per_kv[0] + per_kv[1]) / 2] * 2
    expected = [sorted(python_top(s[: 29 - window].tolist(), budget - window) + [27, 28]) for s in per_kv]
    assert got.tolist() == expected
    if not per_head:
        assert got[0].tolist() == got[1].tolist()


def test_column_sums_memory_is_chunked():
    # one chunk of queries never builds more than chunk x L scores: the sums still add to L per head
    q, k = rand_qk(L=50, seed=3)
    sums = S.attention_column_sums(q, k, 0.3, chunk=8)
    assert torch.allclose(sums.sum(-1), torch.full((4,), 50.0), atol=1e-4)


def test_streamingllm_keeps_sinks_and_recent():
    got = S.streamingllm_select(20, 8, 4, 2)
    assert got.tolist() == [[0, 1, 2, 3, 16, 17, 18, 19]] * 2


def test_random_is_seeded_and_keeps_window():
    a = S.random_select(40, 10, 3, 2, torch.Generator().manual_seed(5))
    b = S.random_select(40, 10, 3, 2, torch.Generator().manual_seed(5))
    c = S.random_select(40, 10, 3, 2, torch.Generator().manual_seed(6))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert a.shape == (2, 10) and a[0, -3:].tolist() == [37, 38, 39] and len(set(a[0].tolist())) == 10


def test_ties_break_towards_earlier_positions():
    scores = torch.zeros(1, 10)
    assert S.top_with_window(scores, 4, 1).tolist() == [[0, 1, 2, 9]]


def test_lookm_keeps_text_first_and_merges_by_similarity():
    q, k = rand_qk(L=20, seed=4)
    image = torch.zeros(20, dtype=torch.bool)
    image[2:14] = True  # 12 image tokens, 8 text tokens
    keep = S.lookm_select(q, k, 0.35, 10, image)
    # budget 10, window 1: the 7 older text tokens fill first, then 2 image tokens
    text_before_window = [i for i in range(19) if not image[i]]
    for head in keep.tolist():
        assert set(text_before_window) <= set(head) and 19 in head
    v = torch.randn(2, 20, 8)
    mk, mv = S.lookm_merge(k, v, keep, "average")
    for h in range(2):
        kept = keep[h].tolist()
        ev = [i for i in range(20) if i not in kept]
        kn = torch.nn.functional.normalize(k[h], dim=-1)
        groups = {j: [kept[j]] for j in range(len(kept))}
        for e in ev:
            groups[int(torch.argmax(kn[e] @ kn[kept].T))].append(e)
        for j, members in groups.items():
            assert torch.allclose(mv[h, j], v[h, members].mean(0), atol=1e-5)


def test_vlcache_budgets_are_proportional_and_exact():
    got = S.vlcache_budgets([0.9, 0.5, 0.1], 10, 100)
    assert sum(got) == 30 and got[2] > got[1] > got[0]
    assert S.vlcache_budgets([0.0, 0.0], 90, 100) == [90, 90]


# ----------------------------------------------------------------------------- batching through the layout


def _layout(lengths, T, d=8, h_kv=2, h_q=4, seed=0):
    """A left-padded batch whose rows hold exactly the keys/queries each sample has alone."""
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    keys = torch.zeros(B, h_kv, T, d)
    queries = torch.zeros(B, h_q, T, d)
    alone = []
    for r, L in enumerate(lengths):
        q, k = rand_qk(h_q, h_kv, L, d, seed + r)
        mask[r, T - L :] = True
        keys[r, :, T - L :] = k
        queries[r, :, T - L :] = q
        alone.append((q, k))
    ids = torch.arange(B * T).view(B, T) % 50 + 3
    layout = BatchLayout(
        input_ids=ids, prompt_mask=mask, image_mask=torch.zeros_like(mask), seq_index=torch.arange(T).expand(B, T).clone(), seq_valid=mask.clone()
    )
    return layout, keys, queries, alone


def _kept_positions(index, valid, T, lengths):
    out = []
    for r, L in enumerate(lengths):
        slots = index[r][:, valid[r]]
        out.append((slots - (T - L)).tolist())
    return out


@pytest.mark.parametrize(
    "spec", ["snapkv(ratio=0.4)", "h2o(ratio=0.3)", "streamingllm(ratio=0.5)", "random(ratio=0.4,seed=3)", "pyramidkv(ratio=0.5)", "lookm(ratio=0.4)"]
)
def test_batch_rows_keep_the_same_entries_as_alone(spec):
    method = build_setting(spec).methods[0]
    method._shape = DecoderShape(64, 128, 4, 2, 8, 100, layers=4)
    attn = SimpleNamespace(scaling=8**-0.5, head_dim=8)
    lengths, T = [37, 22], 37
    layout, keys, queries, _ = _layout(lengths, T)
    tail = method.query_tail(1, layout)
    q_tail = queries[:, :, T - tail :] if tail else None
    res = method.on_prefill_kv(1, layout, attn, q_tail, keys, keys.clone())
    index, valid = res[0], res[1]
    batched = _kept_positions(index, valid, T, lengths)
    for r, L in enumerate(lengths):
        one, k1, q1, _ = _layout([L], L, seed=r)
        tail1 = method.query_tail(1, one)
        res1 = method.on_prefill_kv(1, one, attn, q1[:, :, L - tail1 :] if tail1 else None, k1, k1.clone())
        alone = _kept_positions(res1[0], res1[1], L, [L])[0]
        # the seeded random draw depends on the sample's own tokens: give the lone row the same ids
        if spec.startswith("random"):
            one.input_ids = layout.input_ids[r : r + 1, T - L :]
            res1 = method.on_prefill_kv(1, one, attn, None, k1, k1.clone())
            alone = _kept_positions(res1[0], res1[1], L, [L])[0]
        assert batched[r] == alone
        assert len(alone[0]) == method.budget(1, L)  # the budget follows the row's own length
        assert all(0 <= p < L for head in alone for p in head)  # padding is never kept


def test_validation_names_the_knob():
    with pytest.raises(ConfigError, match="ratio"):
        build_setting("snapkv(ratio=0)")
    with pytest.raises(ConfigError, match="kernel"):
        build_setting("snapkv(kernel=4)")
    with pytest.raises(ConfigError, match="beta"):
        build_setting("pyramidkv(beta=0.5)")
    with pytest.raises(ConfigError, match="pooling"):
        build_setting("snapkv(pooling=median)")


# ----------------------------------------------------------------------------- real models


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


QUESTIONS = ["what color is the big square in the top left corner", "count"]


@pytest.fixture(scope="module")
def llava():
    from vlmcompress.models.llava import LlavaAdapter
    from vlmcompress.models.tiny import tiny_llava

    model, proc = tiny_llava(layers=3)
    return model, proc, LlavaAdapter(model, proc)


@pytest.fixture(scope="module")
def qwen():
    from vlmcompress.models.qwen2_vl import Qwen2VLAdapter
    from vlmcompress.models.tiny import tiny_qwen2_vl

    model, proc = tiny_qwen2_vl(layers=3)
    return model, proc, Qwen2VLAdapter(model, proc)


def generate(bundle, spec, questions=QUESTIONS, images=None, new_tokens=4, batch=None):
    model, proc, adapter = bundle
    if batch is None:
        batch = adapter.build_inputs(images or _images(len(questions)), questions)
    setting = build_setting(spec)
    ctx = CompressionContext(model, adapter, proc)
    methods = setting.ordered()
    for m in methods:
        m.prepare(ctx)
    try:
        cache = DynamicCache(config=model.config.get_text_config())
        with torch.inference_mode():
            out = model.generate(
                **batch, past_key_values=cache, max_new_tokens=new_tokens, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id,
                return_dict_in_generate=True, output_scores=True,
            )
        stats = [m.after_generate(ctx, batch, cache) for m in methods]
        layout = SequenceLayout.current(model)
        layers = {l: rec.positions.clone() for l, rec in layout.batch.layers.items()} if layout and layout.batch else {}
    finally:
        for m in reversed(methods):
            m.remove(ctx)
    return out, stats, layers, batch


KV_METHODS = ["streamingllm", "h2o", "snapkv", "pyramidkv", "random", "lookm", "vlcache"]


@pytest.mark.parametrize("name", KV_METHODS)
def test_ratio_one_leaves_outputs_unchanged(llava, name):
    base, _, _, _ = generate(llava, "none")
    out, stats, layers, batch = generate(llava, f"{name}(ratio=1.0)")
    assert out.sequences.tolist() == base.sequences.tolist()
    for a, b in zip(base.scores, out.scores):
        assert torch.allclose(a, b, atol=1e-5)
    real = batch["attention_mask"].sum(-1).tolist()
    assert [s["tokens_kept"] for s in stats[0]] == [float(r) for r in real]


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("name", KV_METHODS)
def test_generation_runs_in_a_padded_batch(request, family, name):
    bundle = request.getfixturevalue(family)
    out, stats, layers, batch = generate(bundle, f"{name}(ratio=0.4)")
    real = batch["attention_mask"].sum(-1).tolist()
    assert out.sequences.shape[0] == 2
    for r, st in enumerate(stats[0]):
        assert st["prompt_tokens_real"] == real[r]
        if name in ("pyramidkv", "vlcache"):
            assert st["tokens_kept"] == pytest.approx(S.kv_budget(real[r], 0.4), abs=1.0)  # mean over layers
        else:
            assert st["tokens_kept"] == S.kv_budget(real[r], 0.4)
        assert st["decode_flops_per_token"] < st["decode_flops_per_token_full"]
    T = batch["input_ids"].shape[1]
    for pos in layers.values():
        for r in range(2):
            kept = pos[r][pos[r] >= 0]
            assert bool(batch["attention_mask"][r, kept].all())  # no padded position kept


def test_sample_keeps_same_entries_alone_and_in_batch(llava):
    _, _, both, batch = generate(llava, "snapkv(ratio=0.3)")
    T = batch["input_ids"].shape[1]
    for r, q in enumerate(QUESTIONS):
        _, _, alone, one = generate(llava, "snapkv(ratio=0.3)", questions=[q], images=[_images(2)[r]])
        shift = T - one["input_ids"].shape[1]  # left padding moves a row's positions
        for l in both:
            b = both[l][r]
            got = sorted((b[b >= 0] - shift).tolist())
            a = alone[l][0]
            assert got == sorted(a[a >= 0].tolist())


def test_decode_positions_continue_after_eviction(llava):
    """Decoded tokens get their original positions, not the shorter cache's length."""
    model, _, adapter = llava
    seen = []
    layer0 = adapter.decoder_layers[0]
    h = layer0.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        _, _, _, batch = generate(llava, "streamingllm(ratio=0.1)", new_tokens=3)
    finally:
        h.remove()
    real = batch["attention_mask"].sum(-1)
    assert seen[1][:, -1].tolist() == real.tolist()  # first decoded token sits right after the prompt
    assert seen[2][:, -1].tolist() == (real + 1).tolist()


# ----------------------------------------------------------------------------- kv bytes after eviction, through the runner


def run_cell_batch(bundle, spec, questions=QUESTIONS, images=None, new_tokens=5):
    """One batch through the runner's ``generate_batch`` (cache choice, byte accounting
    and the methods' ``after_generate`` overrides as a real cell does them)."""
    from vlmcompress.eval.loop import generate_batch
    from vlmcompress.tasks.base import Sample

    model, proc, adapter = bundle
    images = images or _images(len(questions))
    samples = [Sample(str(i), im, q, "") for i, (im, q) in enumerate(zip(images, questions))]
    ctx = CompressionContext(model, adapter, proc)
    methods = build_setting(spec).ordered()
    for m in methods:
        m.prepare(ctx)
    try:
        out = generate_batch(ctx, methods, samples, new_tokens, torch.device("cpu"))
        layout = SequenceLayout.current(model)
        kept = {l: (rec.positions[:, 0] >= 0).sum(-1).tolist() for l, rec in layout.batch.layers.items()} if layout and layout.batch else {}
    finally:
        for m in reversed(methods):
            m.remove(ctx)
    return out, kept


def _kv_shape(model):
    cfg = model.config.get_text_config()
    return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads


@pytest.mark.parametrize("kv_spec", ["kivi(bits=2,group=16,residual=16)", "kv_outlier(bits=4,outlier_frac=0.05)"])
@pytest.mark.parametrize("evict", ["snapkv(ratio=0.4)", "pyramidkv(ratio=0.4)"])
def test_stacked_eviction_and_kv_quant_count_only_kept_tokens(llava, evict, kv_spec):
    from vlmcompress.methods.kv_quant.cache import analytic_bytes, fp16_bytes

    model = llava[0]
    spec = f"{evict}+{kv_spec}"
    out, kept = run_cell_batch(llava, spec)
    n_layers, H, D = _kv_shape(model)
    key_spec, value_spec = build_setting(kv_spec).methods[0].stream_specs()
    real = [st["prompt_tokens"] for st in out.sample_stats]
    assert real[0] != real[1]  # rows padded differently, so the shorter row's layers hold spare slots
    spare = [[max(kept[l]) - kept[l][r] for l in range(n_layers)] for r in range(2)]
    assert any(s > 0 for row in spare for s in row)
    for r, st in enumerate(out.sample_stats):
        decoded = st["generated_tokens"] - 1
        if evict.startswith("snapkv"):
            assert all(kept[l][r] == S.kv_budget(real[r], 0.4) for l in range(n_layers))
        analytic = fp16 = 0
        for l in range(n_layers):
            n = kept[l][r] + decoded  # exactly the kept prompt entries and the generated ones
            prompt_n = kept[l][r]
            analytic += analytic_bytes(key_spec, H, D, n, prompt_n if key_spec.rule == "fixed_range" else None)
            analytic += analytic_bytes(value_spec, H, D, n, prompt_n if value_spec.rule == "fixed_range" else None)
            fp16 += 2 * fp16_bytes(H, D, n)
        assert st["kv_bytes_analytic"] == analytic
        assert st["kv_bytes"] == analytic  # measured from the stored tensors
        assert st["kv_bytes_fp16"] == fp16
    # and each sample reports what it reports alone
    for r, q in enumerate(QUESTIONS):
        alone, _ = run_cell_batch(llava, spec, questions=[q], images=[_images(2)[r]])
        assert alone.predictions[0] == out.predictions[r]
        for key in ("kv_bytes", "kv_bytes_analytic", "kv_bytes_fp16", "kv_tokens", "generated_tokens"):
            assert alone.sample_stats[0][key] == out.sample_stats[r][key], key


def test_quantized_cache_never_stores_spare_slots(llava):
    """The shorter row's spare leading slots are not stored: each stream holds exactly the
    row's kept prompt entries plus its decoded ones."""
    from vlmcompress.methods.kv_quant.cache import QuantizedKVCache

    model, proc, adapter = llava
    seen = {}
    orig = QuantizedKVCache.footprint

    def spy(self, entries=None):
        seen["rows"] = [[layer.k_rows[r].n_tokens for layer in self.layers] for r in range(len(self.layers[0].k_rows))]
        seen["steps"] = len(self.layers[0].byte_log[0])
        return orig(self, entries)

    QuantizedKVCache.footprint = spy
    try:
        out, kept = run_cell_batch(llava, "snapkv(ratio=0.4)+kivi(bits=2,group=16,residual=16)", new_tokens=3)
    finally:
        QuantizedKVCache.footprint = orig
    steps = seen["steps"] - 1  # decode updates the whole batch went through
    for r in range(2):
        assert seen["rows"][r] == [kept[l][r] + steps for l in range(len(kept))]


@pytest.mark.parametrize("spec", ["snapkv(ratio=0.4)", "streamingllm(ratio=0.25)"])
def test_dynamic_cache_kv_bytes_after_eviction_count_kept_tokens(llava, spec):
    """With the plain cache the runner's default (per-token bytes x (prompt +
    generated - 1)) is overridden by the eviction method's count of kept entries."""
    model = llava[0]
    out, kept = run_cell_batch(llava, spec)
    n_layers, H, D = _kv_shape(model)
    # keys and values of one token in one layer, at the reference dtype (float16 for this
    # float32 model): bytes are reported as a GPU user's 16-bit cache holds them
    per_token = 2 * H * D * reference_dtype(model).itemsize
    ratio = float(spec.split("=")[1].rstrip(")"))
    for r, st in enumerate(out.sample_stats):
        budget = S.kv_budget(st["prompt_tokens"], ratio)
        assert all(kept[l][r] == budget for l in range(n_layers))
        assert st["kv_bytes"] == n_layers * per_token * (budget + st["generated_tokens"] - 1)
        assert st["kv_bytes"] < n_layers * per_token * (st["prompt_tokens"] + st["generated_tokens"] - 1)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_token_dropping_with_kv_quant_counts_only_kept_tokens(request, family):
    """Visual tokens dropped before decoder layer 0 leave spare slots in every layer of the
    shorter row; the quantized cache neither stores nor counts them."""
    from vlmcompress.methods.kv_quant.cache import analytic_bytes
    from vlmcompress.methods.visual_tokens.select import visual_budget

    bundle = request.getfixturevalue(family)
    spec = "visionzip(ratio=0.4)+kivi(bits=2,group=16,residual=16)"
    out, _ = run_cell_batch(bundle, spec, images=[_images(2)[0], _images(2)[0]])
    n_layers, H, D = _kv_shape(bundle[0])
    key_spec, value_spec = build_setting("kivi(bits=2,group=16,residual=16)").methods[0].stream_specs()
    for r, st in enumerate(out.sample_stats):
        n = st["prompt_tokens"] - st["visual_tokens"] + visual_budget(st["visual_tokens"], 0.4) + st["generated_tokens"] - 1
        assert st["kv_tokens"] == n
        assert st["kv_bytes"] == st["kv_bytes_analytic"] == n_layers * (analytic_bytes(key_spec, H, D, n) + analytic_bytes(value_spec, H, D, n))
    for r, q in enumerate(QUESTIONS):
        alone, _ = run_cell_batch(bundle, spec, questions=[q], images=[_images(2)[0]])
        assert alone.predictions[0] == out.predictions[r]
        assert alone.sample_stats[0]["kv_bytes"] == out.sample_stats[r]["kv_bytes"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_column_sums_equal_the_dense_attention_matrix(causal, chunk):
    """Chunked (and, when causal, truncated to each chunk's past) column sums against the
    whole L x L softmax in float64."""
    q, k = rand_qk(L=37, seed=chunk)
    got = S.attention_column_sums(q, k, 0.3, chunk=chunk, causal=causal)
    ke = k.double().repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = q.double() @ ke.transpose(1, 2) * 0.3
    if causal:
        logits = logits.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(got.double(), logits.softmax(-1).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("spec", ["h2o(ratio=0.3,chunk=5)", "h2o(ratio=0.5,per_head=false)", "observed_attention(ratio=0.4,chunk=7)"])
def test_column_sums_from_the_prefill_attention_keep_the_same_entries_as_recomputing_them(request, family, spec, monkeypatch):
    """On an SDPA model H2O's column sums come out of the prefill's own attention
    (``layout.fused``); the entries kept must be those of scoring separately from the
    queries, in a padded batch, and the logits must stay those of SDPA's attention."""
    bundle = request.getfixturevalue(family)
    model, _, adapter = bundle
    assert adapter.attention_implementation == "sdpa"
    from vlmcompress.methods.layout import fused

    calls = []
    real_fn = fused.attention_with_column_sums
    monkeypatch.setattr(fused, "attention_with_column_sums", lambda *a, **k: (calls.append(a[0].shape), real_fn(*a, **k))[1])
    out_f, stats_f, layers_f, batch = generate(bundle, spec)
    assert len(calls) == 2 * len(adapter.decoder_layers)  # every layer's prefill, each of the two rows, and no decode step
    assert adapter.text_config._attn_implementation == "sdpa"  # switched back after the prefill
    monkeypatch.setattr(SequenceLayout, "fuse_column_sums", False)
    out_r, stats_r, layers_r, _ = generate(bundle, spec)
    assert len(calls) == 2 * len(adapter.decoder_layers)
    assert layers_f.keys() == layers_r.keys()
    for l in layers_f:
        assert torch.equal(layers_f[l], layers_r[l])
    assert out_f.sequences.tolist() == out_r.sequences.tolist()
    for a, b in zip(out_f.scores, out_r.scores):
        assert torch.allclose(a, b, atol=1e-4)
    assert stats_f == stats_r


def test_fused_attention_matches_sdpa_and_recomputed_sums():
    from vlmcompress.methods.layout.attention import attention_column_sums, attention_with_column_sums

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(4, 23, 8, generator=g), torch.randn(2, 23, 8, generator=g), torch.randn(2, 23, 8, generator=g)
    out, sums = attention_with_column_sums(q, k, v, 0.35, chunk=6)
    assert torch.equal(sums, attention_column_sums(q, k, 0.35, chunk=6))
    ref = torch.nn.functional.scaled_dot_product_attention(q[None], k.repeat_interleave(2, 0)[None], v.repeat_interleave(2, 0)[None], is_causal=True, scale=0.35)[0]
    assert torch.allclose(out, ref, atol=1e-5)
    probs = ((q @ k.repeat_interleave(2, 0).transpose(1, 2)) * 0.35).masked_fill(torch.ones(23, 23, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    assert torch.allclose(sums, probs.sum(1), atol=1e-5)


def test_attention_the_fused_function_does_not_compute_keeps_the_recomputed_scores(llava, monkeypatch):
    """A sliding window (or soft-capping) is not what the fused function computes: such a
    model scores from the queries, as an eager model does."""
    from vlmcompress.methods.layout import fused

    calls = []
    real_fn = fused.attention_with_column_sums
    monkeypatch.setattr(fused, "attention_with_column_sums", lambda *a, **k: (calls.append(1), real_fn(*a, **k))[1])
    _, _, fused_layers, _ = generate(llava, "h2o(ratio=0.3)")
    assert calls
    calls.clear()
    monkeypatch.setattr(llava[2].text_config, "use_sliding_window", True, raising=False)
    _, _, layers, _ = generate(llava, "h2o(ratio=0.3)")
    assert not calls and all(torch.equal(layers[l], fused_layers[l]) for l in layers)
