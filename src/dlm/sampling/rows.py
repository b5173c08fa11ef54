"""The loop's per-row state: one tensor per field, rows along dim 0, canvases left-padded to a common length."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError

# fields that hold a canvas slot per column (left padding moves them right)
_SLOT_FIELDS = {"tokens": "pad", "attention": 0, "positions": 0, "cfg_hidden": False, "text_noise": False,
                "noisy": False, "locked": False}  # fmt: skip


@dataclass
class Rows:
    handle: torch.Tensor  # (R,) long: the row's handle (its key in the Denoiser's generators and results)
    tokens: torch.Tensor  # (R, L) long: the canvas (prompt + generated region + suffix), left-padded
    attention: torch.Tensor  # (R, L) long: 1 on real slots, 0 on left padding
    positions: torch.Tensor  # (R, L) long: position ids (counted from the first real slot)
    cfg_hidden: torch.Tensor  # (R, L) bool: what CFG's unconditional pass hides (prompt and suffix text)
    text_noise: torch.Tensor  # (R, L) bool: noise positions inside the user's text (filled with block 0)
    noisy: torch.Tensor  # (R, L) bool: still noisy (the process updates it every step)
    locked: torch.Tensor  # (R, L) bool: a template's text inside the generated region (never noised or revised)
    gen_start: torch.Tensor  # (R,) long: first slot of the generated region
    pad: torch.Tensor  # (R,) long: left-padding slots
    has_text_noise: torch.Tensor  # (R,) bool: the row has noise inside its text
    offset: torch.Tensor  # (R,) long: slots the first block is short by (blocks aligned with positions), else 0
    block: torch.Tensor  # (R,) long: current block
    step: torch.Tensor  # (R,) long: step inside the current block
    noisy_at_block_start: torch.Tensor  # (R,) long: noisy positions of the region when the block started
    nfe: torch.Tensor  # (R,) long (CPU): network evaluations the row took part in
    steps_taken: torch.Tensor  # (R,) long (CPU): denoising steps taken

    @property
    def count(self) -> int:
        return int(self.handle.numel())

    @classmethod
    def empty(cls, device) -> "Rows":
        z1 = torch.zeros(0, dtype=torch.long, device=device)
        z2 = torch.zeros((0, 0), dtype=torch.long, device=device)
        b1, b2 = z1.bool(), z2.bool()
        return cls(z1, z2, z2, z2, b2, b2, b2, b2, z1, z1, b1, z1, z1, z1, z1, z1.cpu(), z1.cpu())

    @classmethod
    def start(
        cls,
        handles: Sequence[int],
        rows_tokens: Sequence[Sequence[int]],
        prompt_lengths: Sequence[int],
        length: int,
        gen_length: int,
        pad_id: int,
        noisy_in_text: Callable[[torch.Tensor], torch.Tensor],
        device,
        align: int = 0,
        locked: Sequence[Sequence[int]] | None = None,
        hide: Sequence[Sequence[int] | None] | None = None,
    ) -> "Rows":
        """New rows: each canvas right-aligned in `length` slots; the generated region starts noisy except where
        `locked` (per row, positions inside the generated region: a template's text) says. With `align`
        (a block length) blocks sit at multiples of it in position space: the first block is cut short to the
        next boundary (the block-causal network's own blocks). `hide` (per row, None or prompt positions): what
        CFG's unconditional pass hides instead of the whole prompt, suffix and locked text (attribute guidance)."""
        n = len(rows_tokens)
        tokens = torch.full((n, length), pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((n, length), dtype=torch.long, device=device)
        for i, r in enumerate(rows_tokens):
            tokens[i, length - len(r) :] = torch.tensor(r, device=device)
            attention[i, length - len(r) :] = 1
        pad = torch.tensor([length - len(r) for r in rows_tokens], device=device)
        gen_start = pad + torch.tensor(list(prompt_lengths), device=device)
        at = torch.arange(length, device=device)[None]
        in_gen = (at >= gen_start[:, None]) & (at < gen_start[:, None] + gen_length)
        real = attention.bool()
        text_noise = noisy_in_text(tokens) & ~in_gen & real
        fixed = torch.zeros_like(in_gen)
        for i, ks in enumerate(locked or []):
            if len(ks):
                fixed[i, gen_start[i] + torch.tensor(list(ks), device=device)] = True
        cfg_hidden = real & (~in_gen | fixed) & ~text_noise
        for i, ks in enumerate(hide or []):
            if ks is not None:
                cfg_hidden[i] = False
                if len(ks):
                    cfg_hidden[i, pad[i] + torch.tensor(list(ks), device=device)] = True
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        return cls(
            handle=torch.tensor(list(handles), device=device),
            tokens=tokens,
            attention=attention,
            positions=(attention.cumsum(1) - 1).clamp(min=0),
            cfg_hidden=cfg_hidden,
            text_noise=text_noise,
            noisy=(in_gen & ~fixed) | text_noise,
            locked=fixed,
            gen_start=gen_start,
            pad=pad,
            has_text_noise=text_noise.any(1),
            offset=torch.tensor([p % align if align else 0 for p in prompt_lengths], device=device),
            block=zeros,
            step=zeros,
            noisy_at_block_start=zeros,
            nfe=zeros.cpu(),
            steps_taken=zeros.cpu(),
        )

    def left_pad(self, k: int, pad_id: int) -> None:
        """Every canvas grows by k slots on the left (a longer row joined)."""
        for name, fill in _SLOT_FIELDS.items():
            setattr(self, name, F.pad(getattr(self, name), (k, 0), value=pad_id if fill == "pad" else fill))
        self.gen_start, self.pad = self.gen_start + k, self.pad + k

    def select(self, keep: torch.Tensor) -> "Rows":
        kept_cpu = keep.cpu()
        return Rows(**{
            f.name: getattr(self, f.name)[kept_cpu if getattr(self, f.name).device.type == "cpu" else keep]
            for f in dataclasses.fields(self)
        })  # fmt: skip

    def concat(self, other: "Rows") -> "Rows":
        return Rows(
            **{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in dataclasses.fields(self)}
        )


def template_locks(templates, n: int, gen_length: int, free_id: int | None) -> list[dict[int, int]]:
    """Per row, {position in the generated region: token} for what its answer template locks (every id but
    `free_id`, the mask token); the diffusion sampler keeps these tokens, the AR sampler is forced to them."""
    if templates is None:
        return [{} for _ in range(n)]
    if len(templates) != n:
        raise InputError("templates", f"got {len(templates)} templates for {n} prompts")
    if free_id is None:
        raise InputError("templates", "no mask token id marks a template's free positions: pass mask_token_id")
    out = []
    for i, t in enumerate(templates):
        if len(t) > gen_length:
            raise InputError(f"templates[{i}]", f"has {len(t)} tokens; gen_length is {gen_length}: "
                             "raise gen_length to at least the template's length")  # fmt: skip
        out.append({k: int(x) for k, x in enumerate(t) if int(x) != free_id})
    return out


def finish_at_eos(r: Rows, G: int, eos_id: int) -> torch.Tensor:
    """Rows whose generated region holds a settled EOS with everything before it settled (and no in-text noise
    left) are done: their remaining noisy positions become EOS (in place). Returns done (R,)."""
    gen_idx = r.gen_start[:, None] + torch.arange(G, device=r.tokens.device)[None]
    g, noisy = r.tokens.gather(1, gen_idx), r.noisy.gather(1, gen_idx)
    is_eos = (g == eos_id) & ~noisy
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), G)
    before = torch.arange(G, device=r.tokens.device)[None] < first_eos[:, None]
    done = has_eos & ~(noisy & before).any(1) & ~(r.text_noise & r.noisy).any(1)
    fill = done[:, None] & noisy
    if bool(fill.any()):
        r.tokens = r.tokens.scatter(1, gen_idx, g.masked_fill(fill, eos_id))
        r.noisy = r.noisy.scatter(1, gen_idx, noisy & ~fill)
    return done
