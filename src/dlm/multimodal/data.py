"""SFT chats for the multimodal model (issue 20): every kind of request the model must answer, made from the
rendered scenes and the digits of one split, with pictures written as image-token text (`vocab.image_text`).

Kinds (`KINDS`): `draw` (caption → picture), `describe` (picture → caption), `vqa` (picture + question → one
word), `digit` (a digit's picture → its label), `text` (a caption alone, no picture: text stays in the mix).
Rows are `{"messages": [user, assistant], "kind": ...}`, the chat JSONL `dlm train` reads; their order is shuffled
with `seed`. `draw_copies` lists each `draw` chat that many times in the train split (the default mix, 3: drawing
is the hardest kind for a masked-diffusion model, 16 codes bound to a caption; three copies drew 44 % of held-out
captions against 13 % for one, at 4,500 steps of the 5M-parameter config: docs/models.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import InputError
from .image_tokenizer import ImageTokenizer
from .scenes import digits, render, scenes
from .vocab import image_text

KINDS = ("draw", "describe", "vqa", "digit", "text")


DRAW_COPIES = 3


def chats(image_tokenizer: ImageTokenizer, split: str, seed: int = 0, draw_copies: int = 1) -> list[dict]:
    """Every chat of a split: per scene `draw_copies` identical `draw` chats, one `describe`, one `text` and one
    `vqa` per question; per digit one `digit`."""
    if draw_copies < 1:
        raise InputError("draw_copies", f"got {draw_copies}; allowed: an integer >= 1")
    rows = []

    def add(kind: str, user: str, answer: str) -> None:
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "kind": kind})  # fmt: skip

    for scene in scenes(split, seed=seed):
        picture = image_text(image_tokenizer.encode(render(scene, image_tokenizer.size)))
        caption = scene.caption()
        for _ in range(draw_copies):
            add("draw", f"draw: {caption}", picture)
        add("describe", f"{picture} describe the picture", caption)
        add("text", "write a caption", caption)
        for question, answer in scene.questions():
            add("vqa", f"{picture} {question}", answer)
    for image, label in digits(split):
        add("digit", f"{image_text(image_tokenizer.encode(image))} which digit is this?", str(label))
    random.Random(seed).shuffle(rows)
    return rows


def _write(path, rows: list[dict]) -> dict:
    """Rows as JSONL at `path`; returns the count per kind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {k: sum(r["kind"] == k for r in rows) for k in KINDS}


def write_sft(path, image_tokenizer: ImageTokenizer, split: str, seed: int = 0, draw_copies: int = 1) -> dict:
    """Write `chats(...)` as JSONL at `path`; returns the count per kind."""
    return _write(path, chats(image_tokenizer, split, seed, draw_copies))


def prepare(
    out_dir,
    *,
    codes: int = 256,
    patch: int = 8,
    text_vocab: int = 512,
    draw_copies: int = DRAW_COPIES,
    seed: int = 0,
    log=lambda m: None,
) -> dict:
    """Everything the multimodal configs read, under `out_dir`: `image_tokenizer/` (fitted on the train scenes and
    digits), `tokenizer/` (a byte-level BPE on the chats' words + the image tokens), `train.jsonl` (each draw chat
    `draw_copies` times), `test.jsonl` (each once) and `manifest.json` (counts, the image tokenizer's held-out
    error). Deterministic under `seed`."""
    from ..tokenizer import train_tokenizer
    from .vocab import with_image_tokens

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_pictures = [render(s) for s in scenes("train")] + [im for im, _ in digits("train")]
    log(f"image tokenizer: {codes} codes of {patch} x {patch} patches over {len(train_pictures)} train pictures")
    image_tok = ImageTokenizer.fit(train_pictures, patch=patch, codes=codes, seed=seed)
    image_tok.save(out / "image_tokenizer")
    held_out = {"scenes": image_tok.error([render(s) for s in scenes("test")]),
                "digits": image_tok.error([im for im, _ in digits("test")])}  # fmt: skip
    rows = {split: chats(image_tok, split, seed) for split in ("train", "test")}
    # the BPE learns the words around the pictures (image tokens are added whole afterwards), each chat once
    words = [m["content"].split("<|eoi|>")[-1] for r in rows["train"] for m in r["messages"]]
    words = [w for w in words if "<|boi|>" not in w]
    text_tok = train_tokenizer([], text_vocab, texts=words)
    with_image_tokens(text_tok, codes).save(out / "tokenizer")
    if draw_copies != 1:
        rows["train"] = chats(image_tok, "train", seed, draw_copies)
    counts = {split: _write(out / f"{split}.jsonl", r) for split, r in rows.items()}
    manifest = {"codes": codes, "tokens_per_image": image_tok.tokens_per_image, "image_size": image_tok.size,
                "image_tokenizer_fit": image_tok.fit_error, "image_tokenizer_held_out": held_out, "rows": counts,
                "draw_copies": draw_copies, "seed": seed}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
