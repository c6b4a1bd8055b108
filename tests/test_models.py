import numpy as np
import pytest
import torch
from PIL import Image

from vlmcompress.errors import ModelLoadError
from vlmcompress.models import load_model
from vlmcompress.tasks import TASKS


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(params=["llava", "qwen2_vl"])
def loaded(request, tiny_llava_dir, tiny_qwen_dir):
    return load_model(str(tiny_llava_dir if request.param == "llava" else tiny_qwen_dir))


def test_adapter_finds_the_parts(loaded):
    ad = loaded.adapter
    expected = {"llava": ("CLIPVisionModel", "LlavaMultiModalProjector"), "qwen2_vl": ("Qwen2VisionTransformerPretrainedModel", "PatchMerger")}[ad.name]
    assert (type(ad.vision_tower).__name__, type(ad.projector).__name__) == expected
    assert len(ad.decoder_layers) == loaded.model.config.get_text_config().num_hidden_layers
    assert ad.lm_head is loaded.model.lm_head
    assert ad.rotary_embedding is ad.language_model.rotary_emb


def test_batches_are_left_padded_and_image_tokens_located(loaded):
    ad = loaded.adapter
    batch = ad.build_inputs(_images(2), ["how many shapes are there ?", "what color is the object in row 1 column 2 ?"])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all()  # the shorter prompt is padded on the left
    n_img = ad.image_token_mask(batch["input_ids"]).sum(-1)
    assert n_img[0] == n_img[1] > 0
    pos = ad.position_ids(batch)
    if ad.name == "llava":
        first_real = int((mask[0] == 0).sum())
        assert pos[0, first_real] == 0 and pos[1, 0] == 0
    else:
        assert pos.shape[0] == 3  # M-RoPE: temporal, height, width


def test_batched_generation_equals_one_by_one(loaded):
    """Left padding must not change any sample's greedy answer."""
    ad, model = loaded.adapter, loaded.model
    samples = TASKS.get("synth_attribute").samples(0, 3) + TASKS.get("synth_multiple_choice").samples(0, 1)
    batch = ad.build_inputs([s.image for s in samples], [s.question for s in samples])
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
        for i, s in enumerate(samples):
            one = ad.build_inputs([s.image], [s.question])
            alone = model.generate(**one, max_new_tokens=4, do_sample=False)[:, one["input_ids"].shape[1] :]
            assert alone[0].tolist() == out[i].tolist()


def test_missing_path_and_non_model_folder_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_weights_load_only_from_safetensors(tiny_llava_dir, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llava_dir, folder)
    model = load_model(str(folder)).model
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(folder))
