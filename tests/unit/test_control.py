"""Plug-and-play control of continuous diffusion (dlm.diffusion.control): a classifier on noisy latents learns an
attribute, its guidance moves the latents up its log-probability, raises the attribute's rate in samples, and
keeps sampling batch-invariant, seeded and (at scale 0) exactly unguided."""

import pytest
import torch

from dlm.diffusion import PROCESSES, DiffusionConfig, build_process
from dlm.diffusion.continuous import noise_input
from dlm.diffusion.control import Guidance, NoisyClassifier, classifier_accuracy, train_classifier
from dlm.errors import ConfigError
from dlm.model import Transformer
from dlm.sampling import GenerationConfig, generate
from dlm.sampling.generate import Denoiser

from ..conftest import tiny_config

KEY = 11  # the attribute: the window contains token 11 (a quarter of random windows; the net never samples it)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def setup():
    """A tiny continuous network, its process, random windows labelled by the attribute, a trained classifier."""
    torch.set_num_threads(1)
    cfg = PROCESSES["continuous"].resolve(DiffusionConfig(process="continuous"), tiny_config(vocab_size=32))[1]
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    process = build_process(DiffusionConfig(process="continuous"), cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 32, (1024, 8), generator=g)
    labels = (ids == KEY).any(1).long()
    clf = train_classifier(model, process, ids[:768], labels[:768], 300, batch_size=64, hidden=64, seed=0)
    prompts = [torch.randint(4, 32, (int(n),), generator=g).tolist() for n in torch.randint(1, 6, (24,), generator=g)]
    return dict(model=model, process=process, ids=ids[768:], labels=labels[768:], clf=clf, prompts=prompts)


def _cfg(**kw):
    return GenerationConfig(**{"gen_length": 8, "steps": 16, "seed": 0, "stop_at_eos": False, **kw})


def _sample(s, guide, prompts=None, **kw):
    s["process"].guide = guide
    try:
        return generate(s["model"], prompts or s["prompts"], _cfg(**kw), process=s["process"])
    finally:
        s["process"].guide = None


def test_the_classifier_learns_a_separable_attribute_from_noisy_latents(setup):
    s = setup
    chance = max(float(s["labels"].float().mean()), 1 - float(s["labels"].float().mean()))
    assert 0.6 < chance < 0.9  # the attribute is neither rare nor universal
    untrained = NoisyClassifier(32, hidden=64)
    assert classifier_accuracy(untrained, s["model"], s["process"], s["ids"], s["labels"], 0.0) < chance + 0.1
    for t in (0.0, 0.2):  # clean and lightly noised (sigma 0.1, 0.4 against unit-scale embeddings)
        acc = classifier_accuracy(s["clf"], s["model"], s["process"], s["ids"], s["labels"], t)
        assert acc >= 0.97 and acc > chance + 0.15
    noisy = classifier_accuracy(s["clf"], s["model"], s["process"], s["ids"], s["labels"], 0.4)  # sigma 1.6
    assert noisy > chance


def test_a_guidance_step_moves_the_latents_up_the_classifiers_log_probability(setup):
    clf = setup["clf"]
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 32, generator=g) * 2.0
    sigma = torch.full((8,), 2.0)
    sigma[:2] = 0.0  # settled slots: clean embeddings
    active = torch.ones(8, dtype=torch.bool)
    active[:2] = False
    active[-1] = False  # a later block's slot (it moves when its block is active)
    level = noise_input(sigma)[None]
    view = lambda v: v[None] / torch.sqrt(1 + sigma**2)[:, None]  # noqa: E731
    z0 = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(view(z0), level).sum(), z0)
    for scale in (1e-3, 1e-2):
        moved = Guidance(clf, scale).shift(z, sigma, active)
        assert torch.allclose(moved[active], z[active] + scale * 4.0 * grad[active], atol=1e-6)  # sigma^2 = 4
        assert torch.equal(moved[~active], z[~active])  # only the active block's noisy slots move
        with torch.no_grad():
            assert clf(view(moved), level).item() > clf(view(z), level).item()
    # two steps with a fluency pull: v1 = v0 + (s/2) sigma^2 g(v0); v2 = v1 + (s/2) (sigma^2 g(v1) - f (v1 - v0))
    s, f = 0.05, 0.5
    v1 = z.clone()
    v1[active] = z[active] + s / 2 * 4.0 * grad[active]
    v1g = v1.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(clf(view(v1g), level).sum(), v1g)
    want = v1[active] + s / 2 * (4.0 * g1[active] - f * (v1[active] - z[active]))
    got = Guidance(clf, s, steps=2, fluency=f).shift(z, sigma, active)
    assert torch.allclose(got[active], want, atol=1e-6)
    assert torch.equal(z, z.clone())  # the input is not modified in place
    assert torch.equal(Guidance(clf, 0.0).shift(z, sigma, active), z)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.8, block_length=4)], ids=["ddim", "ancestral-blocks"])
