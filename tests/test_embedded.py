"""The shipped embedded model: loads with from_pretrained, answers held-out questions,
and is not a random network."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmcompress.models import EMBEDDED_PATH, load_model
from vlmcompress.runner import RunConfig, run
from vlmcompress.tasks import TASKS

# task types the shipped model answers well (recipe.json) and whose answers a random
# network cannot guess (yes/no and option letters have chance levels of 0.25-0.5)
CHECK_TASKS = ["synth_attribute", "synth_count", "synth_ocr"]


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def _accuracy(model, processor, adapter_cls, n=24):
    adapter = adapter_cls(model, processor)
    correct = total = 0
    for name in CHECK_TASKS:
        task = TASKS.get(name)
        samples = task.samples(2024, n)
        batch = adapter.build_inputs([s.image for s in samples], [s.question for s in samples])
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=task.max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(task.score(t, s) for t, s in zip(texts, samples))
        total += len(samples)
    return correct / total


def test_shipped_weights_load_with_from_pretrained_as_safetensors():
    assert (EMBEDDED_PATH / "model.safetensors").exists()
    assert not list(EMBEDDED_PATH.glob("*.bin"))
    model = AutoModelForImageTextToText.from_pretrained(EMBEDDED_PATH, use_safetensors=True)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(EMBEDDED_PATH)
    assert type(processor).__name__ == "LlavaProcessor"


def test_embedded_model_answers_held_out_questions(embedded):
    acc = _accuracy(embedded.model, embedded.processor, type(embedded.adapter))
    assert acc >= 0.8, acc


def test_random_weights_of_the_same_architecture_fail(embedded):
    torch.manual_seed(0)
    random_model = type(embedded.model)(embedded.model.config).eval()
    acc = _accuracy(random_model, embedded.processor, type(embedded.adapter))
    assert acc < 0.2, acc


def test_default_run_uses_the_embedded_model(tmp_path):
    res = run(RunConfig(tasks=["synth_attribute"], limit=16, output=str(tmp_path), settings=["none"]))
    (cell,) = res["cells"]
    assert cell["model"] == "embedded" and cell["scores"]["accuracy"] >= 0.75
