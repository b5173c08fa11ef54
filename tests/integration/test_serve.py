"""`dlm serve`: a real uvicorn server on 127.0.0.1 with the built-in model, driven by the real `openai` client
and by raw HTTP."""

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import dlm  # noqa: E402
from dlm.serve import create_app  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, lm, **kw):
        self.port = _free_port()
        self.app = create_app(lm, **kw)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.engine.shutdown()


@pytest.fixture(scope="module")
def lm():
    return dlm.load("builtin")


@pytest.fixture(scope="module")
def server(lm):
    s = Server(lm, model_name="builtin", max_batch=8, max_queue=64)
    yield s
    s.stop()


def _client(server, key="none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_openai_client_completions_chat_and_streams(server, lm):
    c = _client(server)
    assert [m.id for m in c.models.list().data] == ["builtin"]
    r = c.completions.create(model="builtin", prompt="def fibonacci(n):", max_tokens=24, seed=0)
    text = r.choices[0].text
    assert r.object == "text_completion" and text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0 and r.usage.model_extra["nfe"] > 0
    chunks = list(c.completions.create(model="builtin", prompt="def fibonacci(n):", max_tokens=24, seed=0, stream=True))
    assert len(chunks) >= 2 and "".join(ch.choices[0].text for ch in chunks) == text  # prefix-final pieces
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    ch = c.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "Write a loop."}],
                                   max_tokens=16, seed=0)  # fmt: skip
    assert ch.choices[0].message.role == "assistant" and isinstance(ch.choices[0].message.content, str)
    parts = list(c.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "Write a loop."}],
                                           max_tokens=16, seed=0, stream=True))  # fmt: skip
    assert "".join(p.choices[0].delta.content or "" for p in parts) == ch.choices[0].message.content
    two = c.completions.create(model="builtin", prompt="import os\n", max_tokens=8, n=2, seed=1, temperature=1.0)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == len(lm.tokenizer.encode_prompt("import os\n"))


