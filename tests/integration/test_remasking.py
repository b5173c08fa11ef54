"""Revision by remasking (ReMDM-style, `remask`): on the real built-in model a committed token goes back to mask
and comes back as another token; the schedule holds (same steps, nothing left masked); rows stay independent;
a template's locked tokens are never revised; a constraint and revision do not mix."""

import pytest

import dlm
from dlm.errors import ConfigError, InputError
from dlm.sampling import GenerationConfig, RecordingStreamer, generate
from dlm.sampling.generate import Denoiser


@pytest.fixture(scope="module")
def lm():
    return dlm.load("builtin")


def _history(rec, mask_id):
    """position -> the tokens it held after each step that changed it (mask included)."""
    seen: dict[int, list[int]] = {}
    for ev in rec.events:
        for p, t in zip(ev.positions[0], ev.tokens[0]):
            seen.setdefault(p, []).append(t)
    return seen


def test_a_committed_token_can_be_revised_and_the_schedule_holds(lm):
    tok = lm.tokenizer
    prompt = [tok.encode_prompt("def fibonacci(n):\n")]
    cfg = GenerationConfig(gen_length=32, steps=16, block_length=16, remask=2, remask_below=0.5)
    rec = RecordingStreamer()
    out = generate(lm.model, prompt, cfg, mask_token_id=tok.mask_token_id, streamer=rec)
    hist = _history(rec, tok.mask_token_id)
    revised = [h for h in hist.values() if tok.mask_token_id in h]
    assert revised, "nothing was remasked"
    assert any(h[0] != h[-1] for h in revised), "every remasked token came back unchanged"
    assert all(h[-1] != tok.mask_token_id for h in hist.values())  # nothing stays masked
    assert out.steps == [16] and tok.mask_token_id not in out.canvases[0]
    plain = generate(lm.model, prompt, GenerationConfig(gen_length=32, steps=16, block_length=16),
                     mask_token_id=tok.mask_token_id)  # fmt: skip
    assert plain.steps == out.steps and plain.sequences != out.sequences


def test_rows_are_independent_under_revision(lm):
    tok = lm.tokenizer
    prompts = [tok.encode_prompt(p) for p in ["import os\n", "def f(a, b):\n    return ", "class Node:\n"]]
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=8, remask=1, remask_below=0.8, temperature=0.7,
                           seed=3)  # fmt: skip
    together = generate(lm.model, prompts, cfg, mask_token_id=tok.mask_token_id)
    for i, p in enumerate(prompts):
        assert generate(lm.model, [p], cfg, mask_token_id=tok.mask_token_id).sequences[0] == together.sequences[i]
    # a row that joins two steps late changes nothing for the others
    d = Denoiser(lm.model, cfg, mask_token_id=tok.mask_token_id)
    (a,) = d.add([prompts[0]])
    d.step(), d.step()
    (b,) = d.add([prompts[1]])
    results = {}
    while d.live:
        for h in d.step():
            results[h] = d.pop_result(h)["sequence"]
    assert results[a] == together.sequences[0] and results[b] == together.sequences[1]


def test_locked_template_tokens_are_never_revised(lm):
    tok = lm.tokenizer
    tpl = tok.encode_template("x = <|mask|><|mask|><|mask|>\ny = <|mask|><|mask|><|mask|>")
    cfg = GenerationConfig(gen_length=len(tpl), steps=len(tpl), remask=8, remask_below=1.0)
    rec = RecordingStreamer()
    out = generate(lm.model, [tok.encode_prompt("# two values\n")], cfg, templates=[tpl],
                   mask_token_id=tok.mask_token_id, streamer=rec)  # fmt: skip
    locked = [k for k, t in enumerate(tpl) if t != tok.mask_token_id]
    assert [out.sequences[0][k] for k in locked] == [tpl[k] for k in locked]
    assert any(tok.mask_token_id in h for h in _history(rec, tok.mask_token_id).values())  # free ones were revised


def test_revision_settings_are_checked(lm):
    with pytest.raises(ConfigError) as e:
        GenerationConfig(remask=-1)
    assert e.value.field == "remask"
    with pytest.raises(ConfigError) as e:
        GenerationConfig(remask_below=0.0)
    assert e.value.field == "remask_below"
    with pytest.raises(InputError) as e:
        lm.generate("x", structured_output={"regex": "[0-9]+"}, gen_length=8, steps=8, remask=1)
    assert e.value.field == "constraints"
