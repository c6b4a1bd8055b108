"""Question templates of the synthetic suite, one function per task type.

Each ``ask_*`` function takes a scene and a generator and returns a :class:`QA` or
``None`` when the scene cannot carry that kind of question (no sign to read, no unique
object to name).  Questions use a small closed vocabulary so that the embedded model can
work with a word-level tokenizer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .scenes import COLOR_WEIGHTS, COLORS, GRID, SHAPE_WEIGHTS, SHAPES, Scene

OPTION_LETTERS = ("a", "b", "c", "d")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
RELATIONS = ("left of", "right of", "above", "below")


@dataclass
class QA:
    question: str
    answer: str
    meta: dict = field(default_factory=dict)


def _unique_shapes(scene: Scene) -> list:
    names = Counter(s.name for s in scene.shapes)
    return [s for s in scene.shapes if names[s.name] == 1]


def _where(obj) -> str:
    return f"row {obj.row + 1} column {obj.col + 1}"


def ask_attribute(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Colour or shape of one object, named by its shape, its colour or its cell."""
    shape_count = Counter(s.shape for s in scene.shapes)
    color_count = Counter(s.color for s in scene.shapes)
    obj = scene.shapes[int(rng.integers(len(scene.shapes)))]
    forms = ["color_at", "shape_at"]
    if shape_count[obj.shape] == 1:
        forms.append("color_of_shape")
    if color_count[obj.color] == 1:
        forms.append("shape_of_color")
    form = forms[int(rng.integers(len(forms)))]
    if form == "color_at":
        return QA(f"what color is the object in {_where(obj)} ?", obj.color, {"form": form})
    if form == "shape_at":
        return QA(f"what shape is the object in {_where(obj)} ?", obj.shape, {"form": form})
    if form == "color_of_shape":
        return QA(f"what color is the {obj.shape} ?", obj.color, {"form": form})
    return QA(f"what shape is the {obj.color} object ?", obj.shape, {"form": form})


def ask_count(scene: Scene, rng: np.random.Generator) -> QA | None:
    """How many shapes, of one shape, or of one colour (0 to 5)."""
    form = ("all", "shape", "color")[int(rng.integers(3))]
    if form == "all":
        return QA("how many shapes are there ?", str(len(scene.shapes)), {"form": form})
    if form == "shape":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        n = sum(s.shape == shape for s in scene.shapes)
        return QA(f"how many {PLURAL[shape]} are there ?", str(n), {"form": form})
    # favour colours that are present so that the answers are not mostly zero
    present = sorted({s.color for s in scene.shapes})
    pool = present if rng.random() < 0.75 else list(COLORS)
    color = pool[int(rng.integers(len(pool)))]
    n = sum(s.color == color for s in scene.shapes)
    return QA(f"how many {color} shapes are there ?", str(n), {"form": form})


