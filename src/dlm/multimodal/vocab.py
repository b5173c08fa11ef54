"""One vocabulary for text and pictures (issue 20): a text tokenizer plus a begin-of-image token, an end-of-image
token and one token per image code (`<|img_0|>` … `<|img_{codes-1}|>`), appended as added tokens so that each is
exactly one id and never merges with text. They are content, not control tokens: not "special", so an SFT
answer (encoded with `parse_special=False`, where "<|eos|>" in the data stays text) still holds a picture as its
64 codes. A picture in a sequence is `<|boi|>` + its (size / patch)² code tokens
in row-major order + `<|eoi|>` (`image_text`); `image_codes` reads the codes back from generated ids.
"""

from __future__ import annotations

import tokenizers

from ..errors import InputError
from ..tokenizer import DLMTokenizer

IMAGE_BEGIN, IMAGE_END = "<|boi|>", "<|eoi|>"


def image_token(code: int) -> str:
    return f"<|img_{code}|>"


def with_image_tokens(tok: DLMTokenizer, codes: int) -> DLMTokenizer:
    """A copy of `tok` with `<|boi|>`, `<|eoi|>` and `codes` image tokens appended (ids after the text vocabulary);
    a tokenizer that has them already is returned as a copy, unchanged."""
    if not isinstance(codes, int) or codes < 1:
        raise InputError("codes", f"got {codes!r}; must be a positive number of image codes")
    backend = tokenizers.Tokenizer.from_str(tok.backend.to_str())
    wanted = [IMAGE_BEGIN, IMAGE_END] + [image_token(i) for i in range(codes)]
    missing = [t for t in wanted if backend.token_to_id(t) is None]
    # content, not control: added as ordinary (non-special) tokens, so training text (encoded with
    # parse_special=False: "<|eos|>" in data stays text) still reads a picture as its codes
    backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in missing])
    return DLMTokenizer(backend, chat_template=tok.chat_template, model_max_length=tok.model_max_length)


def image_text(codes) -> str:
    """A picture's codes as the text that encodes to <|boi|>, one token per code, <|eoi|>."""
    return IMAGE_BEGIN + "".join(image_token(int(c)) for c in codes) + IMAGE_END


def image_codes(tok: DLMTokenizer, ids, expected: int) -> list[int] | None:
    """The codes of the first complete picture in `ids` (`expected` code tokens between <|boi|> and <|eoi|>), or
    None when there is none (a picture cut short, a text token inside it, or no picture)."""
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    begin, end = tok.token_to_id(IMAGE_BEGIN), tok.token_to_id(IMAGE_END)
    if begin is None or begin not in ids:
        return None
    start = ids.index(begin) + 1
    body = ids[start : start + expected]
    if len(body) < expected or start + expected >= len(ids) or ids[start + expected] != end:
        return None
    out = []
    for i in body:
        name = tok.id_to_token(i) or ""
        if not (name.startswith("<|img_") and name.endswith("|>")):
            return None
        out.append(int(name[6:-2]))
    return out
