"""Procedurally rendered scenes for the multimodal model (issue 20): one or two shapes on a plain background, with
a caption and question–answer pairs that the picture alone decides. Offline, deterministic under a seed, no data
files: an example is its spec, and the image is rendered from it.

A spec is a tuple of shapes, each (shape, colour, cell) on a 2 × 2 grid of cells (0 top-left, 1 top-right,
2 bottom-left, 3 bottom-right). Two shapes never share a cell; when they share a row or a column the caption
says where one is from the other ("a red circle above a blue square"), otherwise it joins them with "and".
The split is by picture: the set of shapes, hashed, sends a scene to train or test (both captions of a pair go
together), so a test picture is one the model never saw.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from ..errors import InputError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
BACKGROUND = (245, 245, 245)
SPLITS = ("train", "test")
TEST_SHARE = 0.2


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    cell: int  # 0..3 on the 2 x 2 grid

    @property
    def words(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]

    def caption(self) -> str:
        if len(self.shapes) == 1:
            return f"a {self.shapes[0].words}"
        a, b = self.shapes
        return f"a {a.words} {relation(a, b)} a {b.words}"

    def questions(self) -> list[tuple[str, str]]:
        """(question, one-word answer) pairs the picture decides: colour of each shape kind present once, the
        shape of each colour present once, and how many shapes there are."""
        out = []
        kinds = [s.shape for s in self.shapes]
        colours = [s.colour for s in self.shapes]
        for s in self.shapes:
            if kinds.count(s.shape) == 1:
                out.append((f"What colour is the {s.shape}?", s.colour))
            if colours.count(s.colour) == 1:
                out.append((f"What shape is {s.colour}?", s.shape))
        out.append(("How many shapes are there?", ("one", "two")[len(self.shapes) - 1]))
        return out


def relation(a: Shape, b: Shape) -> str:
    """Where a is from b: above / below / left of / right of (same column or row), else "and"."""
    (ra, ca), (rb, cb) = divmod(a.cell, 2), divmod(b.cell, 2)
    if ca == cb:
        return "above" if ra < rb else "below"
    if ra == rb:
        return "left of" if ca < cb else "right of"
    return "and"


def all_scenes() -> list[Scene]:
    """Every scene, in a fixed order: 48 with one shape, then every ordered pair in different cells."""
    singles = [Shape(s, c, cell) for s in SHAPES for c in COLOURS for cell in range(4)]
    out = [Scene((s,)) for s in singles]
    for a, b in itertools.permutations(singles, 2):
        if a.cell != b.cell and a.words != b.words:
            out.append(Scene((a, b)))
    return out


def _split_of(scene: Scene) -> str:
    """By the picture, not the caption: both orders of a pair (one picture, two captions) fall on the same side."""
    key = ";".join(sorted(f"{s.cell}:{s.shape}:{s.colour}" for s in scene.shapes))
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
    return "test" if h < TEST_SHARE else "train"


def scenes(split: str, n: int | None = None, seed: int = 0) -> list[Scene]:
    """The scenes of a split (shuffled with `seed`), the first n of them (None: all)."""
    if split not in SPLITS:
        raise InputError("split", f"got {split!r}; allowed: {', '.join(SPLITS)}")
    pool = [s for s in all_scenes() if _split_of(s) == split]
    random.Random(seed).shuffle(pool)
    return pool if n is None else pool[:n]


def render(scene: Scene, size: int = 32):
    """The scene as an RGB PIL image of size × size pixels (each shape fills most of its cell)."""
    from PIL import Image, ImageDraw

    if size < 8 or size % 2:
        raise InputError("size", f"got {size}; allowed: an even number of pixels >= 8")
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    half, pad = size // 2, max(1, size // 16)
    for s in scene.shapes:
        r, c = divmod(s.cell, 2)
        x0, y0, x1, y1 = c * half + pad, r * half + pad, (c + 1) * half - pad - 1, (r + 1) * half - pad - 1
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def digits(split: str) -> list[tuple]:
    """scikit-learn's 8 × 8 handwritten digits (1,797, bundled with the package: offline) as (32 × 32 RGB uint8
    array, label): dark ink on white, each pixel a 4 × 4 block. A fixed split: every fifth image is test."""
    import numpy as np
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise InputError("split", f"got {split!r}; allowed: {', '.join(SPLITS)}")
    d = load_digits()
    out = []
    for i, (im, label) in enumerate(zip(d.images, d.target)):
        if (i % 5 == 4) != (split == "test"):
            continue
        grey = np.repeat(np.repeat(((16 - im) / 16 * 255).round().astype(np.uint8), 4, 0), 4, 1)
        out.append((np.repeat(grey[..., None], 3, 2), int(label)))
    return out
