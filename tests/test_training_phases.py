"""Continuation phases of the embedded model's recipe: start from exported weights, keep the
base recipe's draws unchanged, follow their documented schedule, resume exactly."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlmcompress.embedded import phases, training
from vlmcompress.embedded.build import build_config, build_processor
from vlmcompress.embedded.curriculum import ADDRESS_CURRICULUM, OPTION_CURRICULUM
from vlmcompress.embedded.phases import PHASES, Phase, phase_named
from vlmcompress.embedded.training import PHASE_TYPES, REFINE_TYPES, TrainConfig, language_batch
from vlmcompress.synthetic.questions import OPTION_LETTERS, ask_multiple_choice
from vlmcompress.synthetic.scenes import random_scene

ROOT = Path(__file__).resolve().parents[1]


def test_fewer_options_keep_the_wording_and_answer_with_the_letter_of_the_colour():
    rng = np.random.default_rng(3)
    seen = {2: set(), 3: set()}
    for _ in range(300):
        scene = random_scene(rng, "train")
        for name, k in (("choice_of_two", 2), ("choice_of_three", 3)):
            qa = OPTION_CURRICULUM[name](scene, rng)
            if qa is None:
                continue
            options = qa.meta["options"]
            assert len(options) == len(set(options)) == k
            listed = " ".join(f"{OPTION_LETTERS[i]} ) {o}" for i, o in enumerate(options))
            assert qa.question.startswith("what color is the ") and qa.question.endswith(f" ? {listed}")
            subject = qa.question[len("what color is the ") : -len(f" ? {listed}")]
            (obj,) = [s for s in scene.shapes if s.shape == subject or f"object in row {s.row + 1} column {s.col + 1}" == subject]
            assert qa.answer == OPTION_LETTERS[options.index(obj.color)]
            seen[k].add(qa.answer)
    assert seen == {2: set("ab"), 3: set("abc")}


def test_the_suite_still_asks_four_options_with_the_same_draws():
    """The n_options knob must not change what the four-option question draws: the held-out
    suite and the base recipe's batches stay as they were (values from the code before)."""
    rng = np.random.default_rng(11)
    scene = random_scene(rng, "heldout")
    before = rng.bit_generator.state
    qa = ask_multiple_choice(scene, rng)
    rng2 = np.random.default_rng(0)
    rng2.bit_generator.state = before
    # the four-option draw, spelled out as the code before the knob did it
    from collections import Counter

    from vlmcompress.synthetic.scenes import COLORS

    names = Counter(s.name for s in scene.shapes)
    unique = [s for s in scene.shapes if names[s.name] == 1]
    obj = unique[int(rng2.integers(len(unique)))]
    others = [c for c in COLORS if c != obj.color]
    options = [obj.color] + [others[i] for i in rng2.choice(len(others), size=3, replace=False)]
    options = [options[i] for i in rng2.permutation(4)]
    assert qa.meta["options"] == options and len(options) == 4
    assert rng.bit_generator.state == rng2.bit_generator.state


