"""Training-only questions that teach the steps the evaluated yes/no and multiple-choice
questions are built from.

Measured on the first 10,500 steps of the recipe: retrieval answers (attribute, count,
OCR) were learned in 3-4k steps, while existence, spatial yes/no and multiple choice sat
at the majority answer.  A one-bit answer gives little signal for what it needs: find an
object by a colour *and* a shape among 64 visual tokens (existence, spatial), compare two
positions (spatial), map a colour to the letter in front of it (multiple choice).  Each
question here trains one of those steps with an answer that carries more signal:

- ``locate``: "what row is the red circle in ?" -> "2" (or "no" when absent), the
  conjunctive search that existence and spatial questions need;
- ``compare``: "is row 2 column 3 left of row 1 column 4 ?" with no image needed, the
  comparison behind spatial questions;
- ``pick_option``: "what is red ? a ) blue b ) red ..." -> "b", the option lookup behind
  multiple choice, with no image needed.

They are never evaluated (the suite's tasks are in ``synthetic.questions``) and use only
the suite's vocabulary, so the tokenizer is unchanged.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Callable

import numpy as np

from ..synthetic.questions import OPTION_LETTERS, QA, RELATIONS, absent_objects, ask_multiple_choice, colour_options_question
from ..synthetic.scenes import COLORS, GRID, Scene


def ask_locate(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Row or column of a uniquely named object; "no" for an absent one that shares a
    colour or a shape with a present object (the hard negatives of existence)."""
    axis = ("row", "column")[int(rng.integers(2))]
    names = Counter(s.name for s in scene.shapes)
    unique = [s for s in scene.shapes if names[s.name] == 1]
    if unique and rng.random() < 0.75:
        obj = unique[int(rng.integers(len(unique)))]
        value = obj.row + 1 if axis == "row" else obj.col + 1
        return QA(f"what {axis} is the {obj.name} in ?", str(value), {"axis": axis})
    absent = absent_objects(scene, sharing_an_attribute=True)
    if not absent:
        return None
    color, shape = absent[int(rng.integers(len(absent)))]
    return QA(f"what {axis} is the {color} {shape} in ?", "no", {"axis": axis})


def ask_compare(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Spatial relation between two written cells, yes or no (balanced)."""
    (r1, c1), (r2, c2) = rng.integers(GRID, size=(2, 2))
    truth = {"left of": c1 < c2, "right of": c1 > c2, "above": r1 < r2, "below": r1 > r2}
    wanted = bool(rng.random() < 0.5)
    pool = [rel for rel in RELATIONS if truth[rel] == wanted]
    if not pool:
        return None
    relation = pool[int(rng.integers(len(pool)))]
    answer = "yes" if wanted else "no"
    return QA(f"is row {r1 + 1} column {c1 + 1} {relation} row {r2 + 1} column {c2 + 1} ?", answer, {})


def ask_pick_option(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Letter of the option that names a given colour."""
    options = [list(COLORS)[i] for i in rng.choice(len(COLORS), size=4, replace=False)]
    target = options[int(rng.integers(4))]
    listed = " ".join(f"{OPTION_LETTERS[i]} ) {opt}" for i, opt in enumerate(options))
    return QA(f"what is {target} ? {listed}", OPTION_LETTERS[options.index(target)], {})


AUX_ASKERS: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "locate": ask_locate,
    "compare": ask_compare,
    "pick_option": ask_pick_option,
}


# Used only by the continuation phases (``embedded.phases``): the evaluated multiple-choice
# question with two or three options, the easy start of a curriculum for the letter
# binding.  The base recipe's type list stays as it was, so its draws (and the shipped
# weights) are reproduced.
OPTION_CURRICULUM: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "choice_of_two": partial(ask_multiple_choice, n_options=2),
    "choice_of_three": partial(ask_multiple_choice, n_options=3),
}


def ask_color_at(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Colour of the object in a written cell, any object (not only a uniquely shaped one):
    the read-out by position that the suite's position-named questions need."""
    obj = scene.shapes[int(rng.integers(len(scene.shapes)))]
    return QA(f"what color is the object in row {obj.row + 1} column {obj.col + 1} ?", obj.color, {})


def ask_choice_at(scene: Scene, rng: np.random.Generator) -> QA | None:
    """The suite's four-option colour question, the object always named by its cell: the
    case the shipped weights answered 0.31 of the time (0.68 when named by shape)."""
    obj = scene.shapes[int(rng.integers(len(scene.shapes)))]
    return colour_options_question(f"object in row {obj.row + 1} column {obj.col + 1}", obj.color, rng)


def ask_object_vs_cell(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Spatial relation between a uniquely named object and a written cell, yes or no
    (balanced): one lookup and one comparison, the step between ``compare`` (two written
    cells) and the suite's spatial question (two objects)."""
    names = Counter(s.name for s in scene.shapes)
    unique = [s for s in scene.shapes if names[s.name] == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    r, c = (int(v) for v in rng.integers(GRID, size=2))
    truth = {"left of": obj.col < c, "right of": obj.col > c, "above": obj.row < r, "below": obj.row > r}
    wanted = bool(rng.random() < 0.5)
    pool = [rel for rel in RELATIONS if truth[rel] == wanted]
    if not pool:
        return None
    relation = pool[int(rng.integers(len(pool)))]
    return QA(f"is the {obj.name} {relation} row {r + 1} column {c + 1} ?", "yes" if wanted else "no", {"relation": relation})


def ask_left_right(scene: Scene, rng: np.random.Generator) -> QA | None:
    """The suite's spatial question on columns only ("is the red circle left of the blue
    square ?"), yes or no (balanced): the half of spatial still at chance after the spatial
    phase, while rows were answered 0.75."""
    names = Counter(s.name for s in scene.shapes)
    unique = [s for s in scene.shapes if names[s.name] == 1]
    pairs = [(a, b) for a in unique for b in unique if a.col != b.col]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    relation = ("left of", "right of")[int(rng.integers(2))]
    truth = a.col < b.col if relation == "left of" else a.col > b.col
    return QA(f"is the {a.name} {relation} the {b.name} ?", "yes" if truth else "no", {"relation": relation})


# Used only by the ``address`` and ``spatial`` phases (``embedded.phases``): reading an object
# by its cell, and placing a named object against a written cell.
# Appended after the option curriculum so that earlier phases' draws are unchanged (new
# types weigh 0 there, and zero weights at the end of ``rng.choice``'s table change nothing).
ADDRESS_CURRICULUM: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "color_at": ask_color_at,
    "choice_at": ask_choice_at,
    "object_vs_cell": ask_object_vs_cell,
    "left_right": ask_left_right,
}

# Questions that need no image: phases may train them in short text-only batches.
TEXT_ONLY = ("pick_option", "compare")
