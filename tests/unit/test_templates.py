"""Answer templates: text locked in place inside the answer, "<|mask|>" for each token the model writes. Training
never noises or scores a locked token; diffusion sampling never changes one; the AR twin is forced to it; a Sudoku
example's template holds its givens."""

import json

import numpy as np
import pytest
import torch

from dlm.errors import InputError
from dlm.model import Transformer
from dlm.sampling import GenerationConfig, generate
from dlm.sampling.autoregressive import generate_autoregressive
from dlm.tasks import get_task, write_sft
from dlm.tokenizer import TEMPLATE_FREE, train_tokenizer
from dlm.training.data import DataConfig, build_dataset

from ..conftest import MASK, tiny_config


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(files=[], vocab_size=263, out_dir=tmp_path_factory.mktemp("tok"), texts=["x"])


def test_a_template_is_locked_text_and_one_mask_per_free_token(tok):
    ids = tok.encode_template(f"ab{TEMPLATE_FREE}{TEMPLATE_FREE}c{TEMPLATE_FREE}")
    m = tok.mask_token_id
    assert ids == tok.encode("ab", parse_special=False) + [m, m] + tok.encode("c", parse_special=False) + [m]
    assert tok.encode_template("<|eos|>") == tok.encode("<|eos|>", parse_special=False)  # other specials are text
    with pytest.raises(InputError) as e:
        tok.encode_template(3)
    assert e.value.field == "template"


def _rows(tmp_path, tok, records, L=40):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = DataConfig(train=[str(path)], task="sft", seq_len=L, valid_fraction=0.0)
    return build_dataset(cfg, tok, tmp_path / "cache")[0]


def _chat(q, a, template=None):
    row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    return row if template is None else {**row, "template": template}


def test_locked_answer_tokens_are_left_out_of_what_the_losses_noise_and_score(tmp_path, tok):
    F = TEMPLATE_FREE
    train = _rows(tmp_path, tok, [_chat("q", "12345", f"1{F}3{F}{F}"), _chat("qq", "678")])
    plen = int(train.prompt_lengths[0])
    assert train.locked_row(0).nonzero()[0].tolist() == [plen, plen + 2]
    assert not train.locked_row(1).any()
    b = train.batch([0, 1])
    assert "prompt_lengths" not in b
    want = np.arange(40)[None, :] >= train.prompt_lengths[:, None]
    want[0, [plen, plen + 2]] = False
    assert b["answer_mask"].numpy().tolist() == want.tolist()
    untemplated = _rows(tmp_path / "u", tok, [_chat("qq", "678")])
    assert "prompt_lengths" in untemplated.batch([0]) and "answer_mask" not in untemplated.batch([0])


@pytest.mark.parametrize("template,match", [
    (f"1{TEMPLATE_FREE}3", "has 3 tokens but the answer has 5"),
    (f"1{TEMPLATE_FREE}9{TEMPLATE_FREE}{TEMPLATE_FREE}", "locked token 2 differs"),
])  # fmt: skip
def test_a_template_that_does_not_fit_its_answer_is_refused_by_name(tmp_path, tok, template, match):
    with pytest.raises(InputError, match=match) as e:
        _rows(tmp_path, tok, [_chat("q", "12345", template)])
    assert e.value.field.endswith("template")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(tiny_config(vocab_size=96, d_model=48)).eval()
    for p in m.parameters():
        p.data.mul_(3.0) if p.dim() > 1 else None
    return m


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [20]]
TEMPLATES = [[40, MASK, MASK, 41, MASK], [MASK, 42, MASK], []]


@pytest.mark.parametrize("cfg", [GenerationConfig(gen_length=8, steps=8, block_length=4, stop_at_eos=False),
                                 GenerationConfig(gen_length=8, steps=4, temperature=1.0, seed=3,
                                                  stop_at_eos=False)])  # fmt: skip
