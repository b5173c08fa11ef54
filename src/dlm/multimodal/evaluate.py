"""Claim 9's measurements (issue 20): how well one model captions, answers questions about and draws the held-out
scenes, item by item, so that a diffusion model and its AR twin compare as pairs (McNemar).

- `AttributeJudge`: a classifier trained here on real renders of the train scenes (scikit-learn logistic
  regression over the pixels of each of the 2 × 2 cells: empty, or one of the 12 shape–colour pairs), also on
  their image-tokenizer round trips (what a model's drawing decodes to). It reads a picture back as a scene.
- `score_caption`: a caption is right when it names the picture's shapes with their colours (the attribute rule:
  the set of (colour, shape) pairs); `exact` also needs the relation word ("above", "left of", ...) to hold.
- `score_drawing`: a drawing is right when the judge reads back a scene whose caption is the prompt (either order
  of a pair, so any placement the caption allows counts); attribute accuracy is the share of the caption's
  shapes the judge finds.
- `evaluate`: every test-split item of each kind, the model's output and the verdict per item.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import InputError
from .generation import DESCRIBE, ask, draw
from .scenes import COLOURS, SHAPES, Scene, Shape, digits, render, scenes

EMPTY = "empty"
CLASSES = (EMPTY,) + tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)


def _cells(image, size: int) -> np.ndarray:
    """(4, (size/2)² · 3) float pixels of the 2 × 2 cells, row-major (cell 0 top-left)."""
    from .image_tokenizer import _rgb_array

    a, h = _rgb_array(image, size), size // 2
    return np.stack([a[r * h : (r + 1) * h, c * h : (c + 1) * h].reshape(-1) for r in (0, 1) for c in (0, 1)])


def _labels(scene: Scene) -> list[str]:
    out = [EMPTY] * 4
    for s in scene.shapes:
        out[s.cell] = s.words
    return out


class AttributeJudge:
    """Reads a picture as a scene: a class per cell (`CLASSES`)."""

    def __init__(self, model, size: int):
        self.model, self.size = model, size

    @classmethod
    def fit(cls, image_tokenizer=None, *, size: int = 32, seed: int = 0) -> "AttributeJudge":
        """Trained on the train split's renders (and their round trips through `image_tokenizer`, if given)."""
        from sklearn.linear_model import LogisticRegression

        x, y = [], []
        for scene in scenes("train", seed=seed):
            pictures = [render(scene, size)]
            if image_tokenizer is not None:
                pictures.append(image_tokenizer.decode(image_tokenizer.encode(pictures[0])))
            for p in pictures:
                x.append(_cells(p, size))
                y.extend(_labels(scene))
        model = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(np.concatenate(x), y)
        return cls(model, size)

    def cells(self, image) -> list[str]:
        return list(self.model.predict(_cells(image, self.size)))

    def scene(self, image) -> list[Shape]:
        """The shapes the judge sees, by cell."""
        return [Shape(*label.split()[::-1], cell) for cell, label in enumerate(self.cells(image)) if label != EMPTY]

    def accuracy(self, pictures_and_scenes) -> float:
        """Share of cells read right."""
        right = total = 0
        for picture, scene in pictures_and_scenes:
            right += sum(a == b for a, b in zip(self.cells(picture), _labels(scene)))
            total += 4
        return right / max(total, 1)


_CAPTION = re.compile(r"^a (\w+) (\w+)(?: (above|below|left of|right of|and) a (\w+) (\w+))?$")