def test_a_request_gives_the_same_text_alone_and_batched(server):
    c = _client(server)
    prompts = ["def add(a, b):", "class Stack:", "import sys\n", "for i in range(10):", "def read(path):"]
    kw = dict(model="builtin", max_tokens=32, seed=0, extra_body={"policy": "threshold", "threshold": 0.9})
    alone = [c.completions.create(prompt=p, **kw).choices[0].text for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as ex:  # all at once: they share denoising steps
        together = list(ex.map(lambda p: c.completions.create(prompt=p, **kw).choices[0].text, prompts))
    assert together == alone
    sampled = dict(kw, temperature=0.8, seed=7)
    a = c.completions.create(prompt=prompts[0], **sampled).choices[0].text
    with ThreadPoolExecutor(3) as ex:
        b = list(ex.map(lambda p: c.completions.create(prompt=p, **sampled).choices[0].text, prompts[:3]))
    assert b[0] == a


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "gpt-9", "prompt": "x"}, 404, "model"),
        ({"model": "builtin", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "builtin", "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
        ({"model": "builtin", "prompt": "x", "policy": "psychic"}, 400, "policy"),
        ({"model": "builtin", "prompt": "x", "cache": "disk"}, 400, "cache"),
        ({"model": "builtin", "prompt": "x", "cache": "block"}, 400, "cache"),  # not a block-causal model
        ({"model": "builtin", "prompt": "x", "temperature": 9}, 400, "temperature"),
        ({"model": "builtin", "prompt": "x " * 2000}, 400, "prompt"),
        ({"model": "builtin", "prompt": 5}, 400, "prompt"),
        ({"model": "builtin"}, 400, "prompt"),
        ({"model": "builtin", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "builtin", "prompt": "x", "whatever": 1}, 400, "whatever"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, body, status, param):
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] is not None and err["param"].split(".")[0] == param, err


def test_malformed_json_and_bad_chat(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "builtin", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "builtin", "messages": [{"role": "robot"}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")


def test_denoise_stream_shows_masks_then_the_text(server):
    frames = []
    with httpx.stream("POST", server.url + "/v1/dlm/denoise", json={"model": "builtin", "prompt": "import os\n",
                                                                      "max_tokens": 8, "seed": 0}) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    steps, last = frames[:-1], frames[-1]
    assert last["done"] and isinstance(last["text"], str) and last["nfe"] >= 1
    assert steps and steps[0]["masked"] > steps[-1]["masked"] and None in steps[0]["tokens"]


def test_health_and_metrics(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "builtin"
    m = httpx.get(server.url + "/metrics").text
    for name in ("dlm_requests_total", "dlm_queue_depth", "dlm_batch_size", "dlm_step_latency_seconds_bucket",
                 "dlm_generated_tokens_total", "dlm_request_nfe_bucket"):  # fmt: skip
        assert name in m


def test_api_key_required_when_set(lm):
    s = Server(lm, model_name="builtin", api_key="sekret")
    try:
        with pytest.raises(openai.AuthenticationError):
            _client(s, key="wrong").models.list()
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert [m.id for m in _client(s, key="sekret").models.list().data] == ["builtin"]
        assert httpx.get(s.url + "/health").status_code == 200  # health stays open for probes
    finally:
        s.stop()


def test_full_queue_answers_429_and_a_disconnected_stream_stops(lm):
    s = Server(lm, model_name="builtin", max_batch=1, max_queue=1)
    body = {"model": "builtin", "prompt": "def f(x):", "max_tokens": 960, "stream": True, "ignore_eos": True}
    quick = dict(body, stream=False, max_tokens=8)
    try:
        with ThreadPoolExecutor(3) as ex:
            with httpx.Client(timeout=120) as h:
                with h.stream("POST", s.url + "/v1/completions", json=body) as r:  # occupies the only batch slot
                    lines = r.iter_lines()  # keep the iterator: dropping it closes the response (a disconnect)
                    next(lines)
                    futs = [ex.submit(httpx.post, s.url + "/v1/completions", json=quick, timeout=120) for _ in range(3)]
                    t0 = time.time()
                    while sum(f.done() for f in futs) < 2 and time.time() - t0 < 30:
                        time.sleep(0.05)
                    done = [f.result() for f in futs if f.done()]
                    assert len(done) == 2 and all(x.status_code == 429 for x in done), [x.text for x in done]
                    assert all(x.headers.get("retry-after") for x in done)
                # leaving the block closes the stream: the client disconnected 1 / 960 of the way in
            queued = next(f for f in futs if f not in [g for g in futs if g.done() and g.result().status_code == 429])
            assert queued.result().status_code == 200  # the queued request ran once the slot was freed
        deadline = time.time() + 20
        while time.time() < deadline and httpx.get(s.url + "/health").json()["running"]:
            time.sleep(0.1)
        h = httpx.get(s.url + "/health").json()
        assert h["running"] == 0 and h["queue"] == 0
        m = httpx.get(s.url + "/metrics").text
        assert 'status="429"' in m and 'status="cancelled"' in m
    finally:
        s.stop()


def test_a_block_diffusion_model_serves_with_its_exact_cache_batched_as_alone():
    """A block-causal model behind the server: its own aligned blocks and cache="block"; requests that share
    denoising steps (joining and leaving) give the text each gives alone."""
    from dlm.sampling import GenerationConfig
    from dlm.builtin import builtin_path
    from dlm.tokenizer import DLMTokenizer
    from tests.conftest import tiny_lm

    tok = DLMTokenizer.from_dir(builtin_path("builtin"))
    gen = GenerationConfig(gen_length=16, steps=16, block_length=4, cache="block", policy="threshold")
    block = tiny_lm(tok, "block_causal", max_seq_len=256, gen=gen)
    block.model.config.block_size = 4
    s = Server(block, model_name="block", max_batch=4, max_queue=16)
    try:
        c = _client(s)
        prompts = ["def add(a, b):", "class Stack:", "import sys\n", "for i in range(10):", "x = 1"]
        kw = dict(model="block", max_tokens=12, seed=0)
        alone = [c.completions.create(prompt=p, **kw).choices[0].text for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as ex:
            together = list(ex.map(lambda p: c.completions.create(prompt=p, **kw).choices[0].text, prompts))
        assert together == alone
        r = httpx.post(s.url + "/v1/completions", json={**kw, "prompt": "x", "cache": "dual"}, timeout=30)
        assert r.status_code == 200  # dual is exact for block-causal models too
    finally:
        s.stop()


def test_structured_output_through_the_openai_client(server):
    c = _client(server)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
              "maximum": 99}}, "required": ["ok", "n"], "additionalProperties": False}  # fmt: skip
    r = c.chat.completions.create(
        model="builtin", messages=[{"role": "user", "content": "a flag and a number"}], max_tokens=32,
        response_format={"type": "json_schema", "json_schema": {"name": "flag", "schema": schema}},
    )  # fmt: skip
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"ok", "n"} and isinstance(obj["ok"], bool) and 0 <= obj["n"] <= 99
    r = c.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "config"}], max_tokens=48,
                                  response_format={"type": "json_object"}, seed=1, temperature=0.7)  # fmt: skip
    assert r.choices[0].finish_reason == "length" or isinstance(json.loads(r.choices[0].message.content), dict)
    # vLLM's extras, streamed: the chunks add up to a full match
    stream = c.completions.create(model="builtin", prompt="id = ", max_tokens=16, stream=True,
                                  extra_body={"guided_regex": "[a-z]{2,5}-[0-9]{2}"})  # fmt: skip
    text = "".join(ch.choices[0].text for ch in stream)
    assert re.fullmatch("[a-z]{2,5}-[0-9]{2}", text), text
    r = c.completions.create(model="builtin", prompt="answer: ", max_tokens=8,
                             extra_body={"guided_grammar": 'start: "yes" | "no"'})  # fmt: skip
    assert r.choices[0].text in ("yes", "no")
    r = c.completions.create(model="builtin", prompt="def f", max_tokens=16,
                             extra_body={"template": "(a, b):\n    return <|mask|><|mask|><|mask|>"})  # fmt: skip
    assert r.choices[0].text.startswith("(a, b):\n    return ")


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"guided_regex": "(["}, "guided_regex"),
        ({"guided_grammar": "start: nothing"}, "guided_grammar"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objec"}}}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
        ({"template": "x" * 200}, "template"),
        ({"guided_regex": "[0-9]+", "remask": 1}, "remask"),
    ],
)
def test_bad_structured_output_gets_a_400_naming_the_field(server, extra, param):
    r = httpx.post(server.url + "/v1/completions", json={"model": "builtin", "prompt": "x", "max_tokens": 8, **extra},
                   timeout=30)  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param, r.json()