def test_diffusion_sampling_keeps_locked_tokens_and_fills_only_the_rest(model, cfg):
    out = generate(model, PROMPTS, cfg, templates=TEMPLATES)
    free = generate(model, PROMPTS, cfg)
    for i, (p, t) in enumerate(zip(PROMPTS, TEMPLATES)):
        gen = out.canvases[i][len(p) :]
        assert len(gen) == 8 and MASK not in gen
        assert all(g == x for g, x in zip(gen, t) if x != MASK)
        alone = generate(model, [p], cfg, templates=[t])
        assert alone.canvases[0] == out.canvases[i] and alone.nfe[0] == out.nfe[i]
    assert out.canvases[2] == free.canvases[2]  # an empty template changes nothing
    if cfg.steps == cfg.gen_length:  # one token per step: locked tokens take no steps
        assert out.nfe[:2] == [8 - 2, 8 - 1]


def test_ar_decoding_is_forced_to_the_locked_tokens():
    torch.manual_seed(0)
    m = Transformer(tiny_config(attention="causal")).eval()
    cfg = GenerationConfig(gen_length=6, steps=6, stop_at_eos=False)
    out = generate_autoregressive(m, PROMPTS, cfg, templates=TEMPLATES)
    for i, (p, t) in enumerate(zip(PROMPTS, TEMPLATES)):
        gen = out.canvases[i][len(p) :]
        assert all(g == x for g, x in zip(gen, t) if x != MASK)
        seq = list(p)  # forced decoding = greedy decoding with the locked tokens written in as they come
        for k in range(6):
            nxt = int(m(torch.tensor([seq]))[0, -1].argmax())
            seq.append(t[k] if k < len(t) and t[k] != MASK else nxt)
        assert out.canvases[i] == seq


def test_a_template_longer_than_gen_length_names_the_row(model):
    cfg = GenerationConfig(gen_length=2, steps=2)
    with pytest.raises(InputError) as e:
        generate(model, PROMPTS[:1], cfg, templates=[[MASK, MASK, MASK]])
    assert e.value.field == "templates[0]"


def test_sudoku_templates_lock_the_givens_and_reach_the_sft_rows(tmp_path):
    ex = get_task("sudoku").examples("test", 1)[0]
    assert ex.template.count(TEMPLATE_FREE) == ex.prompt.count("0") == 81 - ex.meta["givens"]
    assert ex.template.replace(TEMPLATE_FREE, "0") == ex.prompt
    assert get_task("sudoku", locked=False).examples("test", 1)[0].template is None
    assert get_task("sudoku", layout="grid").examples("test", 1)[0].template is None
    with pytest.raises(InputError) as e:
        get_task("sudoku", layout="grid", locked=True)
    assert e.value.field == "locked"
    write_sft(get_task("sudoku"), "train", 2, tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert all(r["template"].replace(TEMPLATE_FREE, "0") == r["messages"][0]["content"] for r in rows)


def test_countdown_templates_lock_the_places_the_question_fixes(tmp_path, tok):
    for ex in get_task("countdown").examples("test", 20):
        t = ex.template
        free = [i for i in range(len(ex.answer)) if t.startswith(TEMPLATE_FREE, _offset(t, i))]
        assert len(free) == len(ex.answer) - ex.answer.count("=") - ex.answer.count(",") - 3
        assert all(ex.answer[i] not in "=," for i in free) and ex.answer.endswith(f"{ex.meta['target']:03d}")
        filled = t.replace(TEMPLATE_FREE, "_")
        assert [c for c in filled if c != "_"] == [c for i, c in enumerate(ex.answer) if i not in free]
        assert len(tok.encode_template(t)) == len(tok.encode(ex.answer))  # one token per character
    assert get_task("countdown", locked=False).examples("test", 1)[0].template is None
    assert get_task("countdown", layout="expression").examples("test", 1)[0].template is None
    with pytest.raises(InputError) as e:
        get_task("countdown", layout="expression", locked=True)
    assert e.value.field == "locked"


def _offset(template: str, i: int) -> int:
    """Where the template's i-th answer character starts (a free one is TEMPLATE_FREE, others one character)."""
    pos = 0
    for _ in range(i):
        pos += len(TEMPLATE_FREE) if template.startswith(TEMPLATE_FREE, pos) else 1
    return pos
