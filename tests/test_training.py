"""The training recipe: its training-only questions are right about their scenes, its
schedule has the shape it documents, and a run resumed from a checkpoint ends with the
same weights as one that never stopped."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlmcompress.embedded import training
from vlmcompress.embedded.build import build_processor
from vlmcompress.embedded.curriculum import ask_compare, ask_locate, ask_pick_option
from vlmcompress.embedded.training import REFINE_TYPES, TrainConfig, language_batch, language_lr, parse_weights
from vlmcompress.synthetic.questions import OPTION_LETTERS
from vlmcompress.synthetic.scenes import random_scene


def scenes(n=300, seed=5):
    rng = np.random.default_rng(seed)
    return [(random_scene(rng, "train"), rng) for _ in range(n)]


def test_locate_names_the_row_or_column_of_the_object_or_says_it_is_absent():
    seen = set()
    for scene, rng in scenes():
        qa = ask_locate(scene, rng)
        if qa is None:
            continue
        axis, color, shape = re.fullmatch(r"what (row|column) is the (\w+) (\w+) in \?", qa.question).groups()
        matches = [s for s in scene.shapes if s.color == color and s.shape == shape]
        if qa.answer == "no":
            assert not matches
            # a hard negative: shares a colour or a shape with something present
            assert any(s.color == color or s.shape == shape for s in scene.shapes)
        else:
            (obj,) = matches
            assert int(qa.answer) == (obj.row if axis == "row" else obj.col) + 1
        seen.add((axis, qa.answer == "no"))
    assert seen == {("row", True), ("row", False), ("column", True), ("column", False)}


def test_compare_answers_follow_the_grid_and_are_balanced():
    answers = []
    for scene, rng in scenes():
        qa = ask_compare(scene, rng)
        if qa is None:
            continue
        r1, c1, rel, r2, c2 = re.fullmatch(r"is row (\d) column (\d) (left of|right of|above|below) row (\d) column (\d) \?", qa.question).groups()
        r1, c1, r2, c2 = map(int, (r1, c1, r2, c2))
        truth = {"left of": c1 < c2, "right of": c1 > c2, "above": r1 < r2, "below": r1 > r2}[rel]
        assert qa.answer == ("yes" if truth else "no")
        answers.append(qa.answer)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_pick_option_answers_the_letter_in_front_of_the_colour():
    letters = set()
    for scene, rng in scenes(100):
        qa = ask_pick_option(scene, rng)
        target, listed = re.fullmatch(r"what is (\w+) \? (.*)", qa.question).groups()
        options = dict(re.findall(r"([abcd]) \) (\w+)", listed))
        assert list(options) == list(OPTION_LETTERS) and len(set(options.values())) == 4
        assert options[qa.answer] == target
        letters.add(qa.answer)
    assert letters == set(OPTION_LETTERS)


def test_refine_phase_mixes_training_only_questions_in_the_vocabulary():
    tokenizer = build_processor().tokenizer
    cfg = TrainConfig(language_batch=8)
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    late = language_batch(tokenizer, cfg, cfg.language_steps - 1)
    refine = language_batch(tokenizer, cfg, cfg.language_steps)
    late_text = " ".join(tokenizer.batch_decode(late["input_ids"]))
    refine_text = " ".join(tokenizer.batch_decode(refine["input_ids"]))
    assert (refine["input_ids"] == unk).sum() == 0
    assert "what row is" not in late_text and "what is " not in late_text
    assert re.search(r"what (row|column) is the \w+ \w+ in ?\?", refine_text)
    # training-only types weigh nothing unless named; evaluated ones weigh 1 unless named
    w = parse_weights("exists=2", REFINE_TYPES)
    assert w[REFINE_TYPES.index("locate")] == 0 and w[REFINE_TYPES.index("exists")] == pytest.approx(2 * w[0])
    with pytest.raises(ValueError, match="unknown task types"):
        parse_weights("existence=2", REFINE_TYPES)


def test_refine_schedule_warms_up_from_the_decayed_rate_holds_then_decays():
    cfg = TrainConfig()
    end_of_language = language_lr(cfg, cfg.language_steps - 1)
    first = language_lr(cfg, cfg.language_steps)
    assert first == pytest.approx(end_of_language, rel=0.05)
    peak = language_lr(cfg, cfg.language_steps + cfg.refine_warmup_steps)
    assert peak == cfg.refine_lr == language_lr(cfg, cfg.language_steps + cfg.refine_steps // 2 - 1)
    last = language_lr(cfg, cfg.language_steps + cfg.refine_steps - 1)
    assert last == pytest.approx(0.1 * cfg.refine_lr, rel=1e-3)
    # the focus phase restarts the same shape from where refine ended
    focus_start = cfg.language_steps + cfg.refine_steps
    assert language_lr(cfg, focus_start) == pytest.approx(last, rel=0.05)
    assert language_lr(cfg, focus_start + cfg.focus_steps // 2 - 1) == cfg.refine_lr
    assert language_lr(cfg, focus_start + cfg.focus_steps - 1) == pytest.approx(0.1 * cfg.refine_lr, rel=1e-3)


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = TrainConfig(
        vision_steps=2, vision_batch=4, language_steps=3, refine_steps=2, focus_steps=2, refine_warmup_steps=1, language_batch=2,
        warmup_steps=1, late_from_step=1, eval_every=1000, checkpoint_every=2, decoder_hidden=32, decoder_layers=1, threads=1,
    )
    monkeypatch.setattr(training, "first_token_accuracy", lambda *a, **k: {})
    training.train(cfg, tmp_path / "whole", tmp_path / "whole_out")

    real_batch = training.language_batch
    crashed = []

    def crash_once(tokenizer, c, step, *a, **k):
        if step == 5 and not crashed:
            crashed.append(step)
            raise KeyboardInterrupt
        return real_batch(tokenizer, c, step, *a, **k)

    monkeypatch.setattr(training, "language_batch", crash_once)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, tmp_path / "resumed", tmp_path / "resumed_out")
    at_step_4 = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert at_step_4["step"] == 4
    training.train(cfg, tmp_path / "resumed", tmp_path / "resumed_out")

    whole = load_file(tmp_path / "whole_out" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed_out" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    # the steps after the checkpoint did move the decoder (so equality above means something)
    # (save_pretrained writes the checkpoint layout: language_model.model.* for model.language_model.*)
    saved, live = "language_model.model.layers.0.mlp.down_proj.weight", "model.language_model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(whole[saved], at_step_4["model"][live].half())


def test_a_bad_weight_spec_is_refused_before_any_training(tmp_path):
    cfg = TrainConfig(focus_task_weights="spatial=3,mc=3")
    with pytest.raises(ValueError, match=r"unknown task types in weights: \['mc'\]; known: .*multiple_choice"):
        training.train(cfg, tmp_path / "work", tmp_path / "out")
    assert not (tmp_path / "work").exists()