def ask_spatial(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Is A left of / right of / above / below B, yes or no (balanced)."""
    unique = _unique_shapes(scene)
    pairs = [(a, b) for a in unique for b in unique if a is not b and (a.row != b.row or a.col != b.col)]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    true_relations = []
    if a.col < b.col:
        true_relations.append("left of")
    if a.col > b.col:
        true_relations.append("right of")
    if a.row < b.row:
        true_relations.append("above")
    if a.row > b.row:
        true_relations.append("below")
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    relation = true_relations[int(rng.integers(len(true_relations)))]
    answer = "yes"
    if rng.random() < 0.5:
        relation, answer = opposite[relation], "no"
    return QA(f"is the {a.name} {relation} the {b.name} ?", answer, {"relation": relation})


def ask_ocr(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Read the two digits on the sign."""
    if scene.sign is None:
        return None
    return QA("what number is on the sign ?", scene.sign.text, {})


NEGATIVE_KINDS = ("random", "popular", "adversarial")


def absent_objects(scene: Scene, sharing_an_attribute: bool = False) -> list[tuple[str, str]]:
    """(colour, shape) pairs not in the scene, in a fixed order; with
    ``sharing_an_attribute`` only those sharing a colour or a shape with a present object
    (the adversarial negatives)."""
    present = {s.name for s in scene.shapes}
    absent = [(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
    if not sharing_an_attribute:
        return absent
    colors = {s.color for s in scene.shapes}
    shapes = {s.shape for s in scene.shapes}
    return [(c, s) for c, s in absent if c in colors or s in shapes]


def ask_exists(scene: Scene, rng: np.random.Generator, negative_kind: str | None = None) -> QA | None:
    """POPE-like: is there a <colour> <shape>?  Half yes; the no's are drawn at random,
    among the most frequent absent objects (popular), or among absent objects that share
    a colour or a shape with one present (adversarial)."""
    kind = negative_kind or NEGATIVE_KINDS[int(rng.integers(3))]
    present = {s.name for s in scene.shapes}
    if rng.random() < 0.5:
        names = sorted(present)
        name = names[int(rng.integers(len(names)))]
        return QA(f"is there a {name} ?", "yes", {"negative_kind": kind})
    if kind == "random":
        pool = absent_objects(scene)
    elif kind == "popular":
        prior = {(c, s): COLOR_WEIGHTS[i] * SHAPE_WEIGHTS[j] for i, c in enumerate(COLORS) for j, s in enumerate(SHAPES)}
        pool = sorted(absent_objects(scene), key=lambda cs: -prior[cs])[:3]
    else:
        pool = absent_objects(scene, sharing_an_attribute=True)
    if not pool:
        return None
    c, s = pool[int(rng.integers(len(pool)))]
    return QA(f"is there a {c} {s} ?", "no", {"negative_kind": kind})


def ask_multiple_choice(scene: Scene, rng: np.random.Generator, n_options: int = 4) -> QA | None:
    """Colour of a uniquely named object among four options; answer is the letter.
    (``n_options`` < 4 only for the training curriculum; the suite always asks four.)"""
    unique = _unique_shapes(scene)
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    shape_count = Counter(s.shape for s in scene.shapes)
    subject = obj.shape if shape_count[obj.shape] == 1 else f"object in {_where(obj)}"
    return colour_options_question(subject, obj.color, rng, n_options)


def colour_options_question(subject: str, colour: str, rng: np.random.Generator, n_options: int = 4) -> QA:
    """"what color is the <subject> ? a ) ... b ) ..." with ``colour`` among ``n_options``
    colours in a random order; the answer is its letter."""
    others = [c for c in COLORS if c != colour]
    options = [colour] + [others[i] for i in rng.choice(len(others), size=n_options - 1, replace=False)]
    order = rng.permutation(n_options)
    options = [options[i] for i in order]
    letter = OPTION_LETTERS[options.index(colour)]
    listed = " ".join(f"{OPTION_LETTERS[i]} ) {opt}" for i, opt in enumerate(options))
    return QA(f"what color is the {subject} ? {listed}", letter, {"options": options})


def ask_counterfactual_probe(scene: Scene, rng: np.random.Generator, protected: int) -> QA | None:
    """A question whose answer must not depend on the colour of ``scene.shapes[protected]``."""
    others = [s for i, s in enumerate(scene.shapes) if i != protected]
    if not others or rng.random() < 0.3:
        return QA("how many shapes are there ?", str(len(scene.shapes)), {"form": "all"})
    obj = others[int(rng.integers(len(others)))]
    return QA(f"what shape is the object in {_where(obj)} ?", obj.shape, {"form": "shape_at"})


def caption(scene: Scene) -> str:
    """Objects in reading order, as the alignment stage's target."""
    items = [(s.row, s.col, f"{s.name} {_where(s)}") for s in scene.shapes]
    if scene.sign is not None:
        items.append((scene.sign.row, scene.sign.col, f"sign {scene.sign.text} {_where(scene.sign)}"))
    items.sort()
    return " , ".join(text for _, _, text in items) + " ."


CAPTION_PROMPT = "describe the image ."

ASKERS: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "attribute": ask_attribute,
    "count": ask_count,
    "spatial": ask_spatial,
    "ocr": ask_ocr,
    "exists": ask_exists,
    "multiple_choice": ask_multiple_choice,
}


def vocabulary() -> list[str]:
    """Every word the templates, answers and captions can produce."""
    words = set(
        "what color shape is the object in row column how many shapes are there number on sign "
        "describe image . , ? ) a b c d yes no question answer : of".split()
    )
    words |= set(COLORS) | set(SHAPES) | set(PLURAL.values())
    words |= {w for r in RELATIONS for w in r.split()}
    words |= {str(i) for i in range(10)}
    words |= {str(i) for i in range(1, GRID + 1)}
    return sorted(words)
