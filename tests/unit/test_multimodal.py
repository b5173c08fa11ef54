"""Issue 20's first pieces: rendered scenes (captions and answers the picture decides, a split by scene) and the VQ
image tokenizer (round trip within its measured error, save/load, any picture resized, bad input named)."""

import io

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

from dlm.errors import CheckpointError, InputError  # noqa: E402
from dlm.multimodal import ImageTokenizer, Scene, Shape, all_scenes, digits, render, scenes  # noqa: E402
from dlm.multimodal.scenes import BACKGROUND, COLOURS  # noqa: E402


def test_scenes_captions_answers_and_split():
    both = Scene((Shape("circle", "red", 0), Shape("square", "blue", 2)))
    assert both.caption() == "a red circle above a blue square"
    pair = lambda a, b: Scene((Shape("circle", "red", a), Shape("square", "blue", b))).caption()  # noqa: E731
    assert pair(1, 0) == "a red circle right of a blue square" and pair(0, 3) == "a red circle and a blue square"
    assert dict(both.questions()) == {"What colour is the circle?": "red", "What shape is red?": "circle",
                                      "What colour is the square?": "blue", "What shape is blue?": "square",
                                      "How many shapes are there?": "two"}  # fmt: skip
    same = Scene((Shape("circle", "red", 0), Shape("circle", "blue", 1)))
    assert "What colour is the circle?" not in dict(same.questions())  # two circles: the picture does not decide
    # 48 single shapes; a pair: any of 48, then one of 12 kinds in one of 3 other cells, not the same kind: 33
    assert len(all_scenes()) == 48 + 48 * 33
    train, test = scenes("train"), scenes("test")
    assert len(train) + len(test) == len(all_scenes()) and not set(train) & set(test) and 0.15 < len(test) / 1632 < 0.25
    pictures = lambda ss: {frozenset(s.shapes) for s in ss}  # noqa: E731
    assert not pictures(train) & pictures(test)  # both captions of a picture fall on one side
    assert scenes("test", 5, seed=1) == scenes("test", 5, seed=1) != scenes("test", 5, seed=2)
    with pytest.raises(InputError, match="split"):
        scenes("valid")


def test_render_draws_each_shape_in_its_cell():
    img = np.asarray(render(Scene((Shape("square", "green", 3), Shape("circle", "yellow", 0))), 32))
    assert img.shape == (32, 32, 3)
    assert tuple(img[24, 24]) == COLOURS["green"] and tuple(img[8, 8]) == COLOURS["yellow"]
    assert tuple(img[8, 24]) == BACKGROUND and tuple(img[0, 0]) == BACKGROUND
    with pytest.raises(InputError, match="size"):
        render(scenes("train", 1)[0], 7)


@pytest.fixture(scope="module")
def tokenizer():
    images = [render(s) for s in scenes("train")] + [im for im, _ in digits("train")]
    return ImageTokenizer.fit(images, size=32, patch=4, codes=96, seed=0)


def test_tokenizer_round_trips_held_out_pictures_within_its_measured_error(tokenizer, tmp_path):
    """Measured at writing (96 codes of 4 x 4 patches, 64 tokens a picture): held-out scenes MAE 0.45 / 255 per
    channel (PSNR 32.0 dB), held-out digits exact (their 17 grey levels are codes); the bounds sit above."""
    test = [render(s) for s in scenes("test")]
    err = tokenizer.error(test)
    assert err["mae"] < 1.0 and err["psnr"] > 30
    assert tokenizer.error([im for im, _ in digits("test")])["mae"] < 0.5
    ids = tokenizer.encode(test[0])
    assert len(ids) == tokenizer.tokens_per_image == 64 and all(0 <= i < 96 for i in ids)
    png = io.BytesIO()
    tokenizer.decode(ids).save(png, format="PNG")
    back = Image.open(io.BytesIO(png.getvalue()))
    assert back.format == "PNG" and back.size == (32, 32) and back.mode == "RGB"
    loaded = ImageTokenizer.load(tokenizer.save(tmp_path / "tok"))
    assert loaded.encode(test[0]) == ids and loaded.fit_error == tokenizer.fit_error
    big = render(scenes("test")[0], 96).resize((100, 60))  # any picture is resized to the tokenizer's size
    big.save(tmp_path / "in.png")
    assert len(loaded.encode(tmp_path / "in.png")) == 64


