import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from dlm.model import ModelConfig, Transformer  # noqa: E402

MASK, EOS, PAD, BOS = 3, 1, 2, 0


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=128,
        mask_token_id=MASK,
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=BOS,
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return Transformer(tiny_config()).eval()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


def tiny_lm(tok, attention: str = "bidirectional", max_seq_len: int = 128, gen=None):
    """A tiny random DiffusionLM on a real tokenizer (special ids from it), for pipeline-level tests."""
    from dlm.hub import DiffusionLM
    from dlm.sampling import GenerationConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=max_seq_len,
        attention=attention,
        mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return DiffusionLM(Transformer(cfg).eval(), tok, gen or GenerationConfig(gen_length=16, steps=16))


def write_addition_chats(path, n: int = 300):
    """n SFT chats "add i and i+1" -> "2i+1" as JSONL at `path` (returned)."""
    import json

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"add {i} and {i + 1}"},
                {"role": "assistant", "content": f"{2 * i + 1}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# Real Python text the repo ships (copied once from CPython 3.11.7; see its README.md): tests that learn from
# data read this, not the running interpreter's stdlib, which differs between Python builds.
PYTHON_CORPUS = Path(__file__).parent / "fixtures" / "python_corpus"
