"""Procedural scenes: coloured shapes and a numbered sign on a grid, rendered with numpy.

Everything is a pure function of a ``numpy.random.Generator`` so that a seed gives the
same scenes and pixels on every machine (no fonts, no anti-aliasing, no PIL drawing).

A scene's *layout* (cells, shapes, sign text; colours excluded) decides its split: a
hash of the layout puts one in five layouts in the held-out split.  Training draws only
train layouts, evaluation only held-out ones, so no seed can make them overlap, and a
counterfactual set (one colour changed) never straddles the two splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

GRID = 4
CELL = 16
IMAGE_SIZE = GRID * CELL

# Colour names with their RGB values and their prior frequency: the skew gives POPE's
# "popular" negatives a meaning (the most frequent objects that are absent).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (50, 80, 230),
    "green": (40, 180, 60),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
}
COLOR_WEIGHTS = np.array([0.25, 0.22, 0.18, 0.15, 0.10, 0.10])
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_WEIGHTS = np.array([0.40, 0.35, 0.25])
BACKGROUND = (25, 25, 25)
SIGN_BACKGROUND = (235, 235, 235)
SIGN_INK = (10, 10, 10)
MAX_SHAPES = 5
SIGN_PROBABILITY = 0.4
HELDOUT_SHARE = 5  # one layout in five is held out

# 3x5 bitmaps of the digits, one string per row.
DIGIT_FONT: dict[str, tuple[str, ...]] = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "011", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}


@dataclass(frozen=True)
class Shape:
    row: int  # 0-based grid row
    col: int  # 0-based grid column
    color: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Sign:
    row: int
    col: int
    text: str  # two digits


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    sign: Sign | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def layout_key(self) -> str:
        """Cells, shapes and sign text, colours left out: what decides the split."""
        parts = [f"{s.row}{s.col}{s.shape}" for s in sorted(self.shapes, key=lambda s: (s.row, s.col))]
        if self.sign is not None:
            parts.append(f"sign{self.sign.row}{self.sign.col}{self.sign.text}")
        return "|".join(parts)

    def key(self) -> str:
        """The whole scene, colours included: identity of a scene."""
        parts = [f"{s.row}{s.col}{s.color}{s.shape}" for s in sorted(self.shapes, key=lambda s: (s.row, s.col))]
        if self.sign is not None:
            parts.append(f"sign{self.sign.row}{self.sign.col}{self.sign.text}")
        return "|".join(parts)

    def with_color(self, index: int, color: str) -> "Scene":
        shapes = list(self.shapes)
        shapes[index] = replace(shapes[index], color=color)
        return Scene(tuple(shapes), self.sign)


def split_of(scene: Scene) -> str:
    digest = hashlib.sha256(scene.layout_key().encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "little") % HELDOUT_SHARE == 0 else "train"


def random_scene(rng: np.random.Generator, split: str) -> Scene:
    """Draw scenes until one falls in ``split`` (``train`` or ``heldout``)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    while True:
        scene = _draw_scene(rng)
        if split_of(scene) == split:
            return scene


def _draw_scene(rng: np.random.Generator) -> Scene:
    n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
    has_sign = bool(rng.random() < SIGN_PROBABILITY)
    cells = rng.choice(GRID * GRID, size=n_shapes + int(has_sign), replace=False)
    shapes = []
    for cell in cells[:n_shapes]:
        color = list(COLORS)[int(rng.choice(len(COLORS), p=COLOR_WEIGHTS))]
        shape = SHAPES[int(rng.choice(len(SHAPES), p=SHAPE_WEIGHTS))]
        shapes.append(Shape(int(cell) // GRID, int(cell) % GRID, color, shape))
    sign = None
    if has_sign:
        cell = int(cells[-1])
        text = "".join(str(int(d)) for d in rng.integers(0, 10, size=2))
        sign = Sign(cell // GRID, cell % GRID, text)
    shapes.sort(key=lambda s: (s.row, s.col))
    return Scene(tuple(shapes), sign)


def _shape_mask(shape: str) -> np.ndarray:
    yy, xx = np.mgrid[0:CELL, 0:CELL]
    cy = cx = (CELL - 1) / 2
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= 5.6**2
    if shape == "square":
        return (yy >= 3) & (yy <= 12) & (xx >= 3) & (xx <= 12)
    if shape == "triangle":
        # apex at the top centre, base on row 13
        half_width = (yy - 2) * 6.0 / 11.0
        return (yy >= 2) & (yy <= 13) & (np.abs(xx - cx) <= half_width + 0.01)
    raise ValueError(f"unknown shape {shape!r}")


_MASKS = {name: _shape_mask(name) for name in SHAPES}


def render(scene: Scene) -> np.ndarray:
    """The scene as an ``[IMAGE_SIZE, IMAGE_SIZE, 3]`` uint8 array."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for s in scene.shapes:
        tile = image[s.row * CELL : (s.row + 1) * CELL, s.col * CELL : (s.col + 1) * CELL]
        tile[_MASKS[s.shape]] = COLORS[s.color]
    if scene.sign is not None:
        y0, x0 = scene.sign.row * CELL, scene.sign.col * CELL
        image[y0 + 2 : y0 + 14, x0 + 1 : x0 + 15] = SIGN_BACKGROUND
        for k, digit in enumerate(scene.sign.text):
            glyph = np.array([[c == "1" for c in line] for line in DIGIT_FONT[digit]])
            glyph = np.kron(glyph, np.ones((2, 2), dtype=bool))  # 3x5 -> 6x10 pixels
            gy, gx = y0 + 3, x0 + 2 + 7 * k
            region = image[gy : gy + 10, gx : gx + 6]
            region[glyph] = SIGN_INK
    return image