def test_the_ar_twin_serves_structured_output():
    s = Server(dlm.load("builtin-ar"), model_name="builtin-ar")
    try:
        r = _client(s).completions.create(model="builtin-ar", prompt="v", max_tokens=8,
                                          extra_body={"guided_regex": "[0-9]{4}"})  # fmt: skip
        assert re.fullmatch("[0-9]{4}", r.choices[0].text), r.choices[0].text
    finally:
        s.stop()


def test_a_causal_model_that_drafts_serves_its_greedy_text_in_fewer_forwards():
    """A causal model whose generation_config sets draft_block: the server decodes it self-speculatively (the AR
    twin drafts badly but sometimes right), the text is its one-token-per-forward greedy text, alone or batched."""
    import dataclasses

    lm = dlm.load("builtin-ar")
    prompts = ["import os\nimport os\nimport os\n", "def fibonacci(n):", "x = 1"]  # the first repeats: drafts hit
    want = [o.text for o in lm.generate(prompts, gen_length=48)]
    lm.generation_config = dataclasses.replace(lm.generation_config, draft_block=3)
    s = Server(lm, model_name="drafts", max_batch=4, max_queue=16)
    try:
        c = _client(s)
        kw = dict(model="drafts", max_tokens=48, temperature=0.0)
        alone = [c.completions.create(prompt=p, **kw) for p in prompts]
        assert [r.choices[0].text for r in alone] == want
        assert alone[0].usage.model_extra["nfe"] < alone[0].usage.completion_tokens  # drafts were accepted
        with ThreadPoolExecutor(len(prompts)) as ex:
            together = list(ex.map(lambda p: c.completions.create(prompt=p, **kw).choices[0].text, prompts))
        assert together == want
    finally:
        s.stop()
