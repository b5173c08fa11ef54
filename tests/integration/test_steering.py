"""Steering mid-denoising on the real built-in model: a row switched to a new prompt keeps what it had settled
and denoises the rest under the new prompt, on the same schedule and random stream (so steering to the same
prompt changes nothing); other rows are untouched; bad steering is refused naming the field."""

import pytest
from typer.testing import CliRunner

import dlm
from dlm.cli import app
from dlm.errors import InputError
from dlm.sampling import GenerationConfig, RecordingStreamer, generate
from dlm.sampling.generate import Denoiser


@pytest.fixture(scope="module")
def lm():
    return dlm.load("builtin")


PROMPTS = ["def total(items):\n", "import os\n", "class Node:\n"]
NEW = "# sum the items with a for loop\ndef total(items):\n"


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "seed": 4}])
def test_steering_to_the_same_prompt_changes_nothing(lm, sampling):
    tok = lm.tokenizer
    ids = [tok.encode_prompt(p) for p in PROMPTS]
    cfg = GenerationConfig(gen_length=32, steps=16, block_length=16, **sampling)
    plain = generate(lm.model, ids, cfg, mask_token_id=tok.mask_token_id)
    same = generate(lm.model, ids, cfg, mask_token_id=tok.mask_token_id, steer=(5, ids))
    assert same.sequences == plain.sequences and same.nfe == plain.nfe and same.steps == plain.steps


def test_a_steered_row_keeps_what_it_settled_and_the_others_are_untouched(lm):
    tok = lm.tokenizer
    ids = [tok.encode_prompt(p) for p in PROMPTS]
    cfg = GenerationConfig(gen_length=32, steps=32, block_length=32)
    rec = RecordingStreamer()
    d = Denoiser(lm.model, cfg, mask_token_id=tok.mask_token_id, streamer=rec)
    handles = d.add(ids)
    for _ in range(12):
        d.step()
    before = d.generated()[handles[0]]
    h = d.steer(handles[0], tok.encode_prompt(NEW))
    out = {}
    while d.live:
        for f in d.step():
            out[f] = d.pop_result(f)
    settled = [k for k, t in enumerate(before) if t != tok.mask_token_id]
    assert len(settled) == 12
    assert [out[h]["sequence"][k] for k in settled] == [before[k] for k in settled]
    assert out[h]["nfe"] == 32 and out[h]["steps"] == 32  # the schedule went on, not restarted
    alone = generate(lm.model, ids[1:], cfg, mask_token_id=tok.mask_token_id)
    assert [out[handles[1]]["sequence"], out[handles[2]]["sequence"]] == alone.sequences
    plain = generate(lm.model, ids[:1], cfg, mask_token_id=tok.mask_token_id)
    assert out[h]["sequence"] != plain.sequences[0]  # the new prompt changed what came after


def test_bad_steering_is_refused(lm):
    tok = lm.tokenizer
    d = Denoiser(lm.model, GenerationConfig(gen_length=8, steps=8), mask_token_id=tok.mask_token_id)
    d.add([tok.encode_prompt("x")])
    with pytest.raises(InputError) as e:
        d.steer(99, tok.encode_prompt("y"))
    assert e.value.field == "handle"
    with pytest.raises(InputError) as e:
        lm.generate(["a", "b"], steer=(2, ["c"]), gen_length=8, steps=8)
    assert e.value.field == "steer"
    with pytest.raises(InputError) as e:
        dlm.load("builtin-ar").generate("a", steer=(2, "b"), gen_length=8, steps=8)
    assert e.value.field == "steer"


def test_cli_steer():
    r = CliRunner().invoke(app, ["generate", "def total(items):\n", "--model", "builtin", "--steer", NEW,
                                 "--steer-at", "8", "--gen-length", "16", "--steps", "16"])  # fmt: skip
    assert r.exit_code == 0 and r.output.startswith("def total(items):"), r.output
    r = CliRunner().invoke(app, ["generate", "x", "--steer", "y"])
    assert r.exit_code != 0 and "--steer-at" in r.output


def test_attribute_guidance_hides_only_the_instruction(lm):
    tok = lm.tokenizer
    instr, prompt = "# raise ValueError\n", "def check(x):\n"
    head = tok.encode(instr)
    d = Denoiser(lm.model, GenerationConfig(gen_length=16, steps=16, cfg_scale=1.0), mask_token_id=tok.mask_token_id)
    d.add([head + tok.encode(prompt)], cfg_hide=[list(range(len(head)))])
    hidden = d.rows.cfg_hidden[0].nonzero().flatten().tolist()
    assert hidden == list(range(len(head)))  # not the signature, not the generated region
    kw = dict(gen_length=16, steps=16)
    guided = lm.generate(prompt, guide_with=instr, cfg_scale=1.0, **kw)[0]
    unguided = lm.generate(instr + prompt, cfg_scale=0.0, **kw)[0]
    whole = lm.generate(instr + prompt, cfg_scale=1.0, **kw)[0]  # standard CFG hides the whole prompt
    assert guided.nfe == 2 * unguided.nfe and guided.tokens != whole.tokens
    assert lm.generate(prompt, guide_with=instr, cfg_scale=0.0, **kw)[0].tokens == unguided.tokens
    with pytest.raises(InputError) as e:
        d.add([tok.encode(prompt)], cfg_hide=[[99]])
    assert e.value.field == "cfg_hide[0]"
