"""Multimodal diffusion (issue 20, in progress): procedurally rendered scenes with captions and questions, and
scikit-learn's digits (`scenes`); a VQ image tokenizer that turns a picture into discrete tokens
(`image_tokenizer`). The model that shares one vocabulary between them comes next."""

from .image_tokenizer import ImageTokenizer
from .scenes import Scene, Shape, all_scenes, digits, render, scenes

__all__ = ["ImageTokenizer", "Scene", "Shape", "all_scenes", "digits", "render", "scenes"]
