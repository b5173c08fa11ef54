"""diffu-GRPO (dlm.training.grpo): the objective, the advantages and the one-forward log-probabilities checked
by hand on tiny cases, and a short real run."""

import math

import pytest
import torch

from dlm.errors import ConfigError
from dlm.training.grpo import GRPOConfig, completion_logprobs, group_advantages, grpo_loss, train_grpo


def test_group_advantages_subtract_each_groups_mean():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert group_advantages(r, 4).tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_grpo_loss_by_hand():
    """One completion of two tokens. Token 1: rho = 0.5/0.4 = 1.25, clipped to 1.2; the reference equals the
    policy (KL 0). Token 2: rho = 0.2/0.4 = 0.5, clip 0.8; ref/pi = 0.1/0.2, KL = 0.5 + ln 2 - 1."""
    lp = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_()
    old, ref = torch.log(torch.tensor([[0.4, 0.4]])), torch.log(torch.tensor([[0.5, 0.1]]))
    mask = torch.tensor([[True, True]])
    kl2 = 0.5 + math.log(2) - 1
    pos = grpo_loss(lp, old, ref, torch.tensor([1.0]), mask, 0.2, 0.1)
    assert pos.item() == pytest.approx((-1.2 + -0.5 + 0.1 * kl2) / 2, rel=1e-6)  # A > 0: min picks 1.2 and 0.5
    neg = grpo_loss(lp, old, ref, torch.tensor([-1.0]), mask, 0.2, 0.1)
    assert neg.item() == pytest.approx((1.25 + 0.8 + 0.1 * kl2) / 2, rel=1e-6)  # A < 0: min picks -1.25, -0.8
    (g,) = torch.autograd.grad(pos, lp)
    # token 1 is clipped (no surrogate gradient) and sits at the reference (no KL gradient): exactly 0.
    # token 2: d/dlogp of -rho A / 2 is -rho / 2 = -0.25; of beta k3 / 2 is beta (1 - ref/pi) / 2 = 0.025
    assert g[0, 0].item() == pytest.approx(0.0, abs=1e-7) and g[0, 1].item() == pytest.approx(-0.25 + 0.025)
    # masked tokens do not count; each row is averaged over its own tokens, then rows are averaged
    two = grpo_loss(lp.detach().repeat(2, 1), old.repeat(2, 1), ref.repeat(2, 1), torch.tensor([1.0, 1.0]),
                    torch.tensor([[True, True], [True, False]]), 0.2, 0.1)  # fmt: skip
    assert float(two) == pytest.approx(((-1.2 - 0.5 + 0.1 * kl2) / 2 + -1.2) / 2, rel=1e-6)


def test_bad_grpo_settings_name_the_field():
    for kw, field in (({"group_size": 1}, "group_size"), ({"prompt_mask_prob": 1.0}, "prompt_mask_prob"),
                      ({"clip_eps": 0.0}, "clip_eps"), ({"steps": 0}, "steps")):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            GRPOConfig(**kw)


