"""The shipped multimodal model (issue 20): `builtin-multimodal`, masked diffusion over text and image-code tokens
(examples/configs/multimodal/diffusion.yaml). Small bf16 weights with their image tokenizer in the package; it
captions held-out pictures and answers questions about them at the rates measured at shipping; `dlm generate`
draws a caption to a PNG and answers about a PNG/JPEG; batches change nothing; a seed fixes a sampled drawing."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

pytest.importorskip("PIL")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

import dlm  # noqa: E402
from dlm.builtin import builtin_path  # noqa: E402
from dlm.cli import app  # noqa: E402
from dlm.multimodal import DESCRIBE, ask, draw, render, scenes  # noqa: E402
from dlm.multimodal.evaluate import score_caption  # noqa: E402

NAME = "builtin-multimodal"
N = 48  # the first held-out scenes the rates below are counted on (greedy, so the counts are exact here)
CAPTIONS_FLOOR = 40  # 42 of the first 48 at shipping (82.8 % of all 302 held-out scenes)
VQA_FLOOR = 46  # 48 of the first 48 questions at shipping (100 % of all 1,222)


@pytest.fixture(scope="module")
def lm():
    return dlm.load(NAME)


def test_the_shipped_model_is_small_bf16_and_keeps_its_image_tokenizer(lm):
    folder = builtin_path(NAME)
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 20_000_000
    with safe_open(str(weights), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    assert (folder / "image_tokenizer" / "codebook.safetensors").is_file()
    itok = lm.image_tokenizer
    assert (itok.size, itok.tokens_per_image) == (32, 16)
    assert not lm.is_causal and lm.model.config.attention == "bidirectional"
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["objective"] == "diffusion"
    assert summary["run_config"]["data"]["train"] == ["data/multimodal/train.jsonl"]


def test_it_captions_and_answers_about_held_out_pictures_at_the_measured_rate(lm):
    test = scenes("test")[:N]
    pictures = [render(s, 32) for s in test]
    captions = ask(lm, pictures, DESCRIBE, temperature=0.0)
    right = sum(score_caption(c.text, s)["correct"] for c, s in zip(captions, test))
    assert right >= CAPTIONS_FLOOR, [c.text for c in captions]
    qa = [(render(s, 32), q, a) for s in test for q, a in s.questions()][:N]
    answers = ask(lm, [p for p, _, _ in qa], [q for _, q, _ in qa], temperature=0.0)
    assert sum(a.text.strip().lower() == t for a, (_, _, t) in zip(answers, qa)) >= VQA_FLOOR


def test_batches_change_nothing_and_a_seed_fixes_a_sampled_drawing(lm):
    caps = [s.caption() for s in scenes("test")[:4]]
    together = draw(lm, caps, temperature=0.0)
    for cap, (picture, o) in zip(caps, together):
        alone_picture, alone = draw(lm, cap, temperature=0.0)[0]
        assert o.tokens == alone.tokens and np.array_equal(np.asarray(picture), np.asarray(alone_picture))
    # sampled at temperature 1: the same seed draws the same pictures; another seed others (measured at shipping:
    # seeds 0 and 3 differ on two of these four captions; the model is sure of most codes)
    a, b, c = ([o.tokens for _, o in draw(lm, caps, temperature=1.0, seed=s)] for s in (0, 0, 3))
    assert a == b
    assert a != c


def test_dlm_generate_draws_a_png_and_answers_about_a_jpeg(tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "out.png"
    r = run(app, ["generate", "--model", NAME, "a red circle above a blue square", "--image-out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["image"] == str(out)
    with Image.open(out) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (32, 32), "RGB")
    scene = next(s for s in scenes("test") if len(s.shapes) == 2 and "circle" in s.caption())
    render(scene, 200).save(tmp_path / "in.jpg")  # any size and format: resized to the model's 32 x 32
    colour = next(sh.colour for sh in scene.shapes if sh.shape == "circle")
    r = run(app, ["generate", "--model", NAME, "--image", str(tmp_path / "in.jpg"), "What colour is the circle?",
                  "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["text"].strip() == colour
