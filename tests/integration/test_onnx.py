"""ONNX export (`dlm.hub.onnx_export`) and the onnxruntime backend (`dlm.hub.onnx_runtime`): the same logits as
the torch network (max abs difference <= TOL in float32), the same cache contents, and the same greedy tokens
from the same sampler loops."""

import json
import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import dlm  # noqa: E402
from dlm.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from dlm.hub import DiffusionLM  # noqa: E402
from dlm.hub.onnx_export import GRAPHS, export_onnx  # noqa: E402
from dlm.hub.onnx_runtime import DECODER_ONNX, MODEL_ONNX, OnnxDenoiser  # noqa: E402
from dlm.model import CanvasCache, KVCache, ModelConfig, Transformer  # noqa: E402
from dlm.sampling import GenerationConfig, generate  # noqa: E402
from dlm.sampling.autoregressive import generate_autoregressive  # noqa: E402
from dlm.tokenizer import train_tokenizer  # noqa: E402

TOL = 1e-4  # max abs logit difference, float32 (measured: about 1e-6 on the tiny nets, 1.5e-5 on the built-ins)
ATTENTIONS = ("bidirectional", "causal", "block_causal")


@pytest.fixture(autouse=True)
def _threads():
    """One thread for torch and for the ONNX Runtime sessions (which take torch's count): the file's budget is
    about a minute on one core."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "a.txt").write_text("def add(a, b):\n    return a + b\n" * 50 + "import os\nprint(os.getcwd())\n" * 50)
    return train_tokenizer([d / "a.txt"], vocab_size=300)


def _net(tok, attention="bidirectional", state=None) -> Transformer:
    """A tiny network (d_model 64, 2 layers, GQA); weights sharpened so that greedy choices are clear-cut."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                      attention=attention, block_size=4, mask_token_id=tok.mask_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    m = Transformer(cfg).eval()
    if state is not None:
        m.load_state_dict(state)
    else:
        for p in m.parameters():
            if p.dim() > 1:
                p.data.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def tiny(tok, tmp_path_factory):
    """(torch network, export folder), exported once. The decoder graph holds no attention kind (the mask is its
    input), so this one export serves every attention kind."""
    m = _net(tok)
    lm = DiffusionLM(m, tok, GenerationConfig(gen_length=16, steps=16))
    return m, export_onnx(lm, tmp_path_factory.mktemp("onnx") / "tiny")


def _pair(tok, tiny, attention):
    """(torch network, OnnxDenoiser) of the tiny export's weights with `attention`."""
    m, folder = tiny
    net = _net(tok, attention, m.state_dict())
    return net, OnnxDenoiser(folder, net.config, threads=1)


def _batch(tok):
    """Three rows, left-padded to 9 slots."""
    rows = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35]]
    x = torch.full((3, 9), tok.pad_token_id)
    am = torch.zeros(3, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, 9 - len(r) :], am[i, 9 - len(r) :] = torch.tensor(r), 1
    return x, am


def _diff(a, b) -> float:
    """Max abs difference of two logit (or K/V) tensors; inf when their shapes differ."""
    return float((a - b).abs().max()) if a.shape == b.shape else float("inf")


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_logits_match_torch_with_left_padding(tok, tiny, attention, tmp_path):
    net, onnx = _pair(tok, tiny, attention)
    x, am = _batch(tok)
    with torch.no_grad():
        assert _diff(onnx(x, attention_mask=am), net(x, attention_mask=am)) <= TOL
        assert _diff(onnx(x), net(x)) <= TOL
        idx = torch.tensor([[8, 7], [8, 6], [3, 8]])
        kw = {"attention_mask": am, "logits_index": idx}
        assert _diff(onnx(x, **kw), net(x, **kw)) <= TOL
        # model.onnx, the plain forward: its mask rule is traced in, so one export per attention kind
        folder = tiny[1] if attention == "bidirectional" else export_onnx(net, tmp_path / "m", graphs=[MODEL_ONNX])
        import onnxruntime as ort

        plain = ort.InferenceSession(str(folder / MODEL_ONNX), providers=["CPUExecutionProvider"])
        (logits,) = plain.run(None, {"input_ids": x.numpy(), "attention_mask": am.numpy()})
        assert _diff(torch.from_numpy(logits), net(x, attention_mask=am)) <= TOL