class _Fixed(torch.nn.Module):
    """Logits that depend only on the position (and record the input), to check the masking by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, []
        self.config = type("C", (), {"mask_token_id": 3})()

    def forward(self, x, attention_mask=None, **kw):
        self.seen.append(x.clone())
        return self.logits[None].expand(x.shape[0], -1, -1)


def test_completion_logprobs_mask_the_whole_completion_and_some_prompt_tokens():
    from types import SimpleNamespace

    from dlm.diffusion import DiffusionConfig, MaskedDiffusion

    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    net = _Fixed(logits)
    lm = SimpleNamespace(model=net, process=MaskedDiffusion(DiffusionConfig(), mask_token_id=3))
    rows = torch.tensor([[0, 1, 2, 4, 0, 1]])
    prompt = torch.tensor([[True, True, True, False, False, False]])
    comp = ~prompt
    keys = torch.ones_like(rows, dtype=torch.bool)
    lp = completion_logprobs(lm, rows, prompt, comp, keys, 0.0, torch.Generator().manual_seed(0))
    assert net.seen[-1].tolist() == [[0, 1, 2, 3, 3, 3]]  # completion masked, prompt kept (p = 0)
    want = torch.log_softmax(logits.masked_fill(torch.arange(5) == 3, float("-inf")), -1)
    assert torch.allclose(lp[0, 3:], want[[3, 4, 5], [4, 0, 1]]) and lp[0, :3].abs().sum() == 0
    completion_logprobs(lm, rows, prompt, comp, keys, 0.999, torch.Generator().manual_seed(0))
    assert net.seen[-1].tolist() == [[3, 3, 3, 3, 3, 3]]  # p -> 1: the prompt masked too
    a = completion_logprobs(lm, rows.repeat(64, 1), prompt.repeat(64, 1), comp.repeat(64, 1), keys.repeat(64, 1),
                            0.5, torch.Generator().manual_seed(1))  # fmt: skip
    frac = (net.seen[-1][:, :3] == 3).float().mean().item()
    assert 0.35 < frac < 0.65 and a.shape == (64, 6)  # about half of the prompt tokens


def test_a_short_grpo_run_is_seeded_and_moves_the_weights(tmp_path):
    from dlm.tasks import get_task
    from dlm.tokenizer import train_tokenizer

    from ..conftest import tiny_lm

    tok = train_tokenizer([], 263, texts=["1 + 2 = 3"])
    task = get_task("arithmetic", digits=1)
    task.verify = lambda ex, out: len(out) % 2 == 0  # a reward a random model earns about half the time
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=3, inner_steps=2, lr=1e-2, temperature=1.0, seed=3)
    runs = []
    for _ in range(2):
        lm = tiny_lm(tok)
        before = [p.detach().clone() for p in lm.model.parameters()]
        res = train_grpo(lm, task, cfg, tmp_path / f"run{len(runs)}", log=lambda m: None)
        runs.append((res["history"], [p.detach().clone() for p in lm.model.parameters()]))
    (h1, w1), (h2, w2) = runs
    assert [r["reward"] for r in h1] == [r["reward"] for r in h2] and len(h1) == 2
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))  # same seed, same run
    assert 0 < sum(r["reward"] for r in h1) < 2  # mixed rewards: non-zero advantages
    assert any(not torch.equal(a, b) for a, b in zip(before, w2))
    assert (tmp_path / "run0" / "model.safetensors").is_file() and (tmp_path / "run0" / "grpo_history.json").is_file()


def test_rollouts_keep_a_templates_locked_tokens_out_of_the_completion():
    from dlm.tasks import get_task
    from dlm.tokenizer import TEMPLATE_FREE, train_tokenizer
    from dlm.training.grpo import _rollouts

    from ..conftest import tiny_lm

    tok = train_tokenizer([], 263, texts=["001+002=003"])
    lm = tiny_lm(tok)
    exs = get_task("countdown").examples("train", 2)
    cfg = GRPOConfig(group_size=2, temperature=1.0)
    n = len(exs[0].answer) + 1
    rows, prompt_pos, comp_pos, key_mask, _ = _rollouts(lm, exs, cfg, n, [0, 1, 2, 3])
    for i, ex in enumerate(e for e in exs for _ in range(2)):
        p = int(prompt_pos[i].sum())
        locked = [k for k, t in enumerate(tok.encode_template(ex.template)) if t != tok.mask_token_id]
        assert locked and all(rows[i, p + k] == tok.encode(ex.answer)[k] for k in locked)  # stood from the start
        assert not comp_pos[i, [p + k for k in locked]].any() and key_mask[i, [p + k for k in locked]].all()
        assert int(comp_pos[i].sum()) == n - len(locked)
    assert TEMPLATE_FREE in exs[0].template
