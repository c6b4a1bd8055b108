"""Model families: every family's tiny checkpoint round-trips through ``vlmcompress
tiny-model`` and ``load_model``, every method family runs on every model family (or is
refused up front in one line), and the family-specific routes of the visual-token
pruners (anyres packing, Qwen2.5-VL's window order, InternVL's pixel shuffle, SigLIP's
received attention) put the right tokens in the right placeholders."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlmcompress.cli import cli
from vlmcompress.errors import ConfigError
from vlmcompress.eval.loop import generate_batch
from vlmcompress.methods import CompressionContext, build_setting
from vlmcompress.methods.layout import SequenceLayout
from vlmcompress.methods.visual_tokens import select as V
from vlmcompress.models import METHOD_FAMILIES, load_model
from vlmcompress.models.loading import adapter_class_for
from vlmcompress.models.tiny import TINY_BUILDERS, family_support
from vlmcompress.tasks.base import Sample

torch.set_num_threads(1)
CPU = torch.device("cpu")
FAMILIES = list(TINY_BUILDERS)


def _samples():
    """A square image and a wide one (anyres grids are unpadded to its aspect ratio)."""
    rng = np.random.default_rng(0)
    shapes = [(64, 64, 3), (40, 64, 3)]
    return [Sample(f"s{i}", Image.fromarray(rng.integers(0, 255, s, dtype=np.uint8)), "how many shapes are there ?", "1") for i, s in enumerate(shapes)]


def _bundle(family, **kw):
    model, processor = TINY_BUILDERS[family](**kw)
    adapter = adapter_class_for(model.config.model_type)(model, processor)
    return model, processor, adapter


def _family_of(method) -> str:
    """The method family a method belongs to, as ``list models`` reports them."""
    if method.hook in ("weights", "kv_cache"):
        return method.hook
    return "fastv" if method.name == "fastv" else method.family


def _run(family, spec, *, bundle=None, keep_layout=False, **kw):
    """Generate 3 tokens for the two samples under ``spec`` (on ``bundle``, or a fresh
    tiny model); returns the batch output, the context and (optionally) the layout of the
    batch, read before the hooks go."""
    model, processor, adapter = bundle or _bundle(family, **kw)
    ctx = CompressionContext(model, adapter, processor)
    methods = build_setting(spec).ordered()
    for m in methods:
        m.check_model(ctx)
    for m in methods:
        m.prepare(ctx)
    try:
        out = generate_batch(ctx, methods, _samples(), 3, CPU)
        layout = SequenceLayout.current(model).batch if keep_layout else None
    finally:
        for m in reversed(methods):
            m.remove(ctx)
    assert SequenceLayout.current(model) is None
    return out, ctx, layout


@functools.lru_cache(maxsize=None)
def _baseline_kv(family):
    out, _, _ = _run(family, "none")
    return [s["kv_bytes"] for s in out.sample_stats]


# ----------------------------------------------------------------------------- the matrix
RTN, KIVI, SNAPKV, FASTV, VZIP, PMP = (
    "rtn(bits=4,group_size=16)",
    "kivi(bits=2,group=8,residual=8)",
    "snapkv(ratio=0.5)",
    "fastv(ratio=0.5,layer=1)",
    "visionzip(ratio=0.5)",
    "prumerge_plus(ratio=0.5)",
)
STACK = f"{RTN}+{VZIP}+{SNAPKV}+{KIVI}"
# visual tokens of the square image, and how many a vision pruner at ratio 0.5 keeps:
# every crop / tile / image keeps half its tokens; LLaVA-NeXT / OneVision's 8 newline
# tokens (one per row of the 2x2 grid of 4x4-patch crops) are always kept
VISUAL = {"llava": (64, 32), "llava_next": (88, 5 * 8 + 8), "llava_onevision": (88, 5 * 8 + 8), "qwen2_vl": (16, 8), "qwen2_5_vl": (16, 8), "internvl": (80, 5 * 8)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", [RTN, KIVI, SNAPKV, FASTV, VZIP, PMP, STACK])
def test_every_method_family_acts_on_every_model_family(family, spec):
    model, _, adapter = _bundle(family)
    refused = {f: why for m in build_setting(spec).ordered() if (why := adapter.refusal(f := _family_of(m)))}
    if refused:  # refused before any work, in one line
        ctx = CompressionContext(model, adapter, None)
        with pytest.raises(ConfigError) as exc:
            for m in build_setting(spec).ordered():
                m.check_model(ctx)
        assert "\n" not in str(exc.value) and str(exc.value) in refused.values()
        return
    out, ctx, _ = _run(family, spec)
    assert len(out.predictions) == 2 and all(isinstance(p, str) for p in out.predictions)
    stats = out.sample_stats
    if spec in (RTN, STACK):
        assert ctx.info["weight_bytes_analytic"] < ctx.info["weight_bytes_original"]
    if spec in (KIVI, SNAPKV, VZIP, PMP, STACK, FASTV):
        assert all(s["kv_bytes"] < b for s, b in zip(stats, _baseline_kv(family)))
    if spec in (SNAPKV, STACK):
        assert all(s["tokens_kept"] < s["prompt_tokens_real"] for s in stats)
    if spec in (FASTV, VZIP, PMP, STACK):
        total, kept = VISUAL[family]
        assert stats[0]["visual_tokens"] == total
        assert all(s["visual_tokens_kept"] < s["visual_tokens"] for s in stats)
        if spec in (VZIP, PMP):
            assert stats[0]["visual_tokens_kept"] == kept


def test_every_family_serves_every_method_family_and_list_models_says_so():
    for family in FAMILIES:
        assert family_support(family) == {f: None for f in METHOD_FAMILIES}
    out = CliRunner().invoke(cli, ["list", "models"]).output
    for family in FAMILIES:
        line = next(l for l in out.splitlines() if l.startswith("  ") and l.split()[0] == family)
        assert all(f"{f}: yes" in line for f in METHOD_FAMILIES), line


def test_a_tower_the_pruners_cannot_score_is_refused_in_one_line_before_any_work():
    """LLaVA-NeXT over a SigLIP tower: no CLS token, and no reference rule outside
    OneVision; the vision pruners are refused by check_model and by the adapter's
    refusal alike, every other method family is served."""
    from transformers import LlavaNextForConditionalGeneration, SiglipVisionConfig

    model, processor = TINY_BUILDERS["llava_next"]()
    cfg = model.config
    cfg.vision_config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    cfg.vision_feature_select_strategy, cfg.vision_feature_layer = "full", -1
    model = LlavaNextForConditionalGeneration(cfg).eval()
    adapter = adapter_class_for("llava_next")(model, processor)
    why = adapter.refusal("vision_tokens")
    assert why and "no CLS token" in why and "\n" not in why
    assert all(adapter.refusal(f) is None for f in METHOD_FAMILIES if f != "vision_tokens")
    ctx = CompressionContext(model, adapter, processor)
    for spec in (VZIP, PMP):
        with pytest.raises(ConfigError, match="no CLS token"):
            build_setting(spec).ordered()[0].check_model(ctx)
    with pytest.raises(ConfigError):
        build_setting(VZIP).ordered()[0].prepare(ctx)
    assert SequenceLayout.current(model) is None  # nothing left installed


# ----------------------------------------------------------------------------- checkpoints
def test_tiny_model_command_round_trips_through_load_model(tmp_path):
    runner = CliRunner()
    for family in FAMILIES:
        folder = tmp_path / family
        res = runner.invoke(cli, ["tiny-model", family, str(folder)])
        assert res.exit_code == 0, res.output
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"} <= {p.name for p in folder.iterdir()}
        assert sum(p.stat().st_size for p in folder.iterdir()) < 4_000_000
        loaded = load_model(str(folder))
        model, processor, _ = _bundle(family)
        assert loaded.model.config.model_type == family and type(loaded.model) is type(model)
        assert type(loaded.processor) is type(processor) and loaded.adapter.name == adapter_class_for(family).name
        assert loaded.processor.chat_template == processor.chat_template
        images, prompts = [s.image for s in _samples()], [s.question for s in _samples()]
        batch, ref = loaded.adapter.build_inputs(images, prompts), _bundle(family)[2].build_inputs(images, prompts)
        assert batch.keys() == ref.keys() and all(torch.equal(batch[k], ref[k]) for k in batch)
        with torch.no_grad():
            assert torch.equal(loaded.model(**batch).logits, model(**batch).logits)
    res = runner.invoke(cli, ["tiny-model", "nosuchfamily", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no tiny model for 'nosuchfamily'" in res.output


@pytest.mark.parametrize("family", ["llava_next", "internvl"])
def test_run_on_a_tiny_checkpoint(family, tmp_path):
    import json

    runner = CliRunner()
    assert runner.invoke(cli, ["tiny-model", family, str(tmp_path / "m")]).exit_code == 0
    res = runner.invoke(
        cli,
        ["run", "--model", str(tmp_path / "m"), "--tasks", "synth_count", "--limit", "2", "--batch-size", "2", "--compress", STACK, "--output", str(tmp_path / "o")],
    )
    assert res.exit_code == 0, res.output
    cells = json.loads((tmp_path / "o" / "results.json").read_text())["cells"]
    assert len(cells) == 2 and all(c["n"] == 2 and c["n_errors"] == 0 for c in cells)
    base, stack = (next(c for c in cells if (c["setting"] == "none") == b) for b in (True, False))
    assert stack["efficiency"]["kv_bytes"] < base["efficiency"]["kv_bytes"]
    assert stack["efficiency"]["visual_tokens_kept"] < VISUAL[family][0]


# ----------------------------------------------------------------------------- routes of the vision pruners
def _spy_reduce(monkeypatch, cls):
    """Record every ``reduce_image`` call: (features, scores, keys, new features, keep)."""
    calls = []
    original = cls.reduce_image

    def spy(self, features, scores, keys, **kw):
        new, keep = original(self, features, scores, keys, **kw)
        calls.append((features.detach().clone(), scores.detach().clone(), keys.detach().clone(), new.detach().clone(), keep.clone()))
        return new, keep

    monkeypatch.setattr(cls, "reduce_image", spy)
    return calls


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_keep_decisions_follow_the_packing(family, monkeypatch):
    """Per-crop keep decisions land on the placeholders the model's own packing gives
    each crop patch (patch ids packed through ``pack_image_features``): unpadded-away
    patches vanish, newline tokens are kept; the wide image is unpadded."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    from vlmcompress.methods.visual_tokens.visionzip import VisionZip

    calls = _spy_reduce(monkeypatch, VisionZip)
    bundle = _bundle(family)
    model = bundle[0]
    out, _, layout = _run(family, VZIP, bundle=bundle, keep_layout=True)
    crop_keep = torch.stack([c[4] for c in calls])  # [crops, P]
    sizes = [s.load_image().size[::-1] for s in _samples()]  # (H, W)
    n_crops = [image_size_to_num_patches(hw, model.config.image_grid_pinpoints, model.config.vision_config.image_size) for hw in sizes]
    assert crop_keep.shape[0] == sum(n_crops)
    ids = torch.arange(crop_keep.numel(), dtype=torch.float32).view(*crop_keep.shape, 1)
    kw = {"vision_feature_select_strategy": model.config.vision_feature_select_strategy} if family == "llava_next" else {}
    packed = model.model.pack_image_features(list(torch.split(ids, n_crops)), torch.tensor(sizes), image_newline=torch.tensor([-1.0]), **kw)[0]
    flat = crop_keep.flatten()
    expected = torch.cat([torch.where(p[:, 0] < 0, torch.ones_like(p[:, 0], dtype=torch.bool), flat[p[:, 0].clamp(min=0).long()]) for p in packed])
    assert layout.drops[0][layout.image_mask].tolist() == expected.tolist()
    assert len(packed[1]) < n_crops[1] * crop_keep.shape[1]  # the wide image did lose rows to unpadding
    assert out.sample_stats[1]["visual_tokens_kept"] == int(expected[len(packed[0]) :].sum())


