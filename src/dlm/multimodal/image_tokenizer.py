"""A small image tokenizer for the multimodal model (issue 20): a VQ codebook over non-overlapping p × p RGB
patches, fitted with k-means (scikit-learn), so an image becomes (size / p)² discrete tokens that can share a
vocabulary with text. Any picture is first converted to RGB and resized to size × size.

Saved as a folder: `image_tokenizer.json` (size, patch, codes, the fit's reconstruction error) and
`codebook.safetensors` (codes × p·p·3 float32 in [0, 1]). Reconstruction error is measured, not assumed:
`error(images)` gives the mean absolute error per channel (0–255 scale) and the PSNR of decode(encode(x)) against x.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, InputError

CONFIG_NAME = "image_tokenizer.json"
CODEBOOK_NAME = "codebook.safetensors"


def _rgb_array(image, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1] from a PIL image, a path or an (H, W, 3) uint8 array."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            image = Image.open(image)
            image.load()
        except (OSError, UnidentifiedImageError) as e:
            raise InputError("image", f"{image}: not a readable PNG/JPEG ({e})") from None
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("image", f"an array must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise InputError("image", f"expected a PIL image, a file path or an (H, W, 3) uint8 array; got {type(image)}")
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


class ImageTokenizer:
    """encode: picture -> (size / patch)² code ids, row-major; decode: ids -> PIL image."""

    def __init__(self, codebook: np.ndarray, *, size: int, patch: int, fit_error: dict | None = None):
        if size % patch:
            raise InputError("patch", f"got {patch}; it must divide the image size {size}")
        self.codebook = np.asarray(codebook, dtype=np.float32)
        if self.codebook.ndim != 2 or self.codebook.shape[1] != patch * patch * 3:
            raise InputError("codebook", f"expected (codes, {patch * patch * 3}); got {self.codebook.shape}")
        self.size, self.patch, self.fit_error = size, patch, fit_error or {}

    @property
    def codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def tokens_per_image(self) -> int:
        return (self.size // self.patch) ** 2

    def _patches(self, arr: np.ndarray) -> np.ndarray:
        g, p = self.size // self.patch, self.patch
        return arr.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)

    @classmethod
    def fit(cls, images, *, size: int = 32, patch: int = 4, codes: int = 256, seed: int = 0) -> "ImageTokenizer":
        """k-means (scikit-learn, k-means++ init, `seed`) over every patch of `images`."""
        from sklearn.cluster import KMeans

        if size % patch:
            raise InputError("patch", f"got {patch}; it must divide the image size {size}")
        tmp = cls(np.zeros((1, patch * patch * 3), np.float32), size=size, patch=patch)
        data = np.concatenate([tmp._patches(_rgb_array(im, size)) for im in images])
        uniq = np.unique(data, axis=0)
        if len(uniq) < codes:
            raise InputError("codes", f"got {codes}; the images hold only {len(uniq)} distinct patches")
        km = KMeans(n_clusters=codes, n_init=1, random_state=seed).fit(data)
        tok = cls(km.cluster_centers_.clip(0, 1), size=size, patch=patch)
        tok.fit_error = tok.error(images)
        return tok

    def encode(self, image) -> list[int]:
        x = self._patches(_rgb_array(image, self.size))
        d = (x**2).sum(1, keepdims=True) - 2 * x @ self.codebook.T + (self.codebook**2).sum(1)[None]
        return d.argmin(1).tolist()

    def decode(self, ids):
        from PIL import Image

        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.shape != (self.tokens_per_image,) or (ids < 0).any() or (ids >= self.codes).any():
            raise InputError("ids", f"expected {self.tokens_per_image} code ids in [0, {self.codes})")
        g, p = self.size // self.patch, self.patch
        arr = self.codebook[ids].reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(self.size, self.size, 3)
        return Image.fromarray((arr * 255).round().astype(np.uint8))

    def error(self, images) -> dict:
        """Mean absolute error per channel (0–255) and PSNR (dB; None when every picture comes back exactly) of
        decode(encode(x)) against x (resized)."""
        mae, mse, n = 0.0, 0.0, 0
        for im in images:
            x = _rgb_array(im, self.size) * 255
            y = np.asarray(self.decode(self.encode(im)), dtype=np.float32)
            mae += float(np.abs(x - y).mean())
            mse += float(((x - y) ** 2).mean())
            n += 1
        if n == 0:
            raise InputError("images", "no images to measure")
        mse /= n
        return {"mae": mae / n, "psnr": 10 * math.log10(255**2 / mse) if mse > 0 else None, "images": n}  # None: exact

    def save(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"size": self.size, "patch": self.patch, "codes": self.codes, "fit_error": self.fit_error}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({"codebook": torch.from_numpy(self.codebook).contiguous()}, str(folder / CODEBOOK_NAME))
        return folder

    @classmethod
    def load(cls, folder) -> "ImageTokenizer":
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text())
            with safe_open(str(folder / CODEBOOK_NAME), framework="pt") as fh:
                book = fh.get_tensor("codebook").numpy()
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CheckpointError(f"{folder}: not an image tokenizer folder ({e})") from None
        return cls(book, size=int(cfg["size"]), patch=int(cfg["patch"]), fit_error=cfg.get("fit_error"))