def test_guidance_at_scale_zero_gives_exactly_the_unguided_samples(setup, kw):
    plain = _sample(setup, None, **kw)
    assert _sample(setup, Guidance(setup["clf"], 0.0), **kw).canvases == plain.canvases
    assert _sample(setup, Guidance(setup["clf"], 3.0), **kw).canvases != plain.canvases  # the hook is live


def test_guided_sampling_is_batch_invariant_and_seeded(setup):
    guide, kw = Guidance(setup["clf"], 3.0, steps=2, fluency=0.1), dict(temperature=0.8, block_length=4, seed=5)
    prompts = setup["prompts"][:4]
    batch = _sample(setup, guide, prompts, **kw)
    assert _sample(setup, guide, prompts, **kw).canvases == batch.canvases
    for i, p in enumerate(prompts):
        assert _sample(setup, guide, [p], **kw).canvases[0] == batch.canvases[i]
    assert _sample(setup, guide, prompts, **{**kw, "seed": 6}).canvases != batch.canvases
    # rows joining a running batch (their slots shift right) get what they get alone
    s = setup
    s["process"].guide = guide
    try:
        d = Denoiser(s["model"], _cfg(**kw), process=s["process"])
        first = d.add(prompts[:2])
        d.step()
        later = d.add(prompts[2:])
        while d.live:
            d.step()
    finally:
        s["process"].guide = None
    for h, i in zip(first + later, range(4)):
        assert d.pop_result(h)["canvas"] == batch.canvases[i]


def test_guidance_raises_the_attributes_rate(setup):
    n = len(setup["prompts"])
    for kw in (dict(), dict(temperature=0.8, block_length=4)):
        plain = sum(KEY in seq for seq in _sample(setup, None, **kw).sequences)
        guided = sum(KEY in seq for seq in _sample(setup, Guidance(setup["clf"], 30.0), **kw).sequences)
        assert plain <= n // 4 and guided >= n - 2 and guided > plain


def test_the_classifier_survives_save_and_load(setup, tmp_path):
    clf = setup["clf"]
    clf.meta = {"keyword": "seven"}
    path = clf.save(tmp_path / "control")
    assert path.name == "classifier.safetensors" and path.read_bytes()[8:9] == b"{"  # safetensors: header json
    back = NoisyClassifier.load(tmp_path / "control")
    assert back.meta == {"keyword": "seven"} and back.settings == clf.settings
    x, level = torch.randn(3, 8, 32), torch.rand(3, 8) - 1
    assert torch.equal(back(x, level), clf(x, level))
    out = _sample(setup, Guidance(back, 3.0), temperature=0.8, block_length=4)
    assert out.canvases == _sample(setup, Guidance(clf, 3.0), temperature=0.8, block_length=4).canvases


@pytest.mark.parametrize(
    "kw, field",
    [(dict(scale=-1.0), "guidance.scale"), (dict(scale=float("nan")), "guidance.scale"),
     (dict(steps=0), "guidance.steps"), (dict(fluency=-0.1), "guidance.fluency")],
)  # fmt: skip
def test_bad_settings_name_their_field(setup, kw, field):
    with pytest.raises(ConfigError, match=field):
        Guidance(setup["clf"], **kw)
    with pytest.raises(ConfigError, match="guidance.classifier"):
        Guidance("not a classifier")
    with pytest.raises(ConfigError, match="guidance.classifier"):  # a classifier of another width
        _sample(setup, Guidance(NoisyClassifier(16), 1.0))
    with pytest.raises(ConfigError, match="steps"):
        train_classifier(setup["model"], setup["process"], setup["ids"], setup["labels"], 0)
