"""Pictures in and out of a model (issue 20): `draw` writes a whole picture for a diffusion model and its AR twin
(template + image-code-only slots), `ask` answers in text, the image tokenizer travels with the model folder,
the MaskGIT cosine commit schedule counts as written, and the CLI flags check their input."""

import io
import math

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

from dlm.errors import InputError  # noqa: E402
from dlm.multimodal import DESCRIBE, ImageTokenizer, ask, draw, image_codes, render, scenes  # noqa: E402
from dlm.multimodal.vocab import with_image_tokens  # noqa: E402
from dlm.sampling import AllowTokens, GenerationConfig  # noqa: E402
from dlm.tokenizer import train_tokenizer  # noqa: E402

from ..conftest import tiny_lm  # noqa: E402


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("mm")
    (d / "a.txt").write_text("a red circle above a blue square\nWhat colour is the circle? red\n" * 50)
    tok = with_image_tokens(train_tokenizer([d / "a.txt"], vocab_size=300), 16)
    itok = ImageTokenizer.fit([render(s) for s in scenes("train", 100)], size=16, patch=4, codes=16, seed=0)
    return tok, itok


def _lm(parts, attention):
    tok, itok = parts
    lm = tiny_lm(tok, attention, gen=GenerationConfig(gen_length=8, steps=8))
    lm.image_tokenizer = itok
    return lm


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_draw_writes_a_whole_picture_and_ask_answers_in_text(parts, attention, tmp_path):
    """Random weights: the picture is whatever the model likes, but always a whole one (16 codes between
    <|boi|> and <|eoi|>); batch = alone and a seed repeats; an answer never holds image tokens."""
    tok, itok = parts
    lm = _lm(parts, attention)
    out = draw(lm, ["a red circle", "a blue square"], seed=3)
    alone = draw(lm, "a blue square", seed=3)[0]
    for picture, completion in out:
        assert picture.size == (16, 16) and picture.mode == "RGB"
        assert image_codes(tok, completion.tokens, itok.tokens_per_image) is not None
    assert out[1][1].tokens == alone[1].tokens
    assert out[1][0].tobytes() == alone[0].tobytes()
    png = io.BytesIO()
    out[0][0].save(png, format="PNG")
    assert Image.open(io.BytesIO(png.getvalue())).format == "PNG"
    answers = ask(lm, [render(scenes("test", 1)[0]), render(scenes("test", 2)[1])], DESCRIBE, gen_length=6)
    image_ids = {tok.token_to_id(f"<|img_{c}|>") for c in range(itok.codes)}
    assert len(answers) == 2 and all(not image_ids & set(a.tokens) for a in answers)
    with pytest.raises(InputError, match="questions"):
        ask(lm, [render(scenes("test", 1)[0])], ["a?", "b?"])
    lm.image_tokenizer = None
    with pytest.raises(InputError, match="model"):
        draw(lm, "a red circle")


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_the_drawing_canvas_is_the_training_layout(parts, attention):
    """An SFT answer is padded with EOS to the sequence length, so a drawing's canvas is <|boi|>, the free code
    slots, <|eoi|>, then EOS locked up to the model's default gen_length (none when that is shorter)."""
    from dlm.multimodal.generation import draw_template

    tok, itok = parts
    n = itok.tokens_per_image
    lm = tiny_lm(tok, attention, gen=GenerationConfig(gen_length=n + 6, steps=n + 6))
    lm.image_tokenizer = itok
    template = draw_template(lm)
    assert template[: n + 2] == [tok.token_to_id("<|boi|>")] + [tok.mask_token_id] * n + [tok.token_to_id("<|eoi|>")]
    assert template[n + 2 :] == [tok.eos_token_id] * 4
    picture, completion = draw(lm, "a red circle", seed=0)[0]
    assert image_codes(tok, completion.tokens, n) is not None and picture.size == (16, 16)
    assert len(draw_template(_lm(parts, attention))) == n + 2  # gen_length 8 < n + 2: no tail


def test_the_image_tokenizer_is_saved_and_loaded_with_the_model(parts, tmp_path):
    import dlm

    lm = _lm(parts, "bidirectional")
    lm.save_pretrained(tmp_path / "m")
    back = dlm.load(tmp_path / "m")
    assert back.image_tokenizer is not None
    assert torch.equal(torch.from_numpy(back.image_tokenizer.codebook), torch.from_numpy(parts[1].codebook))
    assert draw(back, "a red circle", seed=1)[0][1].tokens == draw(lm, "a red circle", seed=1)[0][1].tokens
    assert dlm.load(tmp_path / "m").image_tokenizer.tokens_per_image == 16


def test_allow_tokens_keeps_only_its_ids():
    scores = torch.randn(2, 3, 10)
    out = AllowTokens([1, 4])(torch.zeros(2, 5), scores, torch.zeros(2, 3, dtype=torch.long))
    assert torch.equal(out[..., [1, 4]], scores[..., [1, 4]]) and torch.isinf(out[..., [0, 2, 3, 5]]).all()


def test_cosine_schedule_commits_few_first_and_many_last(parts):
    """MaskGIT's schedule: after step i of S, floor(c cos(pi/2 (i+1)/S)) masks are left; recorded per step."""
    from dlm.sampling import RecordingStreamer

    tok, _ = parts
    lm = tiny_lm(tok, "bidirectional", gen=GenerationConfig(gen_length=16, steps=4))
    rec = RecordingStreamer()
    lm.generate("a red", schedule="cosine", streamer=rec, stop_at_eos=False)
    per_step = [sum(len(p) for p in ev.positions) for ev in rec.events]
    left = [math.floor(16 * math.cos(math.pi / 2 * (i + 1) / 4)) for i in range(4)]  # 14, 11, 6, 0
    assert per_step == [16 - left[0]] + [left[i - 1] - left[i] for i in range(1, 4)] == [2, 3, 5, 6]


def test_cli_draws_to_a_png_and_answers_about_a_picture(parts, tmp_path):
    import json

    from typer.testing import CliRunner

    from dlm.cli import app

    lm = _lm(parts, "bidirectional")
    lm.save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    run = CliRunner().invoke
    res = run(app, ["generate", "--model", m, "a red circle above a blue square",
                    "--image-out", str(tmp_path / "o.png"), "--seed", "0", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["image"] == str(tmp_path / "o.png") and out["nfe"] >= 1
    with Image.open(tmp_path / "o.png") as im:
        assert (im.format, im.size, im.mode) == ("PNG", (16, 16), "RGB")
    render(scenes("test", 1)[0], 64).save(tmp_path / "in.jpg")  # any size, JPEG too: resized to the model's
    res = run(app, ["generate", "--model", m, "--image", str(tmp_path / "in.jpg"), "What colour is the circle?"])
    assert res.exit_code == 0, res.output
    bad = [
        (["--image", str(tmp_path / "in.jpg"), "--image-out", str(tmp_path / "x.png"), "q"], "--image"),
        (["--image", str(tmp_path / "missing.png"), "q"], "--image"),
        (["--image-out", str(tmp_path / "x.png"), "a", "b"], "PROMPTS"),
        (["--image-out", str(tmp_path / "x.png"), "--template", "<|mask|>", "a"], "--template"),
    ]
    for args, field in bad:
        res = run(app, ["generate", "--model", m, *args])
        assert res.exit_code == 2 and field in res.output, (args, res.output)
    res = run(app, ["generate", "--image-out", str(tmp_path / "x.png"), "a red circle"])  # the text-only default
    assert res.exit_code == 2 and "image tokenizer" in res.output