def _run(models, caches, *args, **kw):
    """Each model's forward with its own cache."""
    return [m(*args, **kw, cache=c) for m, c in zip(models, caches)]


def _cache_diff(a: KVCache, b: KVCache) -> float:
    """Max abs difference over every stored K/V tensor of two caches; inf when they hold different layers."""
    if sorted(a.keys) != sorted(b.keys) or not a.keys:
        return float("inf")
    return max(max(_diff(a.keys[i], b.keys[i]), _diff(a.values[i], b.values[i])) for i in a.keys)


def test_kv_cache_appends_match_torch(tok, tiny):
    net, onnx = _pair(tok, tiny, "causal")
    x, am = _batch(tok)
    caches = KVCache(), KVCache()
    with torch.no_grad():
        last = torch.full((3, 1), 8)
        assert _diff(*_run((net, onnx), caches, x, attention_mask=am, logits_index=last)) <= TOL
        for step, width in enumerate((1, 1, 2, 1)):
            new = torch.randint(4, tok.vocab_size, (x.shape[0], width), generator=torch.Generator().manual_seed(step))
            am = torch.cat([am, torch.ones_like(new)], dim=1)
            assert _diff(*_run((net, onnx), caches, new, attention_mask=am)) <= TOL
            assert _cache_diff(*caches) <= TOL
            if step == 1:  # a finished row leaves the batch
                keep = torch.tensor([0, 2])
                for c in caches:
                    c.select_rows(keep)
                am, x = am[keep], x[keep]
        for c in caches:  # a frozen cache attends to its keys but keeps them
            c.frozen = True
        am2 = torch.cat([am, torch.ones(2, 1, dtype=torch.long)], dim=1)
        assert _diff(*_run((net, onnx), caches, new[:2, :1], attention_mask=am2)) <= TOL
        assert _cache_diff(*caches) <= TOL


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_canvas_cache_refresh_window_rows_match_torch(tok, tiny, attention):
    net, onnx = _pair(tok, tiny, attention)
    x, am = _batch(tok)
    pos = am.cumsum(1).sub(1).clamp(min=0)
    slots = torch.tensor([[5, 6, 7, 8], [6, 7, 8, 8], [4, 5, 6, 7]])  # a padded window repeats its last slot
    caches = CanvasCache(9), CanvasCache(9)
    with torch.no_grad():
        assert _diff(*_run((net, onnx), [c.refresh() for c in caches], x, attention_mask=am)) <= TOL
        assert _cache_diff(*caches) <= TOL
        window = [c.window(slots) for c in caches]
        kw = {"attention_mask": am, "position_ids": pos.gather(1, slots)}
        assert _diff(*_run((net, onnx), window, x.gather(1, slots), **kw)) <= TOL
        assert _cache_diff(*caches) <= TOL
        rows = torch.tensor([0, 2])
        assert _diff(*_run((net, onnx), [c.refresh(rows) for c in caches], x[rows], attention_mask=am[rows])) <= TOL
        assert _cache_diff(*caches) <= TOL
        # the block cache's lazy store: a window writes first, its queries see keys below keys_upto only
        lazy = [CanvasCache(9, lazy=True).window(slots[:, :2], keys_upto=8) for _ in range(2)]
        ids, p = x.gather(1, slots[:, :2]), pos.gather(1, slots[:, :2])
        assert _diff(*_run((net, onnx), lazy, ids, attention_mask=am[:, :8], position_ids=p)) <= TOL
        assert _cache_diff(*lazy) <= TOL


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20]]


@pytest.mark.parametrize(
    "attention, cache, block",
    [("bidirectional", "none", 8), ("bidirectional", "prefix", 8), ("bidirectional", "dual", 8),
     ("block_causal", "dual", 8), ("block_causal", "block", 8)],
)  # fmt: skip
def test_diffusion_sampler_gives_the_same_greedy_tokens(tok, tiny, attention, cache, block):
    net, onnx = _pair(tok, tiny, attention)
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=block, cache=cache, stop_at_eos=False)
    a, b = generate(net, PROMPTS, cfg), generate(onnx, PROMPTS, cfg)
    assert a.sequences == b.sequences and a.nfe == b.nfe


