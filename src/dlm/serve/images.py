"""Pictures over the HTTP API (issue 20): OpenAI content parts in, PNG data URLs out.

In: a chat message's `content` may be a list of OpenAI parts, `{"type": "text", "text"}` and
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,...", "detail"}}`. A multimodal model was trained
on pictures as their image tokens (`<|boi|>` + codes + `<|eoi|>`), so the message becomes that text: the parts in
order, joined with single spaces (a picture then a question is exactly `generation.picture_message`). Only data
URLs are taken: the server downloads nothing (it runs offline, and fetching a client's URL would let a request
make the server reach anywhere). What bad input may cost is bounded before it is decoded: the URL's length
(`MAX_IMAGE_BYTES`), the number of pictures (as many as fit the model's context), and the pixel count, read from
the image header before any pixel is decoded (a small PNG can claim a huge canvas: a decompression bomb). Every
failure is a 400 naming the field, e.g. `messages[0].content[1].image_url.url`.

Out: a drawing is generated as an answer template (`Pictures.template`: `<|boi|>`, a free slot per code,
`<|eoi|>`) whose slots take image-code tokens only (`Pictures.draw_processors`), as `generation.draw` does; a
partial canvas (a denoising frame) becomes a picture with its still-masked patches drawn as a grey checker.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

from ..multimodal.generation import draw_processors, draw_prompt, draw_template, image_token_ids, text_processors
from ..multimodal.vocab import image_text
from .errors import APIError

MAX_IMAGE_BYTES = 8 << 20  # longest image data URL taken (characters of base64: ~6 MiB of PNG/JPEG)
MAX_IMAGE_PIXELS = 2048 * 2048  # largest picture decoded (width x height, read from its header first)
MASKED = (96, 160)  # the two greys of a masked patch's checker (a frame's undecided slots)
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)
_PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}}


def _bad(param: str, message: str, code: str = "invalid_image"):
    return APIError(400, f"{param}: {message}", param, code)


def parse_content(content, param: str) -> list[tuple[str, str, str]]:
    """A message's parts as (kind, value, param): ("text", text, ...) or ("image", data URL, its param). A plain
    string is one text part. Only the shape is checked here (no decoding): cheap, on the event loop."""
    if isinstance(content, str):
        return [("text", content, param)]
    parts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in _PART_FIELDS:  # (a list or object is no type, and unhashable)
            raise _bad(f"{where}.type", f"unknown content part type {kind!r}; allowed: text, image_url", "invalid_part")
        extra = sorted(set(part) - _PART_FIELDS[kind])
        if extra:
            raise _bad(f"{where}.{extra[0]}", f"not a field of a {kind} part", "invalid_part")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", "a text part needs a string `text`", "invalid_part")
            parts.append(("text", part["text"], f"{where}.text"))
            continue
        box = part.get("image_url")
        if not isinstance(box, dict):
            raise _bad(f"{where}.image_url", 'an image_url part needs an object {"url": "data:image/png;base64,..."}')
        extra = sorted(set(box) - {"url", "detail"})
        if extra:
            raise _bad(f"{where}.image_url.{extra[0]}", "not a field of image_url (url, detail)")
        if box.get("detail") not in (None, "auto", "low", "high"):
            raise _bad(f"{where}.image_url.detail", f"got {box['detail']!r}; allowed: auto, low, high")
        if not isinstance(box.get("url"), str):
            raise _bad(f"{where}.image_url.url", "must be a string: a data URL (data:image/png;base64,...)")
        parts.append(("image", box["url"], f"{where}.image_url.url"))
    return parts


def check_pictures(messages: list[list[tuple[str, str, str]]], pictures: Pictures | None, context: int) -> int:
    """The number of pictures in parsed messages; a 400 when there is one and the model has no image tokenizer,
    or more than fit the model's context (this bounds the decoding work a request may ask for)."""
    urls = [param for parts in messages for kind, _, param in parts if kind == "image"]
    if urls and pictures is None:
        part = urls[0].removesuffix(".image_url.url")
        raise APIError(400, f"{part}: this model has no image tokenizer: it reads text only", part, "invalid_part")
    if urls and len(urls) * (pictures.tokens_per_image + 2) > context:
        each = pictures.tokens_per_image + 2
        raise APIError(400, f"messages: {len(urls)} pictures of {each} tokens each do not fit the model's context "
                            f"of {context} tokens", "messages", "context_length_exceeded")  # fmt: skip
    return len(urls)


