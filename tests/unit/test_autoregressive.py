import torch

from dlm.model import Transformer
from dlm.sampling import GenerationConfig, RecordingStreamer
from dlm.sampling.autoregressive import generate_autoregressive

from ..conftest import EOS, tiny_config

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20]]


def _causal():
    torch.manual_seed(0)
    m = Transformer(tiny_config(attention="causal")).eval()
    for p in m.parameters():
        if p.dim() > 1:
            p.data.mul_(3.0)
    return m


def test_cached_greedy_decoding_equals_recomputing_everything():
    m = _causal()
    out = generate_autoregressive(m, PROMPTS, GenerationConfig(gen_length=10, steps=10, stop_at_eos=False))
    for p, canvas in zip(PROMPTS, out.canvases):
        seq = list(p)
        for _ in range(10):
            logits = m(torch.tensor([seq]))[0, -1]
            seq.append(int(logits.argmax()))
        assert canvas == seq


def test_batch_invariance_and_seeded_sampling():
    m = _causal()
    for cfg in (
        GenerationConfig(gen_length=8, steps=8),
        GenerationConfig(gen_length=8, steps=8, temperature=1.0, seed=4),
    ):
        batch = generate_autoregressive(m, PROMPTS, cfg)
        for i, p in enumerate(PROMPTS):
            assert generate_autoregressive(m, [p], cfg).sequences[0] == batch.sequences[i]


def test_stops_at_eos_and_streams_one_token_per_step():
    m = _causal()
    force_eos = lambda ids, scores, pos: scores.index_fill(-1, torch.tensor([EOS]), 1e9)  # noqa: E731
    st = RecordingStreamer()
    out = generate_autoregressive(
        m, PROMPTS[:2], GenerationConfig(gen_length=8, steps=8), streamer=st, logits_processors=[force_eos]
    )
    assert out.sequences == [[], []] and out.nfe == [1, 1]
    assert len(st.events) == 1 and st.events[0].tokens == [[EOS], [EOS]]