def test_autoregressive_sampler_gives_the_same_greedy_tokens(tok, tiny):
    net, onnx = _pair(tok, tiny, "causal")
    cfg = GenerationConfig(gen_length=12, steps=12, stop_at_eos=False)
    assert generate_autoregressive(net, PROMPTS, cfg).sequences == generate_autoregressive(onnx, PROMPTS, cfg).sequences


HELD_OUT = ["def parse_header(line):", "for key, value in sorted(", "class Matrix:\n    def __init__(self,"]


@pytest.fixture(scope="module", params=["builtin-ar", "builtin"])
def builtin_pair(request, tmp_path_factory):
    """(torch DiffusionLM, its export), each built-in exported once; the diffusion one with decoder.onnx alone (the
    graph its sampler runs; model.onnx of a real network is checked on the AR twin), to keep this file fast."""
    lm = dlm.load(request.param)
    graphs = GRAPHS if request.param == "builtin-ar" else [DECODER_ONNX]
    return lm, export_onnx(lm, tmp_path_factory.mktemp("builtin") / request.param, graphs=graphs)


def test_builtin_export_gives_the_same_greedy_text(builtin_pair):
    lm, folder = builtin_pair
    onnx = dlm.load(folder, backend="onnxruntime")
    assert isinstance(onnx.model, OnnxDenoiser) and onnx.generation_config == lm.generation_config
    assert onnx.tokenizer.encode(HELD_OUT[0]) == lm.tokenizer.encode(HELD_OUT[0])
    want = [c.text for c in lm.generate(HELD_OUT, gen_length=16)]
    assert [c.text for c in onnx.generate(HELD_OUT, gen_length=16)] == want
    assert all(want)
    assert isinstance(dlm.load(folder).model, OnnxDenoiser)  # graphs and no safetensors: onnxruntime by itself
    record = json.loads((folder / "onnx_config.json").read_text())
    assert record["opset"] == 18 and all(g["exporter"] == "dynamo" for g in record["graphs"].values())
    if MODEL_ONNX in record["graphs"]:  # the plain forward of the real network
        import onnxruntime as ort

        x, am = (
            torch.tensor([[lm.tokenizer.pad_token_id, 5, 6, 7], [8, 9, 10, 11]]),
            torch.tensor([[0, 1, 1, 1], [1] * 4]),
        )
        plain = ort.InferenceSession(str(folder / MODEL_ONNX), providers=["CPUExecutionProvider"])
        (logits,) = plain.run(None, {"input_ids": x.numpy(), "attention_mask": am.numpy()})
        with torch.no_grad():
            assert _diff(torch.from_numpy(logits), lm.model(x, attention_mask=am)) <= TOL


@pytest.mark.parametrize("bits,floor", [(8, 0.9), (4, 0.8)])
def test_quantised_export_agrees_with_float_at_the_measured_rate(tmp_path, bits, floor):
    """ONNX Runtime's quantisers on the exported AR twin: measured at writing, teacher-forced argmax over 512 held-out
    tokens agrees with torch fp32 on 94.9 % (int8, 13.2 MB graph) and 87.7 % (int4, 8.4 MB) against 40 MB float;
    the floors sit below. The tied head is untied so the quantisers see it as a constant weight."""
    from ..conftest import PYTHON_CORPUS

    ref = dlm.load("builtin-ar")
    folder = export_onnx(ref, tmp_path / f"ar-int{bits}", graphs=[DECODER_ONNX], bits=bits)
    q = dlm.load(folder)
    text = (PYTHON_CORPUS / "json" / "decoder.py.txt").read_text()[:4000]
    ids = torch.tensor([ref.tokenizer.encode(text)[:512]])
    with torch.no_grad():
        agree = (q.model(ids).argmax(-1) == ref.model(ids).argmax(-1)).float().mean().item()
    assert agree >= floor
    assert (folder / DECODER_ONNX).stat().st_size < (0.4 if bits == 8 else 0.25) * 4 * ref.model.num_parameters()
    record = json.loads((folder / "onnx_config.json").read_text())["graphs"][DECODER_ONNX]["quantization"]
    assert record["bits"] == bits and record["method"].startswith("onnxruntime.")
    assert q.generate(HELD_OUT[0], gen_length=8)[0].text.strip()
    with pytest.raises(ConfigError) as e:
        export_onnx(ref, tmp_path / "x", bits=3)
    assert e.value.field == "bits"
    with pytest.raises(ConfigError) as e:
        export_onnx(ref, tmp_path / "x", bits=4, block_size=24)
    assert e.value.field == "block_size"