@torch.no_grad()
def test_onevision_scores_siglip_patches_by_received_attention(monkeypatch):
    """OneVision (no CLS): VisionZip scores a patch by the attention it receives in the
    layer before the feature layer, averaged over heads and queries; PruMerge+ by one
    full-width softmax in the feature layer (EffiVLM-Bench's layers 24 and 25)."""
    from vlmcompress.methods.visual_tokens.prumerge_plus import PruMergePlus
    from vlmcompress.methods.visual_tokens.visionzip import VisionZip

    bundle = model, _, adapter = _bundle("llava_onevision")
    layers = adapter.vision_layers
    zip_site, pm_site = adapter.vision_scoring("visionzip"), adapter.vision_scoring("prumerge_plus")
    assert (zip_site.kind, pm_site.kind) == ("received", "received")
    assert zip_site.attention is layers[-2].self_attn and pm_site.attention is layers[-1].self_attn
    for cls, spec, site_layer, full in ((VisionZip, VZIP, 0, False), (PruMergePlus, PMP, 1, True)):
        seen = []
        attn = layers[site_layer].self_attn
        calls = _spy_reduce(monkeypatch, cls)
        h = attn.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["hidden_states"] if "hidden_states" in kw else a[0]).detach().clone()), with_kwargs=True)
        try:
            _run("llava_onevision", spec, bundle=bundle)
        finally:
            h.remove()
        x = seen[-1].double()  # [crops, T, E]
        n, T, E = x.shape
        heads = 1 if full else attn.num_heads
        q = (x @ attn.q_proj.weight.double().T + attn.q_proj.bias.double()).view(n, T, heads, -1).transpose(1, 2)
        k = (x @ attn.k_proj.weight.double().T + attn.k_proj.bias.double()).view(n, T, heads, -1).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)  # [n, H, T, T]
        expected = att.mean(1).mean(1)  # over heads, then queries
        got = torch.stack([c[1] for c in calls[-n:]])
        assert torch.allclose(got.double(), expected, atol=1e-5)


