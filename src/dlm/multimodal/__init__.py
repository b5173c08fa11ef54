"""Multimodal diffusion (issue 20, in progress): procedurally rendered scenes with captions and questions, and
scikit-learn's digits (`scenes`); a VQ image tokenizer that turns a picture into discrete tokens
(`image_tokenizer`); one vocabulary for text and image codes (`vocab`); the SFT chats of every request kind
(`data`); pictures in and out of a loaded model (`generation`: `draw`, `ask`)."""

from .data import KINDS, chats, write_sft
from .generation import DESCRIBE, ask, draw
from .image_tokenizer import ImageTokenizer
from .scenes import Scene, Shape, all_scenes, digits, render, scenes
from .vocab import IMAGE_BEGIN, IMAGE_END, image_codes, image_text, image_token, with_image_tokens

__all__ = [
    "DESCRIBE", "IMAGE_BEGIN", "IMAGE_END", "ImageTokenizer", "KINDS", "Scene", "Shape", "all_scenes", "ask",
    "chats", "digits", "draw", "image_codes", "image_text", "image_token", "render", "scenes", "with_image_tokens",
    "write_sft",
]  # fmt: skip
