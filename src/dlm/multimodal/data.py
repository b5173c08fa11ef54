"""SFT chats for the multimodal model (issue 20): every kind of request the model must answer, made from the
rendered scenes and the digits of one split, with pictures written as image-token text (`vocab.image_text`).

Kinds (`KINDS`): `draw` (caption → picture), `describe` (picture → caption), `vqa` (picture + question → one
word), `digit` (a digit's picture → its label), `text` (a caption alone, no picture: text stays in the mix).
Rows are `{"messages": [user, assistant], "kind": ...}`, the chat JSONL `dlm train` reads; their order is shuffled
with `seed`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .image_tokenizer import ImageTokenizer
from .scenes import digits, render, scenes
from .vocab import image_text

KINDS = ("draw", "describe", "vqa", "digit", "text")


def chats(image_tokenizer: ImageTokenizer, split: str, seed: int = 0) -> list[dict]:
    """Every chat of a split: per scene one `draw`, one `describe`, one `text` and one `vqa` per question; per
    digit one `digit`."""
    rows = []

    def add(kind: str, user: str, answer: str) -> None:
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "kind": kind})  # fmt: skip

    for scene in scenes(split, seed=seed):
        picture = image_text(image_tokenizer.encode(render(scene, image_tokenizer.size)))
        caption = scene.caption()
        add("draw", f"draw: {caption}", picture)
        add("describe", f"{picture} describe the picture", caption)
        add("text", "write a caption", caption)
        for question, answer in scene.questions():
            add("vqa", f"{picture} {question}", answer)
    for image, label in digits(split):
        add("digit", f"{image_text(image_tokenizer.encode(image))} which digit is this?", str(label))
    random.Random(seed).shuffle(rows)
    return rows


def write_sft(path, image_tokenizer: ImageTokenizer, split: str, seed: int = 0) -> dict:
    """Write `chats(...)` as JSONL at `path`; returns the count per kind."""
    rows = chats(image_tokenizer, split, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {k: sum(r["kind"] == k for r in rows) for k in KINDS}
