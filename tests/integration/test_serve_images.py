"""Pictures through `dlm serve` (issue 20): a tiny random multimodal model on a real uvicorn server, driven by the real
`openai` client and raw HTTP. A picture sent as an `image_url` part gets the answer `ask` gives in process; a
drawing (`modalities: ["image"]`) is the picture `draw` gives; /v1/dlm/denoise with `image` sends every frame's
partial picture; bad pictures and text-only models get a 400 naming the field."""

import base64
import io
import json

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("PIL")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

import dlm  # noqa: E402
from dlm.multimodal import ImageTokenizer, ask, draw, render, scenes, with_image_tokens  # noqa: E402
from dlm.multimodal.generation import picture_message  # noqa: E402
from dlm.sampling import GenerationConfig  # noqa: E402
from dlm.serve.images import MASKED, MAX_IMAGE_BYTES  # noqa: E402
from dlm.tokenizer import train_tokenizer  # noqa: E402

from ..conftest import tiny_lm  # noqa: E402
from .test_serve import Server  # noqa: E402

MODEL = "tiny-mm"
QUESTION = "What colour is the circle?"
CAPTION = "a red circle above a blue square"


def multimodal_folder(root, attention: str = "bidirectional", pictures: bool = True):
    """A saved tiny random model (16 x 16 pictures, 4 x 4 patches, 16 codes) that `dlm.load` reads back with its
    image tokenizer; `pictures=False`: the same model without one (text only)."""
    (root / "a.txt").write_text(f"{CAPTION}\n{QUESTION} red\n" * 50)
    tok = with_image_tokens(train_tokenizer([root / "a.txt"], vocab_size=300), 16)
    lm = tiny_lm(tok, attention, gen=GenerationConfig(gen_length=8, steps=8))
    if pictures:
        lm.image_tokenizer = ImageTokenizer.fit([render(s) for s in scenes("train", 100)], size=16, patch=4, codes=16)
    return lm.save_pretrained(root / "model")


