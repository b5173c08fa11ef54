"""Dream (Dream-org/Dream-v0-*-7B, model_type "Dream"): a Qwen2 network with bidirectional attention whose
logits are shifted (position i-1 predicts token i, as in the AR model it was adapted from).

Layout: Qwen2's (`model.layers.N.self_attn.{q,k,v,o}_proj` with q/k/v biases, `model.norm`, `lm_head`).
The shift is the ModelConfig field `shift_logits=True`, which the sampler and losses read; nothing else differs.
"""

from __future__ import annotations

from .base import RawConfig
from .hf_causal import HFLayoutFamily


class DreamFamily(HFLayoutFamily):
    name = "dream"
    model_types = ("Dream", "dream")
    attention = "bidirectional"
    shift_logits = True
    diffusion = True
    # Dream's vocabulary (Qwen2.5 + <|beginoftext|> 151665 and <|mask|> 151666); config.json wins when it names them.
    special_defaults = {"mask_token_id": 151666, "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643}

    def biases(self, rc):
        return True, False, False

    def window(self, rc: RawConfig) -> int | None:
        if rc.get("use_sliding_window", False):
            raise rc.error("use_sliding_window", "sliding-window attention is not implemented for bidirectional Dream")
        return None

    def generation_defaults(self) -> dict:
        # Dream's published chat settings: entropy-ordered unmasking, temperature 0.2, top-p 0.95; Dream's own
        # commit schedule (floor(n (1 - s/t)) on linspace(1, 1e-3, steps + 1)) and tempered categorical sampling.
        return {"gen_length": 128, "steps": 128, "policy": "entropy", "temperature": 0.2, "top_p": 0.95,
                "schedule": "dream", "schedule_eps": 1e-3, "proposal": "categorical"}  # fmt: skip