def test_bad_input_names_the_field(tok, tiny, tmp_path):
    with pytest.raises(ConfigError, match="no decoder.onnx; export it first") as e:
        dlm.load("builtin-ar", backend="onnxruntime")
    assert e.value.field == "backend"
    with pytest.raises(ConfigError, match="allowed: 'onnxruntime', 'torch'") as e:
        dlm.load("builtin-ar", backend="tensorrt")
    assert e.value.field == "backend"
    with pytest.raises(ConfigError, match="float32") as e:
        dlm.load(tiny[1], backend="onnxruntime", dtype="bf16")
    assert e.value.field == "dtype"
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(CheckpointError, match="config.json"):
        dlm.load(tmp_path)
    with pytest.raises(ConfigError, match="no decoder.onnx") as e:
        dlm.load(tmp_path, backend="onnxruntime")
    onnx = OnnxDenoiser(tiny[1], threads=1)
    x = torch.tensor([[5, 6]])
    for kw in ({"inputs_embeds": torch.zeros(1, 2, 64)}, {"return_hidden": True}):
        with pytest.raises(InputError) as e:
            onnx(x, **kw)
        assert e.value.field == next(iter(kw))
    with pytest.raises(ConfigError) as e:
        export_onnx(tiny[0], tmp_path / "x", opset=9)
    assert e.value.field == "opset"


def test_a_missing_onnxruntime_is_named(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match=r'onnxruntime package: pip install "dlm\[edge\]"'):
        dlm.load(tiny[1])


def test_cli_export_then_generate_with_onnxruntime(tok, tmp_path):
    from typer.testing import CliRunner

    from dlm.cli import app

    lm = DiffusionLM(_net(tok, "causal"), tok, GenerationConfig(gen_length=8, steps=8))
    lm.save_pretrained(tmp_path / "tiny")
    run = CliRunner().invoke
    r = run(app, ["export", "onnx", str(tmp_path / "tiny"), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "decoder.onnx", "model.onnx", "tokenizer.json", "onnx_config.json"} <= files
    args = ["generate", "def add(", "import os", "--gen-length", "8", "--json"]
    want = run(app, [*args, "--model", str(tmp_path / "tiny")])
    got = run(app, [*args, "--model", str(tmp_path / "out"), "--backend", "onnxruntime"])
    assert want.exit_code == 0 and got.exit_code == 0, got.output
    texts = [[json.loads(line)["text"] for line in r.output.splitlines()] for r in (want, got)]
    assert texts[0] == texts[1] and len(texts[0]) == 2
    r = run(app, [*args, "--model", str(tmp_path / "tiny"), "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "backend" in r.output


def test_torchscript_exporter_is_the_fallback(tok, tiny, tmp_path, monkeypatch):
    """Should the dynamo exporter refuse the network, the TorchScript exporter writes graphs that work the same."""
    real = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kw):
        if dynamo:
            raise RuntimeError("dynamo refused")
        return real(*args, dynamo=False, **kw)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    folder = export_onnx(tiny[0], tmp_path / "ts")
    record = json.loads((folder / "onnx_config.json").read_text())
    assert {g["exporter"] for g in record["graphs"].values()} == {"torchscript"}
    net, onnx = _net(tok, "causal", tiny[0].state_dict()), OnnxDenoiser(folder, threads=1)
    onnx.config = net.config
    x, am = _batch(tok)
    caches = KVCache(), KVCache()
    with torch.no_grad():
        assert _diff(*_run((net, onnx), caches, x, attention_mask=am)) <= TOL
        am = torch.cat([am, torch.ones(3, 2, dtype=torch.long)], dim=1)
        assert _diff(*_run((net, onnx), caches, x[:, :2], attention_mask=am)) <= TOL
        assert _cache_diff(*caches) <= TOL