def png_url(image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(out.getvalue()).decode()


def from_url(url: str):
    """The picture of a data URL (the tests check the URL's prefix themselves)."""
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def has_masked_patch(image, patch: int = 4) -> bool:
    """Whether some patch of `image` is the grey checker the server draws for an undecided slot."""
    arr = np.asarray(image.convert("RGB"))
    checker = np.where((np.add.outer(np.arange(patch), np.arange(patch)) % 2)[..., None] == 0, *MASKED)
    return any(
        (arr[r : r + patch, q : q + patch] == checker).all()
        for r in range(0, arr.shape[0], patch)
        for q in range(0, arr.shape[1], patch)
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return multimodal_folder(tmp_path_factory.mktemp("mm"))


@pytest.fixture(scope="module")
def lm(folder):
    return dlm.load(folder)  # in process; the server has a copy of its own


@pytest.fixture(scope="module")
def server(folder):
    s = Server(dlm.load(folder), model_name=MODEL, max_body_bytes=12 << 20)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    s = Server(dlm.load(multimodal_folder(tmp_path_factory.mktemp("text"), pictures=False)), model_name=MODEL)
    yield s
    s.stop()


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def _ask(image, question=QUESTION, **kw):
    """A user message with a picture then a question, as OpenAI content parts."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(image, **kw)}},
                                         {"type": "text", "text": question}]}]  # fmt: skip


GREEDY = {"max_tokens": 16, "temperature": 0, "extra_body": {"steps": 16, "block_length": 16}}


def test_the_openai_client_asks_about_a_picture(server, lm):
    """The answer is `ask`'s in process (greedy, same settings): the picture reaches the model as its image tokens,
    exactly as `picture_message` writes them, and the answer holds no image tokens."""
    image = render(scenes("test", 1)[0])
    r = _client(server).chat.completions.create(model=MODEL, messages=_ask(image), **GREEDY)
    want = ask(lm, image, QUESTION, gen_length=16, steps=16, block_length=16, temperature=0)[0]
    assert r.choices[0].message.content == want.text
    as_text = [{"role": "user", "content": picture_message(lm, image, QUESTION)}]
    assert r.usage.prompt_tokens == len(lm.tokenizer.encode(lm.tokenizer.apply_chat_template(
        as_text, add_generation_prompt=True, tokenize=False)))  # fmt: skip
    same = _client(server).chat.completions.create(model=MODEL, messages=as_text, **GREEDY)
    assert same.choices[0].message.content == want.text
    jpeg = _client(server).chat.completions.create(model=MODEL, messages=_ask(image, fmt="JPEG"), **GREEDY)
    assert isinstance(jpeg.choices[0].message.content, str) and jpeg.choices[0].finish_reason in ("stop", "length")


def test_the_openai_client_gets_a_drawing(server, lm):
    """`modalities: ["image"]`: message.images holds a PNG of the model's size, the picture `draw` gives in
    process with the same seed; n = 2 gives two pictures, seeded seed and seed + 1."""
    c = _client(server)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": CAPTION}], seed=3, temperature=0,
                                  extra_body={"modalities": ["image"]})  # fmt: skip
    message = r.choices[0].message
    (image,) = message.model_extra["images"]
    assert image["type"] == "image_url" and message.content == "" and r.choices[0].finish_reason == "stop"
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    picture = from_url(image["image_url"]["url"])
    assert picture.format == "PNG" and picture.size == (16, 16)
    want = draw(lm, CAPTION, seed=3, temperature=0)[0][0]
    assert picture.convert("RGB").tobytes() == want.tobytes()
    two = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": CAPTION}], seed=5, n=2,
                                    temperature=1.0, extra_body={"modalities": ["image", "text"]})  # fmt: skip
    got = [from_url(ch.message.model_extra["images"][0]["image_url"]["url"]).convert("RGB") for ch in two.choices]
    want = [draw(lm, CAPTION, seed=s, temperature=1.0)[0][0] for s in (5, 6)]
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want]


def test_denoise_sends_the_picture_of_every_frame(server, lm):
    """`image: true`: every frame carries the partial picture (undecided patches as the grey checker, fewer each
    step), the text fields stay, and the last event carries the finished picture: `draw`'s."""
    events = []
    body = {"model": MODEL, "prompt": CAPTION, "image": True, "seed": 2, "temperature": 0, "steps": 16}
    with httpx.stream("POST", server.url + "/v1/dlm/denoise", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    frames, last = events[:-1], events[-1]
    assert all("tokens" in f and f["image"].startswith("data:image/png") for f in frames)
    assert [f["masked"] for f in frames] == list(range(15, 0, -1))  # a patch a step; the last step is the end
    first = from_url(frames[0]["image"])
    assert first.size == (16, 16) and has_masked_patch(first)
    assert last["done"] and last["steps"] == 16 and not has_masked_patch(from_url(last["image"]))
    want = draw(lm, CAPTION, seed=2, temperature=0, steps=16)[0][0]
    assert from_url(last["image"]).convert("RGB").tobytes() == want.tobytes()


def _png(size) -> str:
    return png_url(Image.new("RGB", size, (200, 30, 30)))


def _part(url):
    return {"type": "image_url", "image_url": {"url": url}}


URL, DETAIL = "messages[0].content[0].image_url.url", "messages[0].content[0].image_url.detail"
BAD = [
    ([_part("https://example.com/cat.png")], {}, URL),
    ([_part("data:image/gif;base64,R0lGODlhAQABAAAAACw=")], {}, URL),
    ([_part("data:image/png;base64,not base64!")], {}, URL),
    ([_part("data:image/png;base64," + base64.b64encode(b"just some bytes").decode())], {}, URL),
    ([_part(_png((16, 16))[:-40])], {}, URL),  # a truncated PNG
    ([_part(_png((3000, 3000)))], {}, URL),  # 9 megapixels, from a ~30 KB PNG: refused from its header
    ([_part("data:image/png;base64," + "A" * MAX_IMAGE_BYTES)], {}, URL),
    ([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], {}, "messages[0].content[0].type"),
    ([{"type": "image_url"}], {}, "messages[0].content[0].image_url"),
    ([{"type": ["image_url"]}], {}, "messages[0].content[0].type"),
    ([{"type": "image_url", "image_url": {"url": _png((8, 8)), "detail": "ultra"}}], {}, DETAIL),
    ([{"type": "text", "text": "hi", "colour": "red"}], {}, "messages[0].content[0].colour"),
    ([_part(_png((8, 8)))] * 8, {}, "messages"),  # 8 pictures of 18 tokens: more than the context of 128
    (5, {}, "messages.0.content"),
    ([5], {}, "messages.0.content"),
    (CAPTION, {"modalities": ["image"], "stream": True}, "stream"),
    (CAPTION, {"modalities": ["video"]}, "modalities.0"),
    (CAPTION, {"modalities": ["image"], "response_format": {"type": "json_object"}}, "response_format"),
    (CAPTION, {"modalities": ["image"], "steps": 99}, "steps"),
    ([_part(_png((8, 8))), {"type": "text", "text": "draw it"}], {"modalities": ["image"]}, "messages[0].content"),
]


@pytest.mark.parametrize("content, extra, param", BAD)
def test_bad_pictures_get_a_400_naming_the_field(server, content, extra, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == param, r.json()


def test_bad_denoise_pictures_get_a_400_and_the_server_keeps_serving(server, text_server):
    r = httpx.post(server.url + "/v1/dlm/denoise", json={"model": MODEL, "prompt": CAPTION, "image": True,
                                                          "suffix": "x"}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
    r = httpx.post(text_server.url + "/v1/dlm/denoise", json={"model": MODEL, "prompt": CAPTION, "image": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_a_text_only_model_refuses_pictures(text_server):
    c = _client(text_server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=_ask(Image.new("RGB", (16, 16))), max_tokens=4)
    assert e.value.body["param"] == "messages[0].content[0]" and "no image tokenizer" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": CAPTION}], max_tokens=4,
                                  extra_body={"modalities": ["image"]})  # fmt: skip
    assert e.value.body["param"] == "modalities"
    text = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]}], max_tokens=4)  # fmt: skip
    assert isinstance(text.choices[0].message.content, str)


def test_the_ar_twin_draws_and_reads_pictures_through_the_server(tmp_path):
    """The causal path of the engine takes the drawing's template and processors too."""
    folder = multimodal_folder(tmp_path, "causal")
    lm, s = dlm.load(folder), Server(dlm.load(folder), model_name=MODEL)
    try:
        c = _client(s)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": CAPTION}], seed=1,
                                      temperature=0, extra_body={"modalities": ["image"]})  # fmt: skip
        picture = from_url(r.choices[0].message.model_extra["images"][0]["image_url"]["url"])
        assert picture.convert("RGB").tobytes() == draw(lm, CAPTION, seed=1, temperature=0)[0][0].tobytes()
        image = render(scenes("test", 1)[0])
        answer = c.chat.completions.create(model=MODEL, messages=_ask(image), max_tokens=8, temperature=0)
        assert answer.choices[0].message.content == ask(lm, image, QUESTION, gen_length=8, temperature=0)[0].text
    finally:
        s.stop()