def test_tokenizer_fit_is_deterministic_and_bad_input_is_named(tokenizer, tmp_path):
    few = [render(s) for s in scenes("train", 200)]
    a = ImageTokenizer.fit(few, codes=32, seed=3)
    b = ImageTokenizer.fit(few, codes=32, seed=3)
    assert np.array_equal(a.codebook, b.codebook)
    with pytest.raises(InputError, match="codes: got 4096"):
        ImageTokenizer.fit(few, codes=4096)
    with pytest.raises(InputError, match="patch"):
        ImageTokenizer.fit(few, size=32, patch=5)
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(InputError, match="image"):
        tokenizer.encode(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="ids"):
        tokenizer.decode([0] * 10)
    with pytest.raises(InputError, match="ids"):
        tokenizer.decode([96] * 64)
    with pytest.raises(CheckpointError, match="not an image tokenizer"):
        ImageTokenizer.load(tmp_path)


def test_one_vocabulary_for_text_and_pictures(tokenizer, tmp_path):
    """Image codes are single ids after the text vocabulary; text encodes as before; a picture round-trips through
    token ids (also inside a chat); the tokenizer saves and loads with them."""
    from dlm.multimodal import IMAGE_BEGIN, image_codes, image_text, with_image_tokens
    from dlm.tokenizer import DLMTokenizer, train_tokenizer

    (tmp_path / "a.txt").write_text("a red circle above a blue square\nWhat colour is the circle? red\n" * 50)
    text = train_tokenizer([tmp_path / "a.txt"], vocab_size=300)
    mm = with_image_tokens(text, 96)
    assert mm.vocab_size == text.vocab_size + 98 and mm.token_to_id(IMAGE_BEGIN) == text.vocab_size
    assert mm.encode("a red circle above") == text.encode("a red circle above")
    codes = tokenizer.encode(render(scenes("test", 1)[0]))
    ids = mm.encode("draw: " + image_text(codes))
    assert len(ids) == len(mm.encode("draw: ")) + 66 and image_codes(mm, ids, 64) == codes
    chat = mm.apply_chat_template([{"role": "user", "content": image_text(codes) + " describe the picture"}],
                                  add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert image_codes(mm, mm.encode(chat), 64) == codes
    assert image_codes(mm, ids[:-1], 64) is None and image_codes(mm, mm.encode("no picture"), 64) is None
    # training text is encoded with parse_special=False (a "<|eos|>" in data stays text), and a picture must still
    # be its codes there: an SFT answer that draws is <|boi|> + 64 codes + <|eoi|> + EOS, 67 tokens
    assert mm.encode(image_text(codes), parse_special=False) == mm.encode(image_text(codes))
    prompt, answer = mm.sft_example([{"role": "user", "content": "draw: a red circle"},
                                     {"role": "assistant", "content": image_text(codes)}])  # fmt: skip
    assert len(answer) == 67 and image_codes(mm, answer, 64) == codes
    assert mm.encode("<|eos|>", parse_special=False) != [mm.eos_token_id]  # control tokens in data stay text
    mm.save(tmp_path / "mm")
    assert DLMTokenizer.from_dir(tmp_path / "mm").encode(image_text(codes)) == mm.encode(image_text(codes))
    assert with_image_tokens(mm, 96).vocab_size == mm.vocab_size  # adding twice adds nothing


def test_sft_chats_cover_every_kind_with_whole_pictures(tokenizer, tmp_path):
    import json

    from dlm.multimodal import KINDS, image_text, write_sft

    counts = write_sft(tmp_path / "test.jsonl", tokenizer, "test")
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    n = len(scenes("test"))
    assert set(counts) == set(KINDS) and counts["draw"] == counts["describe"] == counts["text"] == n
    assert counts["vqa"] == sum(len(s.questions()) for s in scenes("test")) and counts["digit"] == len(digits("test"))
    assert len(rows) == sum(counts.values())
    draw = next(r for r in rows if r["kind"] == "draw")
    caption = draw["messages"][0]["content"].removeprefix("draw: ")
    scene = next(s for s in scenes("test") if s.caption() == caption)
    assert draw["messages"][1]["content"] == image_text(tokenizer.encode(render(scene)))
    digit = next(r for r in rows if r["kind"] == "digit")
    assert digit["messages"][1]["content"] in set("0123456789")
