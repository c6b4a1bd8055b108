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
    # 16 samples (binomial sd ~0.1 around the 0.76-0.81 measured on 200): that it is the
    # embedded model and that it answers; the quality check is the per-task test below
    res = run(RunConfig(tasks=["synth_attribute"], limit=16, output=str(tmp_path), settings=["none"]))
    (cell,) = res["cells"]
    assert cell["model"] == "embedded" and cell["scores"]["accuracy"] >= 0.6


# Every task type, 48 held-out samples (seed 2024): a floor under the accuracy measured on 200
# samples of seeds 2024 and 7777 (recipe.json; the lower of the two, minus ~2.5 binomial sd at
# n=48), and above each task's chance level except spatial's (measured 0.575-0.595 against a
# majority answer of 0.525-0.575: the shipped model is barely above chance there, issue 16).
# A random network of the same architecture answers none of them (its tokens are not answers).
FLOORS = {
    "synth_attribute": 0.6,
    "synth_count": 0.7,
    "synth_spatial": 0.65,
    "synth_ocr": 0.9,
    "synth_exists": 0.75,
    "synth_multiple_choice": 0.55,
    "synth_counterfactual": 0.65,
}


def _per_task(model, processor, adapter_cls, n=48) -> dict[str, float]:
    adapter = adapter_cls(model, processor)
    out = {}
    for name in FLOORS:
        task = TASKS.get(name)
        samples = task.samples(2024, n)
        batch = adapter.build_inputs([s.image for s in samples], [task.prompt(s) for s in samples])
        with torch.inference_mode():
            gen = model.generate(**batch, max_new_tokens=task.max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        out[name] = sum(task.score(t, s) for t, s in zip(texts, samples)) / len(samples)
    return out


def test_every_task_type_is_answered_above_its_floor_and_random_weights_fail_them(embedded):
    got = _per_task(embedded.model, embedded.processor, type(embedded.adapter))
    assert all(got[t] >= floor for t, floor in FLOORS.items()), got
    torch.manual_seed(1)
    random_model = type(embedded.model)(embedded.model.config).eval()
    rand = _per_task(random_model, embedded.processor, type(embedded.adapter))
    assert all(rand[t] < FLOORS[t] for t in FLOORS), rand
