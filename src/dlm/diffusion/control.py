"""Plug-and-play control of continuous diffusion (Diffusion-LM, Li et al. arXiv 2205.14217, section 5).

A small classifier reads a generated region's noisy latents as the network reads them (z / sqrt(1 + sigma^2),
with each position's noise level `noise_input(sigma)`) and gives log p(attribute | z): it is trained on clean
training windows noised at levels drawn as the process draws them (`train_classifier`), the diffusion network
frozen (only its embedding table, the token points e(w), is read). At sampling, `Guidance` set on the process
(`process.guide = Guidance(classifier, scale)`) nudges, before each step's forward, the latents of the active
block's noisy slots along the classifier's gradient (classifier guidance of the score):

    z_t <- z_t + scale * sigma_t^2 * grad_z log p(attribute | z_t)

in `steps` gradient steps, each with an optional fluency pull `fluency * |z - z_t|^2 / (2 sigma_t^2)` back to the
unguided latent (Diffusion-LM takes a few steps on the latent with such a term). The network then reads the guided
latents and the reverse step moves from them. The gradient comes from each row's own generated slots only (the
classifier never sees the prompt, the padding or another row), so a batch still gives each prompt the tokens it
gets alone, and with scale 0 the samples are exactly the unguided ones. The sampler loop knows nothing of this:
the hook is one call in `ContinuousReverse.forward_inputs`.

The classifier (`NoisyClassifier`, ~50k parameters at d 128): a per-position MLP over [latent, noise features], a
width-3 convolution (neighbouring tokens), then attention pooling and mean pooling over the positions, a linear
logit. Saved as one safetensors file (its settings in the file's metadata).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from .continuous import embedding_table, network_input, noise_input

CLASSIFIER_FILE = "classifier.safetensors"


class NoisyClassifier(nn.Module):
    """log p(attribute | latents (B, L, d) as the network reads them, noise levels (B, L))."""

    def __init__(self, d_model: int, hidden: int = 128, frequencies: int = 8, meta: dict | None = None):
        super().__init__()
        if d_model < 1 or hidden < 1 or frequencies < 0:
            raise ConfigError("classifier", f"got d_model={d_model}, hidden={hidden}, frequencies={frequencies}; "
                              "d_model and hidden must be >= 1, frequencies >= 0")  # fmt: skip
        self.settings = {"d_model": int(d_model), "hidden": int(hidden), "frequencies": int(frequencies)}
        self.meta = dict(meta or {})  # what the attribute is (keyword, ...), kept in the file
        self.register_buffer("freqs", torch.arange(1, frequencies + 1, dtype=torch.float32), persistent=False)
        self.inp = nn.Linear(d_model + 1 + 2 * frequencies, hidden)
        self.mix = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.attend = nn.Linear(hidden, 1)
        self.out = nn.Linear(2 * hidden, 1)

    def logit(self, x: torch.Tensor, level: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the attribute's logit; `mask` (B, L) bool marks the positions to read (all by default)."""
        if x.shape[-1] != self.settings["d_model"]:
            raise InputError("x", f"latents of width {x.shape[-1]}; this classifier reads {self.settings['d_model']}")
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        lv = level.float()[..., None]
        ang = lv * self.freqs
        h = F.gelu(self.inp(torch.cat([x.float(), lv, torch.sin(ang), torch.cos(ang)], -1))) * mask[..., None]
        h = (h + F.gelu(self.mix(h.transpose(1, 2)).transpose(1, 2))) * mask[..., None]
        w = torch.softmax(self.attend(h).squeeze(-1).masked_fill(~mask, float("-inf")), dim=-1)
        mean = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.out(torch.cat([mean, (w[..., None] * h).sum(1)], -1)).squeeze(-1)

    def forward(self, x, level, mask=None) -> torch.Tensor:
        """(B,) log p(attribute | x)."""
        return F.logsigmoid(self.logit(x, level, mask))

    def save(self, path) -> Path:
        """One safetensors file (a folder gets `classifier.safetensors`); returns its path."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / CLASSIFIER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"settings": json.dumps(self.settings), "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path, device="cpu") -> "NoisyClassifier":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if path.is_dir():
            path = path / CLASSIFIER_FILE
        if not path.is_file():
            raise InputError("path", f"no classifier at {path}")
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        if "settings" not in md:
            raise InputError("path", f"{path} is not a dlm classifier (no settings in its metadata)")
        net = cls(**json.loads(md["settings"]), meta=json.loads(md.get("meta", "{}")))
        net.load_state_dict(load_file(str(path)))
        return net.to(device).eval()


def noisy_view(process, table, ids, t, generator=None):
    """(x, level): windows `ids` (B, L) noised at t (B,) as the process noises them, as the network reads them."""
    z, sigma = process.add_noise(ids, t, generator, table=table)
    return network_input(z, sigma), noise_input(sigma)


def train_classifier(model, process, ids, labels, steps: int, *, batch_size: int = 32, lr: float = 3e-3,
                     hidden: int = 128, seed: int = 0, meta: dict | None = None, log_every: int = 0,
                     classifier: NoisyClassifier | None = None) -> NoisyClassifier:  # fmt: skip
    """A `NoisyClassifier` trained on windows `ids` ((N, L) token ids, a tensor or equal-length lists) with 0/1
    `labels` (N,): each step a batch of windows noised at levels `process.draw_t` draws (uniform in t, or the
    process's learned time warp if it carries one), binary cross-entropy, AdamW with a cosine decay. The network
    is frozen: only its embedding table is read (without gradient)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"got {steps!r}; must be an integer >= 1")
    if batch_size < 1 or not lr > 0:
        raise ConfigError("batch_size" if batch_size < 1 else "lr", "batch_size must be >= 1 and lr > 0")
    table = embedding_table(model).detach()
    dev = table.device
    ids = torch.as_tensor(ids, dtype=torch.long, device=dev)
    y = torch.as_tensor(labels, dtype=torch.float32, device=dev)
    if ids.dim() != 2 or y.shape != ids.shape[:1]:
        raise InputError(
            "labels", f"need one 0/1 label per window: windows {tuple(ids.shape)}, labels {tuple(y.shape)}"
        )
    if not bool(((y == 0) | (y == 1)).all()):
        raise InputError("labels", "labels must be 0 or 1")
    net = classifier or NoisyClassifier(table.shape[1], hidden, meta=meta)
    net = net.to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    g = torch.Generator(device=dev).manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, ids.shape[0], (batch_size,), generator=g, device=dev)
        t = process.draw_t(batch_size, g, dev, (0, 1))
        x, level = noisy_view(process, table, ids[idx], t, g)
        loss = F.binary_cross_entropy_with_logits(net.logit(x, level), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"classifier step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    return net.eval()


@torch.no_grad()
def classifier_accuracy(classifier, model, process, ids, labels, t: float, seed: int = 0) -> float:
    """Accuracy (threshold p = 0.5) on windows `ids` noised at level t (one level for all)."""
    table = embedding_table(model).detach()
    ids = torch.as_tensor(ids, dtype=torch.long, device=table.device)
    y = torch.as_tensor(labels, device=table.device).bool()
    g = torch.Generator(device=table.device).manual_seed(seed)
    x, level = noisy_view(process, table, ids, torch.full((ids.shape[0],), float(t), device=table.device), g)
    return float(((classifier.logit(x, level) > 0) == y).float().mean())


@dataclass
class Guidance:
    """Classifier guidance for the continuous reverse process: set as `process.guide` (None = off)."""

    classifier: NoisyClassifier
    scale: float = 1.0  # the classifier's weight: z += scale * sigma^2 * grad log p per reverse step
    steps: int = 1  # gradient steps on the latent per reverse step (the scale split among them)
    fluency: float = 0.0  # weight of the pull back to the unguided latent, |z - z_t|^2 / (2 sigma_t^2)

    def __post_init__(self) -> None:
        if not isinstance(self.classifier, NoisyClassifier):
            raise ConfigError("guidance.classifier", "must be a NoisyClassifier (dlm.diffusion.control)")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigError("guidance.scale", f"got {self.scale!r}; must be a finite number >= 0")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError("guidance.steps", f"got {self.steps!r}; must be an integer >= 1")
        if not (math.isfinite(self.fluency) and self.fluency >= 0):
            raise ConfigError("guidance.fluency", f"got {self.fluency!r}; must be a finite number >= 0")
        self.classifier.eval().requires_grad_(False)

    def shift(self, z: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One row's guided latents: z (L, d) its generated slots' latents (clean embeddings where settled),
        sigma (L,) their levels, active (L,) bool the slots to move; returns z with the active slots moved."""
        clf = self.classifier
        if z.shape[-1] != clf.settings["d_model"]:
            raise ConfigError("guidance.classifier", f"reads width {clf.settings['d_model']}; the network's "
                              f"embeddings have width {z.shape[-1]}")  # fmt: skip
        if clf.inp.weight.device != z.device:
            clf.to(z.device)
        s2 = (sigma[active] ** 2)[:, None]
        level = noise_input(sigma)[None]
        start = z[active]
        v = start
        with torch.enable_grad():
            for _ in range(self.steps):
                v = v.detach().requires_grad_(True)
                full = z.index_put((active.nonzero().flatten(),), v)
                logp = clf(network_input(full, sigma)[None], level)
                (grad,) = torch.autograd.grad(logp.sum(), v)
                v = v.detach() + (self.scale / self.steps) * (s2 * grad - self.fluency * (v.detach() - start))
        out = z.clone()
        out[active] = v
        return out

    def apply(self, reverse, z: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor, rows) -> torch.Tensor:
        """The reverse process's hook (before a step's forward): z (R, L, d) the latents the network is about to
        read, sigma (R, L) their levels, active (R, L) the active block's noisy slots; moves each row's active
        latents (written back into `reverse.latent`) and returns z with them. A row's generated slots are
        `reverse.generated` (its noisy slots when it joined)."""
        for i, h in enumerate(rows.tolist()):
            gen = reverse.generated[h]
            act = active[i] & gen
            if not bool(act.any()):
                continue
            moved = self.shift(z[i, gen], sigma[i, gen], act[gen])
            z[i, gen] = moved
            reverse.latent[h][act] = moved[act[gen]]
        return z