def test_base_recipe_batches_do_not_see_the_phase_only_types():
    tok = build_processor().tokenizer
    cfg = TrainConfig(language_batch=4)
    assert PHASE_TYPES[: len(REFINE_TYPES)] == REFINE_TYPES and set(PHASE_TYPES) - set(REFINE_TYPES) == set(OPTION_CURRICULUM) | set(ADDRESS_CURRICULUM)
    a = language_batch(tok, cfg, cfg.language_steps + 5)
    b = language_batch(tok, cfg, cfg.language_steps + 5)
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_phase_schedule_and_learning_rate_shape():
    phase = Phase(name="t", steps=1000, warmup_steps=100, lr=1e-3, mix=((0.0, "choice_of_two=1"), (0.5, "multiple_choice=1,attribute=0,count=0,spatial=0,ocr=0,exists=0")))
    first, second = phase.weights_at(0), phase.weights_at(500)
    assert first[PHASE_TYPES.index("choice_of_two")] == pytest.approx(1 / (1 + 6))  # 6 evaluated types weigh 1 unless named
    assert second[PHASE_TYPES.index("multiple_choice")] == 1.0 and second[PHASE_TYPES.index("choice_of_two")] == 0
    assert phase.weights_at(499)[PHASE_TYPES.index("choice_of_two")] > 0
    assert phase.lr_at(0) == pytest.approx(1e-3 * (0.1 + 0.9 / 100))
    assert phase.lr_at(99) == pytest.approx(1e-3) and phase.lr_at(499) == 1e-3
    assert phase.lr_at(999) == pytest.approx(1e-4, rel=1e-3)
    for p in PHASES:  # the shipped phases' mixes parse
        for step in (0, p.steps // 2, p.steps - 1):
            assert p.weights_at(step).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown phase 'nosuch'; phases: letters"):
        phase_named("nosuch")


def _tiny_init(path: Path) -> None:
    proc = build_processor()
    torch.manual_seed(0)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(build_config(proc.tokenizer, 32, 1))
    training.export(model, proc, path, {"config": {"decoder_hidden": 32}})


def test_a_phase_starts_from_exported_weights_and_resumes_to_the_same_end(tmp_path, monkeypatch):
    _tiny_init(tmp_path / "init")
    tiny = Phase(name="letters", steps=4, warmup_steps=1, batch=2, turns_per_image=2, mix=PHASES[0].mix)
    monkeypatch.setattr(phases, "PHASES", (tiny,))
    monkeypatch.setattr(phases, "PHASE_NAMES", ("letters",))
    monkeypatch.setattr(phases, "first_token_accuracy", lambda *a, **k: {})
    kw = dict(threads=1, eval_every=1000, checkpoint_every=2)
    phases.train_phase(tiny, tmp_path / "init", tmp_path / "whole", tmp_path / "whole_out", **kw)

    real = phases.mixed_batch
    calls = []

    def crash_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(phases, "mixed_batch", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        phases.train_phase(tiny, tmp_path / "init", tmp_path / "resumed", tmp_path / "resumed_out", **kw)
    monkeypatch.setattr(phases, "mixed_batch", real)
    phases.train_phase(tiny, tmp_path / "init", tmp_path / "resumed", tmp_path / "resumed_out", **kw)

    init, whole, resumed = (load_file(tmp_path / d / "model.safetensors") for d in ("init", "whole_out", "resumed_out"))
    assert whole.keys() == resumed.keys() == init.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    changed = [k for k in whole if not torch.equal(whole[k], init[k])]
    assert changed and not any("vision_tower" in k for k in changed)  # the tower stays frozen
    import json

    recipe = json.loads((tmp_path / "whole_out" / "recipe.json").read_text())
    assert [p["name"] for p in recipe["phases"]] == ["letters"] and recipe["phases"][0]["steps"] == 4


def test_a_checkpoint_of_another_phase_is_refused(tmp_path, monkeypatch):
    _tiny_init(tmp_path / "init")
    (tmp_path / "w").mkdir()
    torch.save({"phase": "other", "model": {}, "optimizer": {}, "step": 1, "elapsed_s": 0.0}, tmp_path / "w" / "checkpoint.pt")
    monkeypatch.setattr(phases, "first_token_accuracy", lambda *a, **k: {})
    with pytest.raises(ValueError, match="belongs to phase 'other'"):
        phases.train_phase(dataclasses.replace(PHASES[0], steps=1), tmp_path / "init", tmp_path / "w", tmp_path / "o", threads=1)


def test_the_script_refuses_bad_phase_lists_before_any_work(tmp_path):
    script = ROOT / "scripts" / "train_embedded_model.py"
    for args, words in ((["--phases", "letters"], "--init-from DIR is needed"), (["--phases", "base,nosuch"], "unknown phase 'nosuch'"), (["--phases", "letters,base", "--init-from", "x"], "base can only come first")):
        out = subprocess.run([sys.executable, str(script), "--work-dir", str(tmp_path), *args], capture_output=True, text=True)
        assert out.returncode != 0 and words in out.stderr, out.stderr
    assert not any(tmp_path.iterdir())


def test_text_lookup_batches_hold_no_image_and_answer_with_the_letter_of_the_named_colour():
    tok = build_processor().tokenizer
    batch = training.text_lookup_batch(tok, np.random.default_rng(3), batch_size=5, n_turns=2)
    assert "pixel_values" not in batch
    image_token = tok.convert_tokens_to_ids("<image>")
    assert not (batch["input_ids"] == image_token).any()
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        text = tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        turns = [t for t in text.split("question :") if t.strip()]
        assert len(turns) == 2
        answers = [tok.decode([int(i)]) for i in labels[labels != -100].tolist() if int(i) != tok.eos_token_id]
        for turn, answer in zip(turns, answers):
            target = turn.split("what is ")[1].split("?")[0].strip()
            options = turn.split("?")[1].split(" answer")[0].split()
            listed = dict(zip(options[0::3], options[2::3]))  # "a ) red b ) blue ..." -> {a: red, ...}
            assert listed[answer] == target


def test_a_phase_with_text_lookup_batches_trains_the_decoder_only(tmp_path, monkeypatch):
    _tiny_init(tmp_path / "init")
    tiny = Phase(name="lookup_text", steps=4, warmup_steps=1, batch=2, turns_per_image=2, mix=PHASES[0].mix, text_lookup=((0.0, 1.0), (0.5, 0.0)), text_batch=3, text_turns=2)
    monkeypatch.setattr(phases, "PHASES", (tiny,))
    monkeypatch.setattr(phases, "PHASE_NAMES", ("lookup_text",))
    monkeypatch.setattr(phases, "first_token_accuracy", lambda *a, **k: {})
    drawn = []
    real_text, real_mixed = phases.text_lookup_batch, phases.mixed_batch
    monkeypatch.setattr(phases, "text_lookup_batch", lambda *a, **k: (drawn.append("text"), real_text(*a, **k))[1])
    monkeypatch.setattr(phases, "mixed_batch", lambda *a, **k: (drawn.append("image"), real_mixed(*a, **k))[1])
    phases.train_phase(tiny, tmp_path / "init", tmp_path / "w", tmp_path / "out", threads=1, eval_every=1000, checkpoint_every=1000)
    assert drawn == ["text", "text", "image", "image"]  # share 1.0 for the first half, then none
    init, out = (load_file(tmp_path / d / "model.safetensors") for d in ("init", "out"))
    changed = [k for k in out if not torch.equal(out[k], init[k])]
    assert changed and not any("vision_tower" in k for k in changed)


def test_the_default_phase_list_is_the_shipped_recipe():
    import json

    recipe = json.loads((ROOT / "src/vlmcompress/embedded/weights/recipe.json").read_text())
    assert [p["name"] for p in recipe.get("phases", [])] == list(phases.RECIPE)
    assert set(phases.RECIPE) <= set(phases.PHASE_NAMES)
    assert all(p.text_share_at(0) == 0.0 for p in PHASES if p.name == "letters")  # its draws stay as they were


def test_reads_by_cell_name_the_object_in_that_cell_and_reach_every_object():
    rng = np.random.default_rng(5)
    seen_non_unique_shape = 0
    for _ in range(300):
        scene = random_scene(rng, "train")
        for name in ("color_at", "choice_at"):
            qa = ADDRESS_CURRICULUM[name](scene, rng)
            row, col = (int(w) for w in qa.question.split(" ?")[0].split()[-3::2])  # "... row R column C ?"
            (obj,) = [s for s in scene.shapes if (s.row + 1, s.col + 1) == (row, col)]
            if name == "color_at":
                assert qa.question == f"what color is the object in row {row} column {col} ?" and qa.answer == obj.color
            else:
                options = qa.meta["options"]
                assert len(set(options)) == 4 and qa.answer == OPTION_LETTERS[options.index(obj.color)]
                assert qa.question.endswith(" ? " + " ".join(f"{OPTION_LETTERS[i]} ) {o}" for i, o in enumerate(options)))
            seen_non_unique_shape += sum(s.shape == obj.shape for s in scene.shapes) > 1
    assert seen_non_unique_shape > 50  # not only the uniquely shaped objects the suite names by shape


def test_types_appended_for_later_phases_leave_earlier_phases_draws_unchanged():
    """A zero weight at the end of ``rng.choice``'s table draws nothing and consumes nothing:
    the lookup_text phase's image batches are the same with or without the address types."""
    tok = build_processor().tokenizer
    spec = phase_named("lookup_text").mix[0][1]
    full = training.parse_weights(spec, PHASE_TYPES)
    n_before = len(PHASE_TYPES) - len(ADDRESS_CURRICULUM)
    assert not full[n_before:].any()
    old = full[:n_before] / full[:n_before].sum()
    a = training.mixed_batch(tok, np.random.default_rng([0, 1002, 7]), 3, PHASE_TYPES, full, 4, 0.2)
    b = training.mixed_batch(tok, np.random.default_rng([0, 1002, 7]), 3, PHASE_TYPES[:n_before], old, 4, 0.2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_text_batches_mix_the_lookup_and_the_comparison_with_right_answers():
    tok = build_processor().tokenizer
    weights = training.parse_weights("pick_option=1,compare=2", training.TEXT_ONLY)
    batch = training.text_lookup_batch(tok, np.random.default_rng(4), batch_size=40, n_turns=3, weights=weights)
    assert not (batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).any()
    kinds = {"lookup": 0, "compare": 0}
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        text = tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        turns = [t for t in text.split("question :") if t.strip()]
        answers = [tok.decode([int(i)]) for i in labels[labels != -100].tolist() if int(i) != tok.eos_token_id]
        for turn, answer in zip(turns, answers, strict=True):
            q = turn.split(" answer")[0].replace("?", " ?").split()
            if q[:2] == ["what", "is"]:
                kinds["lookup"] += 1
                listed = dict(zip(q[4::3], q[6::3]))
                assert listed[answer] == q[2]
            else:  # "is row R column C <relation> row R column C ?"
                kinds["compare"] += 1
                r1, c1, r2, c2 = int(q[2]), int(q[4]), int(q[-4]), int(q[-2])
                relation = " ".join(q[5:-5])
                truth = {"left of": c1 < c2, "right of": c1 > c2, "above": r1 < r2, "below": r1 > r2}[relation]
                assert answer == ("yes" if truth else "no")
    assert kinds["compare"] > 1.4 * kinds["lookup"] > 0  # 2:1 asked


def test_text_batches_without_a_mix_draw_the_lookup_as_before():
    tok = build_processor().tokenizer
    a = training.text_lookup_batch(tok, np.random.default_rng(9), 4, 3)
    rng = np.random.default_rng(9)
    from vlmcompress.embedded.curriculum import ask_pick_option

    seqs = [training.encode_sequence(tok, [(qa.question, qa.answer) for qa in (ask_pick_option(None, rng) for _ in range(3))], with_image=False) for _ in range(4)]
    assert torch.equal(a["input_ids"], training.padded(tok, seqs)["input_ids"])


def test_an_object_against_a_written_cell_answers_from_the_object_position():
    rng = np.random.default_rng(8)
    answers = {"yes": 0, "no": 0}
    for _ in range(300):
        scene = random_scene(rng, "train")
        qa = ADDRESS_CURRICULUM["object_vs_cell"](scene, rng)
        if qa is None:
            continue
        q = qa.question.split()  # "is the <colour> <shape> <relation...> row R column C ?"
        (obj,) = [s for s in scene.shapes if s.name == f"{q[2]} {q[3]}"]
        r, c = int(q[-4]) - 1, int(q[-2]) - 1
        relation = " ".join(q[4:-5])
        truth = {"left of": obj.col < c, "right of": obj.col > c, "above": obj.row < r, "below": obj.row > r}[relation]
        assert qa.answer == ("yes" if truth else "no")
        answers[qa.answer] += 1
    assert min(answers.values()) > 0.4 * sum(answers.values())  # balanced


def test_left_right_questions_compare_the_columns_of_two_named_objects():
    rng = np.random.default_rng(12)
    answers = {"yes": 0, "no": 0}
    for _ in range(300):
        scene = random_scene(rng, "train")
        qa = ADDRESS_CURRICULUM["left_right"](scene, rng)
        if qa is None:
            continue
        q = qa.question.split()  # "is the <colour> <shape> left|right of the <colour> <shape> ?"
        (a,) = [s for s in scene.shapes if s.name == f"{q[2]} {q[3]}"]
        (b,) = [s for s in scene.shapes if s.name == f"{q[7]} {q[8]}"]
        truth = a.col < b.col if q[4] == "left" else a.col > b.col
        assert q[4] in ("left", "right") and a.col != b.col and qa.answer == ("yes" if truth else "no")
        answers[qa.answer] += 1
    assert min(answers.values()) > 0.35 * sum(answers.values())
