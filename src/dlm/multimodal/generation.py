"""Pictures in and out of a loaded multimodal model (issue 20): `draw` (caption -> picture) and `ask` (picture +
question -> text), in the request formats the model was trained on (`data.chats`), for a diffusion model and its
AR twin alike.

A drawing is an answer template: `<|boi|>`, one free slot per image code, `<|eoi|>` locked in place, and the free
slots may take image-code tokens only (`AllowTokens`), so every drawing decodes to a whole picture. A question's
answer may not take image tokens (`SuppressTokens`). Both are logits processors and a template: the sampler loop
is the one every model uses. The model must carry an image tokenizer (`DiffusionLM.image_tokenizer`, the
folder's `image_tokenizer/`).
"""

from __future__ import annotations

from ..errors import InputError
from ..sampling.processors import AllowTokens, SuppressTokens
from .vocab import IMAGE_BEGIN, IMAGE_END, image_codes, image_text, image_token

DRAW = "draw: "  # the draw request's prefix (data.chats)
DESCRIBE = "describe the picture"


def image_tokenizer(lm):
    """The model's image tokenizer; an InputError naming `model` for a text-only model."""
    tok = getattr(lm, "image_tokenizer", None)
    if tok is None:
        raise InputError("model", f"{lm.path or 'this model'} has no image tokenizer: pictures need a multimodal "
                                  "model (e.g. builtin-multimodal)")  # fmt: skip
    return tok


def image_token_ids(lm) -> list[int]:
    """Ids of the model's image-code tokens."""
    ids = [lm.tokenizer.token_to_id(image_token(c)) for c in range(image_tokenizer(lm).codes)]
    if any(i is None for i in ids):
        raise InputError("model", "its tokenizer lacks image-code tokens for its image tokenizer's codes")
    return ids


def draw_template(lm) -> list[int]:
    """A drawing's answer template: `<|boi|>`, the mask token for each image code, `<|eoi|>`, then EOS up to the
    model's default gen_length. The EOS tail is the training layout: every SFT answer is padded with EOS to the
    sequence length, so a drawing the model learned is followed by EOS, and a canvas that ends at `<|eoi|>` is one
    it never saw (the multimodal diffusion twin drew 0 of 64 held-out captions on it; docs/models.md)."""
    tok = lm.tokenizer
    n = image_tokenizer(lm).tokens_per_image
    tail = max(0, lm.generation_config.gen_length - (n + 2))
    picture = [tok.token_to_id(IMAGE_BEGIN)] + [tok.mask_token_id] * n + [tok.token_to_id(IMAGE_END)]
    return picture + [tok.eos_token_id] * tail


def draw_processors(lm) -> tuple:
    """A drawing's free slots take image codes only."""
    return (AllowTokens(image_token_ids(lm)),)


def text_processors(lm) -> tuple:
    """A text answer holds no picture: no image codes, no <|boi|> / <|eoi|>."""
    tok = lm.tokenizer
    return (SuppressTokens(image_token_ids(lm) + [tok.token_to_id(IMAGE_BEGIN), tok.token_to_id(IMAGE_END)]),)


def draw_prompt(caption: str) -> str:
    """The user message that asks for a picture of `caption` (a leading "draw:" is kept, not doubled)."""
    caption = caption.strip()
    return caption if caption.lower().startswith(DRAW.strip()) else DRAW + caption


def draw(lm, captions: str | list[str], **overrides) -> list[tuple]:
    """A picture per caption: [(PIL image, Completion)], one batch. `overrides`: generation settings (seed,
    temperature, steps, policy, schedule ...); gen_length is the template's length (`draw_template`)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    itok, tok = image_tokenizer(lm), lm.tokenizer
    n = itok.tokens_per_image
    template = draw_template(lm)
    overrides.setdefault("steps", n)
    outs = lm.chat_batch(
        [[{"role": "user", "content": draw_prompt(c)}] for c in captions], templates=[template] * len(captions),
        logits_processors=draw_processors(lm), gen_length=len(template), **overrides,
    )  # fmt: skip
    result = []
    for o in outs:
        codes = image_codes(tok, o.tokens, n)
        if codes is None:  # the template and AllowTokens make this unreachable; say so if it ever is not
            raise RuntimeError(f"the drawing of {o.prompt!r} did not decode to a picture: {o.tokens}")
        result.append((itok.decode(codes), o))
    return result


def picture_message(lm, image, question: str) -> str:
    """The user message of a question about `image` (a PIL image, a PNG/JPEG path or an (H, W, 3) uint8
    array, resized to the model's resolution): the picture's tokens, then the question."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("question", "must be a non-empty string")
    return f"{image_text(image_tokenizer(lm).encode(image))} {question.strip()}"


def ask(lm, images, questions: str | list[str], **overrides) -> list:
    """Answer a question about each picture (`DESCRIBE` asks for a caption): [Completion], one batch. `images`:
    one picture or a list; `questions`: one for all or one per picture."""
    images = images if isinstance(images, list) else [images]
    questions = [questions] * len(images) if isinstance(questions, str) else list(questions)
    if len(questions) != len(images):
        raise InputError("questions", f"got {len(questions)} questions for {len(images)} pictures")
    msgs = [[{"role": "user", "content": picture_message(lm, im, q)}] for im, q in zip(images, questions)]
    overrides.setdefault("gen_length", 16)
    return lm.chat_batch(msgs, logits_processors=text_processors(lm), **overrides)
