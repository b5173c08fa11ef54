"""Block diffusion (BD3-LM, arXiv 2503.09573): masked diffusion inside blocks, blocks left to right.

The sequence is cut into blocks of `block_size` positions (counted on positions, per packed example). Each block
gets its own noise level (antithetic over the global batch, in `diffusion.train_t`: BD3-LM's clipped
schedule) and is denoised given the *clean* earlier blocks, so the likelihood factorises over blocks,
-log p(x) = -sum_b log p(x^b | x^{<b}), each term bounded by the masked ELBO. Training runs one forward over the
two streams x_t ⊕ x_0 with the three-part mask of `dlm.model.masks.two_stream_mask` (noisy block → itself and
the earlier clean blocks; clean blocks block-causal among themselves) and scores the noisy stream.

Sampling needs nothing new from the process: the reverse transition is the masked one (every unmask policy,
commit schedule and proposal), and the sampler loop, seeing a `block_causal` network, aligns its blocks with the
network's and keeps finished blocks' K/V in the exact block cache (`dlm.sampling.caches`, cache="block").

`resolve` fits the network: block-causal attention with the process's block size. From a causal checkpoint
(`train.init_from`) that is the direct AR → block-diffusion conversion (SDAR, Fast-dLLM v2); with
`diffusion.shift_logits` the prediction is shifted as in Dream (the state at i-1 predicts token i: inside a block
from the noisy stream, for a block's first position from the clean stream's previous position, which is the
hidden state the block-causal sampler has there).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import ConfigError
from ..model.masks import key_positions, two_stream_mask
from .base import DiffusionConfig, register_process
from .masked import MaskedDiffusion


def block_ids(positions: torch.Tensor, block_size: int, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B|1, L) long: the index of each slot's block in its row, counting from 0; a new block starts where a
    position is a multiple of `block_size` or a new packed example begins."""
    if segment_ids is None:
        return positions // block_size
    start = (positions.expand_as(segment_ids) % block_size == 0).clone()
    start[:, 0] = True
    start[:, 1:] |= segment_ids[:, 1:] != segment_ids[:, :-1]
    return start.long().cumsum(-1) - 1


@register_process
class BlockDiffusion(MaskedDiffusion):
    """BD3-LM: per-block noise levels and the two-stream forward; everything else is the masked process."""

    name = "block"

    def __init__(self, config: DiffusionConfig, mask_token_id: int, *, shift_logits: bool = False, vocab_size=0):
        super().__init__(config, mask_token_id, shift_logits=shift_logits, vocab_size=vocab_size)
        if not config.block_size:
            raise ConfigError("diffusion.block_size", "the block process needs a block size (or a model block_size)")
        self.block_size = int(config.block_size)

    @classmethod
    def resolve(cls, config, model_config):
        config, model_config = super().resolve(config, model_config)
        size = config.block_size or getattr(model_config, "block_size", None)
        if not size:
            raise ConfigError("diffusion.block_size", "the block process needs a block size; got none")
        config = replace(config, block_size=int(size))
        if model_config is not None and (
            getattr(model_config, "attention", None) != "block_causal" or model_config.block_size != size
        ):
            model_config = replace(model_config, attention="block_causal", block_size=int(size))
        return config, model_config

    def noise_units(self, model, input_ids, attention_mask=None) -> torch.Tensor:
        """Trajectory-ordered masking orders each block (`MaskedDiffusion.add_noise`)."""
        _, positions, segments, _ = self._parts(model, input_ids.shape[1], attention_mask, input_ids.device)
        return block_ids(positions, self.block_size, segments)

    @staticmethod
    def _parts(model, length: int, attention_mask, device):
        """(network, positions (B|1, L), segment ids or None, key mask (B, L) or None): a packed view
        (`Segmented`) brings its own positions and segments."""
        key_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        segments = getattr(model, "segment_ids", None)
        if segments is not None:
            return model.net, model.positions, segments, key_mask
        return model, key_positions(key_mask, length, device), None, key_mask

    def training_t(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> torch.Tensor:
        """(B, L): one level per block. Rows hold at most ceil(L / block_size) blocks (L when packed: a bound
        that holds whatever the segments), drawn row-major over the global batch as `sample_t_grid` draws."""
        B, L = input_ids.shape
        _, positions, segments, _ = self._parts(model, L, attention_mask, input_ids.device)
        ids = block_ids(positions, self.block_size, segments).expand(B, L)
        per_row = L if segments is not None else -(-L // self.block_size)
        t = self.sample_t_grid(B, per_row, generator, input_ids.device, shard)
        return t.gather(1, ids.clamp(max=per_row - 1))

    def denoise(self, model, xt, x0, attention_mask=None, return_hidden=False) -> torch.Tensor:
        """One forward over x_t ⊕ x_0 with the three-part mask; the noisy stream's outputs (shifted: see the
        module docstring)."""
        B, L = xt.shape
        net, positions, segments, key_mask = self._parts(model, L, attention_mask, xt.device)
        mask = two_stream_mask(L, self.block_size, key_mask=key_mask, segment_ids=segments, positions=positions)
        opened = self.anneal_open(L, xt.device)
        if opened is not None:  # annealing: inside a noisy block, from causal to bidirectional
            mask = mask.clone()
            mask[..., :L, :L] &= opened
        pos2 = torch.cat([positions, positions], 1).expand(B, 2 * L)
        out = net(torch.cat([xt, x0], 1), attention_mask=mask, position_ids=pos2, return_hidden=return_hidden)
        if not self.shift_logits:
            return out[:, :L]
        ids = block_ids(positions, self.block_size, segments).expand(B, L)
        i = torch.arange(L, device=xt.device)[None]
        same_block = torch.zeros_like(ids, dtype=torch.bool)
        same_block[:, 1:] = ids[:, 1:] == ids[:, :-1]
        src = torch.where(same_block, i - 1, L + i - 1)  # the previous slot: noisy inside a block, else clean
        src[:, 0] = 0  # position 0 keeps its own (as align_logits)
        return out.gather(1, src[..., None].expand(-1, -1, out.shape[-1]))