def parse_caption(text: str) -> tuple[list[tuple[str, str]], str | None] | None:
    """[(colour, shape), ...] and the relation word of a caption in the scenes' grammar, or None."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        return None
    pairs = [(m.group(1), m.group(2))] + ([(m.group(4), m.group(5))] if m.group(3) else [])
    if any(c not in COLOURS or s not in SHAPES for c, s in pairs):
        return None
    return pairs, m.group(3)


def score_caption(text: str, scene: Scene) -> dict:
    """`correct`: the caption names exactly the picture's (colour, shape) pairs; `exact`: and its relation holds
    (for either order of a pair: both captions of one picture are true)."""
    parsed = parse_caption(text)
    truth = sorted((s.colour, s.shape) for s in scene.shapes)
    if parsed is None:
        return {"correct": False, "exact": False}
    pairs, _ = parsed
    correct = sorted(pairs) == truth
    captions = {scene.caption(), Scene(scene.shapes[::-1]).caption()}
    return {"correct": correct, "exact": correct and text.strip().lower() in captions}


def score_drawing(picture, caption: str, judge: AttributeJudge) -> dict:
    """`correct`: the judge reads a scene whose caption is `caption` (some placement the caption allows);
    `attributes`: share of the caption's (colour, shape) pairs the judge finds anywhere in the picture."""
    parsed = parse_caption(caption)
    if parsed is None:
        raise InputError("caption", f"{caption!r} is not a caption of the scenes' grammar")
    pairs, _ = parsed
    seen = judge.scene(picture)
    found = [(s.colour, s.shape) for s in seen]
    attributes = sum(p in found for p in pairs) / len(pairs)
    correct = False
    if sorted(found) == sorted(pairs):  # order the seen shapes as the caption names them, then compare captions
        by = {(s.colour, s.shape): s for s in seen}
        if len(by) == len(seen):
            correct = Scene(tuple(by[p] for p in pairs)).caption() == caption.strip().lower()
    return {"correct": correct, "attributes": attributes}


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate(lm, judge: AttributeJudge, *, kinds=("describe", "vqa", "draw", "digit"), n: int | None = None,
             batch_size: int = 32, seed: int = 0, draw_settings: dict | None = None,
             text_settings: dict | None = None, log=lambda m: None) -> dict:  # fmt: skip
    """Every test item of each kind (the first `n` of each, None: all): {kind: {"n", "accuracy", "items"}} with
    per-item {"id", "correct", "output"} (+ "exact" / "attributes"), and the settings used. Greedy unless the
    settings say otherwise; `draw_settings` / `text_settings` are generation overrides (steps, schedule, ...)."""
    draw_settings = {"temperature": 0.0, **(draw_settings or {})}
    text_settings = {"temperature": 0.0, "gen_length": 16, **(text_settings or {})}
    test = scenes("test", seed=seed)[:n]
    out: dict = {"settings": {"draw": draw_settings, "text": text_settings}}
    for kind in kinds:
        items = []
        if kind == "describe":
            for chunk in _batches(test, batch_size):
                answers = ask(lm, [render(s, judge.size) for s in chunk], DESCRIBE, **text_settings)
                for s, a in zip(chunk, answers):
                    items.append({"id": s.caption(), "output": a.text, "nfe": a.nfe, **score_caption(a.text, s)})
        elif kind == "vqa":
            qa = [(s, q, a) for s in test for q, a in s.questions()]
            for chunk in _batches(qa, batch_size):
                answers = ask(lm, [render(s, judge.size) for s, _, _ in chunk], [q for _, q, _ in chunk],
                              **text_settings)  # fmt: skip
                for (s, q, truth), a in zip(chunk, answers):
                    items.append({"id": f"{s.caption()} | {q}", "output": a.text, "nfe": a.nfe, "truth": truth,
                                  "correct": a.text.strip().lower() == truth})  # fmt: skip
        elif kind == "draw":
            for chunk in _batches(test, batch_size):
                drawings = draw(lm, [s.caption() for s in chunk], **draw_settings)
                for s, (picture, o) in zip(chunk, drawings):
                    items.append({"id": s.caption(), "output": o.tokens, "nfe": o.nfe,
                                  **score_drawing(picture, s.caption(), judge)})  # fmt: skip
        elif kind == "digit":
            ds = digits("test")[:n]
            for k, chunk in enumerate(_batches(ds, batch_size)):
                answers = ask(lm, [im for im, _ in chunk], "which digit is this?", **text_settings)
                for j, ((_, label), a) in enumerate(zip(chunk, answers)):
                    items.append({"id": f"digit {k * batch_size + j}", "output": a.text, "nfe": a.nfe,
                                  "correct": a.text.strip() == str(label)})  # fmt: skip
        else:
            raise InputError("kinds", f"unknown kind {kind!r}; allowed: describe, vqa, draw, digit")
        acc = sum(it["correct"] for it in items) / max(len(items), 1)
        out[kind] = {"n": len(items), "accuracy": acc, "items": items,
                     "nfe_mean": sum(it["nfe"] for it in items) / max(len(items), 1)}  # fmt: skip
        log(f"{kind}: {acc:.3f} of {len(items)}")
    return out