@torch.no_grad()
def test_qwen2_5_vl_pruners_see_raster_order_and_hand_back_window_order(monkeypatch):
    """Qwen2.5-VL permutes merged tokens into attention windows before its blocks: the
    pruner's features per image are the tower's final (raster) output rows, its kept
    set is the top of scores read in a full-attention block and put in raster order,
    and what it returns is what the tower finally outputs, in raster order."""
    from transformers.vision_utils import get_vision_window_index

    from vlmcompress.methods.visual_tokens.visionzip import VisionZip

    bundle = model, _, adapter = _bundle("qwen2_5_vl")
    visual = model.model.visual
    assert adapter.scoring_block() == 1  # full-attention blocks 1 and 3 of 4: the last before the final one
    base_out, grids, seen = [], [], []
    hook = visual.register_forward_hook(lambda m, a, kw, o: base_out.append(o.pooler_output.detach().clone()), with_kwargs=True)
    pre = visual.register_forward_pre_hook(lambda m, a, kw: grids.append((kw.get("grid_thw") if "grid_thw" in kw else a[1]).clone()), with_kwargs=True)
    try:
        _run("qwen2_5_vl", "none", bundle=bundle)
        baseline = base_out[-1]
        calls = _spy_reduce(monkeypatch, VisionZip)
        blk = visual.blocks[1].attn
        h = blk.register_forward_pre_hook(lambda m, a, kw: seen.append((a, kw)), with_kwargs=True)
        _, _, layout = _run("qwen2_5_vl", "visionzip(ratio=0.5,dominant_share=1)", bundle=bundle, keep_layout=True)
        h.remove()
        pruned_out = base_out[-1]
    finally:
        hook.remove()
        pre.remove()
    calls = calls[-2:]
    assert torch.equal(torch.cat([c[0] for c in calls]), baseline)  # raster order in
    assert torch.equal(torch.cat([c[3] for c in calls]), pruned_out)  # raster order out
    # the kept set, from scores computed independently: softmax attention in block 1, per
    # image, received (mean over heads and queries), averaged over each 2x2 merge unit,
    # then put in raster order with the model's own window index
    args, kw = seen[-1]
    x = kw["hidden_states"] if "hidden_states" in kw else args[0]
    N = x.shape[0]
    q, k, _ = blk.qkv(x).reshape(N, 3, blk.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rot = __import__(type(blk).__module__, fromlist=["x"]).apply_rotary_pos_emb_vision
    q, k = rot(q, k, *kw["position_embeddings"])
    received = torch.empty(N)
    cu = kw["cu_seqlens"].tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        a = torch.softmax(torch.einsum("ihd,jhd->hij", q[s:e].double(), k[s:e].double()) * blk.scaling, -1)
        received[s:e] = a.mean(0).mean(0).float()
    vc = model.config.vision_config
    window = get_vision_window_index(grids[-1], spatial_merge_size=vc.spatial_merge_size, window_size=vc.window_size, patch_size=vc.patch_size)[0]
    unit = received.view(-1, 4).mean(-1)[torch.argsort(window)]
    expected, start = [], 0
    for n in (grids[-1].prod(-1) // 4).tolist():
        expected.append(V.top_indices(unit[start : start + n], n // 2) + start)
        start += n
    kept = layout.drops[0][layout.image_mask].nonzero().flatten()
    assert kept.tolist() == torch.cat(expected).tolist()


@torch.no_grad()
def test_internvl_scores_squares_of_patches_as_its_pixel_shuffle_packs_them(monkeypatch):
    """InternVL: the 2x2 squares the scores are averaged over are the ones the model's
    pixel shuffle packs; VisionZip's score is the attention a patch receives from the
    other patches (CLS query and column dropped) in the layer before the feature layer;
    the features it reduces are the projector's output, tile by tile."""
    from vlmcompress.methods.visual_tokens.visionzip import VisionZip

    bundle = model, _, adapter = _bundle("internvl")
    layers = model.model.vision_tower.encoder.layer
    site = adapter.vision_scoring("visionzip")
    assert (site.kind, site.score, site.group) == ("shuffle", "received", 4) and site.attention is layers[-2].attention
    assert adapter.vision_scoring("prumerge_plus").score == "cls"
    # squares: patch ids through the model's own pixel shuffle
    s = 8
    ids = torch.arange(s * s, dtype=torch.float32).view(1, s, s, 1)
    shuffled = model.model.pixel_shuffle(ids).reshape(1, -1, 4)  # [1, 16 tokens, 4 patch ids]
    sc, _ = V.square_tokens(torch.arange(s * s, dtype=torch.float32)[None], torch.zeros(1, s * s, 1), 2)
    assert torch.equal(sc[0], shuffled[0].mean(-1))
    # scores and features through a run
    seen, proj_out = [], []
    attn = layers[-2].attention
    h1 = attn.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["hidden_states"] if "hidden_states" in kw else a[0]).detach().clone()), with_kwargs=True)
    h2 = model.model.multi_modal_projector.register_forward_hook(lambda m, a, o: proj_out.append(o.detach().clone()), prepend=True)
    calls = _spy_reduce(monkeypatch, VisionZip)
    try:
        _run("internvl", VZIP, bundle=bundle)
    finally:
        h1.remove()
        h2.remove()
    x = seen[-1].double()
    n, T, E = x.shape
    H = attn.num_heads
    q = attn.q_proj(seen[-1]).double().view(n, T, H, -1).transpose(1, 2)
    k = attn.k_proj(seen[-1]).double().view(n, T, H, -1).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)  # [n, H, T, T]
    received = att[:, :, 1:, 1:].mean(1).mean(1)  # patch queries, patch keys
    side = int((T - 1) ** 0.5)
    expected = received.view(n, side // 2, 2, side // 2, 2).mean((2, 4)).flatten(1)
    got = torch.stack([c[1] for c in calls[-n:]])
    assert torch.allclose(got.double(), expected, atol=1e-6)
    assert torch.equal(torch.stack([c[0] for c in calls[-n:]]), proj_out[-1])
