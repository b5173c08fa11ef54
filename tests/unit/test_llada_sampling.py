"""dlm samples a LLaDA checkpoint token for token as LLaDA's own `generate()` does (greedy).

The reference follows LLaDA's published `generate.py` (ML-GSAI/LLaDA): the answer is cut into blocks; each block's
masks are split over its steps by `get_num_transfer_tokens` (base = n // steps, the first n % steps steps one
more); at every step the whole canvas goes through the model (with classifier-free guidance, the prompt masked in
the unconditional copy and logits = u + (w + 1)(c - u)), x0 is the argmax, confidences are softmax(logits)[x0]
at masked positions of the current block (-inf elsewhere), and the top-k confident positions are committed.
It drives the float64 forward of tests/foreign.py. As with Dream, the mask token is kept out of the proposals
(LLaDA's trained models never propose it; dlm never does). Seeded sampling draws Gumbel noise for the whole
(B, L, V) canvas in LLaDA and per masked position in dlm (batch-invariant), so only greedy is compared.
"""

import pytest
import torch
import torch.nn.functional as F

from dlm.hub import from_pretrained
from dlm.hub.loading import open_checkpoint
from dlm.hub.pipeline import checkpoint_settings
from dlm.sampling import GenerationConfig, generate

from ..foreign import llada_config, llada_reference, write_llada

MASK = 90


def llada_generate(state, cfg, prompt, *, steps, gen_length, block_length, cfg_scale=0.0):
    x = torch.full((1, len(prompt) + gen_length), MASK, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    prompt_index = x != MASK
    P, num_blocks = len(prompt), gen_length // block_length
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        n = int((x[0, P + b * block_length : P + (b + 1) * block_length] == MASK).sum())
        counts = [n // steps_per_block + (1 if i < n % steps_per_block else 0) for i in range(steps_per_block)]
        for i in range(steps_per_block):
            mask_index = x == MASK
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = MASK
                logits, un_logits = llada_reference(state, cfg, torch.cat([x, un_x])).float().chunk(2)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = llada_reference(state, cfg, x).float()
            logits[..., MASK] = float("-inf")
            x0 = logits.argmax(-1)
            x0_p = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, P + (b + 1) * block_length :] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            _, chosen = torch.topk(confidence[0], k=counts[i])
            x[0, chosen] = x0[0, chosen]
    return x[0].tolist()


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llada")
    state = write_llada(folder, seed=5)
    return folder, state, from_pretrained(folder, dtype="fp32")


@pytest.mark.parametrize(
    "steps, gen_length, block_length, cfg_scale",
    [(8, 8, 8, 0.0), (6, 12, 4, 0.0), (4, 12, 6, 0.0), (5, 10, 10, 0.0), (6, 12, 4, 1.5)],
)
def test_dlm_reproduces_lladas_generate(llada, steps, gen_length, block_length, cfg_scale):
    folder, state, model = llada
    prompt = [3, 17, 44, 8, 61, 29]
    want = llada_generate(state, llada_config(), prompt, steps=steps, gen_length=gen_length,
                          block_length=block_length, cfg_scale=cfg_scale)  # fmt: skip
    defaults, _ = checkpoint_settings(open_checkpoint(folder))
    cfg = GenerationConfig(**{
        **defaults.__dict__, "gen_length": gen_length, "steps": steps, "block_length": block_length,
        "cfg_scale": cfg_scale, "stop_at_eos": False, "trim_at_eos": False,
    })  # fmt: skip
    assert (cfg.schedule, cfg.policy, cfg.temperature) == ("even", "low_confidence", 0.0)
    got = generate(model, [prompt], cfg).canvases[0]
    assert got == want
    assert MASK not in got