def message_text(content, parts: list[tuple[str, str, str]], pictures: Pictures | None) -> str:
    """The text the model reads for a message: a string as it is; a list of parts in order, text parts stripped,
    pictures as their image tokens, joined with single spaces. Decodes pictures: run it off the event loop."""
    if isinstance(content, str):
        return content
    out = []
    for kind, value, param in parts:
        if kind == "image":
            out.append(pictures.picture_text(value, param))
        elif value.strip():
            out.append(value.strip())
    return " ".join(out)


def decode_data_url(url: str, param: str, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS):
    """The PIL image (RGB, decoded) of a `data:image/png|jpeg;base64,` URL; a 400 naming `param` otherwise.
    The size check comes from the header, before the pixels are decoded."""
    from PIL import Image

    head = _DATA_URL.match(url)
    if head is None:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise _bad(param, f"got {shown!r}; only base64 data URLs of PNG or JPEG pictures are taken (data:image/png;"
                          "base64,... or data:image/jpeg;base64,...): this server downloads nothing")  # fmt: skip
    if len(url) > max_bytes:
        raise _bad(param, f"the data URL has {len(url)} characters; this server takes at most {max_bytes}")
    try:
        raw = base64.b64decode(url[head.end() :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(param, f"not valid base64 ({e})") from None
    try:
        image = Image.open(io.BytesIO(raw), formats=("PNG", "JPEG"))
    except Exception:  # noqa: BLE001 - any failure to read untrusted bytes as a picture is bad input
        raise _bad(param, "the bytes are not a PNG or JPEG picture") from None
    w, h = image.size
    if w * h > max_pixels or w < 1 or h < 1:
        raise _bad(param, f"the picture is {w}x{h} pixels; this server decodes at most {max_pixels} pixels")
    try:
        image.load()
        return image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data: PIL raises many kinds
        raise _bad(param, f"the {image.format} picture does not decode ({type(e).__name__}: {e})") from None


def png_data_url(image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class Pictures:
    """A multimodal model's pictures, for the server: message text from content parts, the drawing's template and
    processors (built once, so that rows drawing pictures share a batch), and pictures from generated ids."""

    def __init__(self, lm):
        self.lm, self.itok = lm, lm.image_tokenizer
        self.tokens_per_image = self.itok.tokens_per_image
        self.code_of = {t: c for c, t in enumerate(image_token_ids(lm))}
        self.template = draw_template(lm)
        self.draw_processors = draw_processors(lm)
        self.text_processors = text_processors(lm)  # as `ask`: text answers hold no picture

    def picture_text(self, url: str, param: str) -> str:
        """The text a picture becomes (its image tokens). Decodes it: run off the event loop."""
        return image_text(self.itok.encode(decode_data_url(url, param)))

    def draw_message(self, caption: str) -> list[dict]:
        return [{"role": "user", "content": draw_prompt(caption)}]

    def picture(self, region: list[int]):
        """The picture of a generated region (the template's: `<|boi|>`, codes, `<|eoi|>`; a causal model's frame
        is a prefix of it): decoded patches from the codebook, every slot that holds no image code yet (masked)
        as a grey checker."""
        slots = list(region[1 : 1 + self.tokens_per_image])
        slots += [None] * (self.tokens_per_image - len(slots))
        codes = [self.code_of.get(t) for t in slots]
        arr = np.array(self.itok.decode([0 if c is None else c for c in codes]))
        p, g = self.itok.patch, self.itok.size // self.itok.patch
        checker = np.where((np.add.outer(np.arange(p), np.arange(p)) % 2)[..., None] == 0, *MASKED).astype(np.uint8)
        for k, c in enumerate(codes):
            if c is None:
                r, q = divmod(k, g)
                arr[r * p : (r + 1) * p, q * p : (q + 1) * p] = checker
        from PIL import Image

        return Image.fromarray(arr)

    def masked(self, region: list[int]) -> int:
        """Slots of the picture that hold no image code yet."""
        return self.tokens_per_image - sum(t in self.code_of for t in region[1 : 1 + self.tokens_per_image])
