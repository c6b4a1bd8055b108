"""The built-in synthetic suite as registered tasks (held-out split, scenes drawn from the run's seed).

Task names: ``synth_attribute``, ``synth_count``, ``synth_spatial``, ``synth_ocr``,
``synth_exists`` (POPE-like, negatives random / popular / adversarial in turn),
``synth_multiple_choice`` and ``synth_counterfactual`` (sets of the same scene with one
object's colour changed and a question whose answer must not move).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..synthetic.questions import ASKERS, NEGATIVE_KINDS, ask_counterfactual_probe, ask_exists
from ..synthetic.scenes import COLORS, Scene, random_scene, render
from .base import TASKS, Sample, Task
from .scoring import extract_option_letter, pope_metrics

SYNTHETIC_SUITE = (
    "synth_attribute",
    "synth_count",
    "synth_spatial",
    "synth_ocr",
    "synth_exists",
    "synth_multiple_choice",
    "synth_counterfactual",
)
DEFAULT_SIZE = 200


def _task_rng(name: str, seed: int) -> np.random.Generator:
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, salt])


def _image(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene))


@dataclass
class SyntheticTask(Task):
    kind: str = ""

    def samples(self, seed: int, limit: int | None, data_dir=None) -> list[Sample]:
        n = DEFAULT_SIZE if limit is None else limit
        rng = _task_rng(self.name, seed)
        out: list[Sample] = []
        while len(out) < n:
            scene = random_scene(rng, "heldout")
            qa = self._ask(scene, rng, len(out))
            if qa is None:
                continue
            meta = {"scene": scene.key(), **qa.meta}
            out.append(Sample(f"{self.name}/{seed}/{len(out)}", _image(scene), qa.question, qa.answer, meta))
        return out

    def _ask(self, scene, rng, index):
        return ASKERS[self.kind](scene, rng)


@dataclass
class ExistsTask(SyntheticTask):
    """POPE-like: the negative kind cycles random → popular → adversarial."""

    def _ask(self, scene, rng, index):
        return ask_exists(scene, rng, NEGATIVE_KINDS[index % len(NEGATIVE_KINDS)])

    def aggregate(self, rows):
        preds = [r["prediction"] or "" for r in rows]
        golds = [r["gold"] for r in rows]
        out = pope_metrics(preds, golds)
        for kind in NEGATIVE_KINDS:
            sub = [r for r in rows if r["meta"].get("negative_kind") == kind]
            if sub:
                m = pope_metrics([r["prediction"] or "" for r in sub], [r["gold"] for r in sub])
                out[f"{kind}_accuracy"] = m["accuracy"]
                out[f"{kind}_f1"] = m["f1"]
        return out


@dataclass
class MultipleChoiceTask(SyntheticTask):
    def normalize(self, text: str) -> str:
        return extract_option_letter(text)


@dataclass
class CounterfactualTask(SyntheticTask):
    """Sets of ``variants`` scenes identical but for one object's colour; the question is
    about something else, so a consistent model gives one answer per set."""

    variants: int = 3

    def samples(self, seed: int, limit: int | None, data_dir=None) -> list[Sample]:
        n = DEFAULT_SIZE if limit is None else limit
        rng = _task_rng(self.name, seed)
        out: list[Sample] = []
        set_id = 0
        while len(out) < n:
            scene = random_scene(rng, "heldout")
            if len(scene.shapes) < 2:
                continue
            protected = int(rng.integers(len(scene.shapes)))
            qa = ask_counterfactual_probe(scene, rng, protected)
            original = scene.shapes[protected].color
            others = [c for c in COLORS if c != original]
            colors = [original] + [others[i] for i in rng.choice(len(others), size=self.variants - 1, replace=False)]
            for v, color in enumerate(colors):
                variant = scene.with_color(protected, color)
                meta = {"scene": variant.key(), "set_id": set_id, "variant": v, "protected_color": color, **qa.meta}
                out.append(Sample(f"{self.name}/{seed}/{set_id}/{v}", _image(variant), qa.question, qa.answer, meta))
            set_id += 1
        return out[:n]

    def aggregate(self, rows):
        out = super().aggregate(rows)
        sets = defaultdict(list)
        for r in rows:
            sets[r["meta"]["set_id"]].append(r)
        full = [s for s in sets.values() if len(s) > 1]
        if full:
            out["consistency"] = sum(len({self.normalize(r["prediction"] or "") for r in s}) == 1 for s in full) / len(full)
            out["set_accuracy"] = sum(all(r["score"] == 1 for r in s) for s in full) / len(full)
        return out


TASKS.register(SyntheticTask("synth_attribute", "colour or shape of one object", "perception", 4, kind="attribute"))
TASKS.register(SyntheticTask("synth_count", "how many shapes (of a colour / a shape)", "counting", 4, kind="count"))
TASKS.register(SyntheticTask("synth_spatial", "is A left of / right of / above / below B (yes/no)", "spatial reasoning", 4, kind="spatial"))
TASKS.register(SyntheticTask("synth_ocr", "read the two digits on a sign", "ocr", 5, kind="ocr"))
TASKS.register(ExistsTask("synth_exists", "POPE-like existence, random/popular/adversarial negatives", "hallucination", 4, kind="exists"))
TASKS.register(MultipleChoiceTask("synth_multiple_choice", "colour of an object among four lettered options", "multiple choice", 4, kind="multiple_choice"))
TASKS.register(CounterfactualTask("synth_counterfactual", "same scene, one colour changed: answer must not move", "counterfactual", 4, kind="counterfactual"))
