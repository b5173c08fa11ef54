"""Training objectives built from config: the registry, the network config each one trains, and the loss /
NLL / scored-token contract on SFT, packed and pretraining batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlm.diffusion import DiffusionConfig, MaskedDiffusion
from dlm.errors import ConfigError
from dlm.model import Transformer
from dlm.training import RunConfig
from dlm.training.config import LoopConfig
from dlm.training.objectives import OBJECTIVES, Autoregressive, Diffusion, build_objective

from ..conftest import tiny_config


def run(objective: str, init_from: str | None = None, **diffusion) -> RunConfig:
    return RunConfig(train=LoopConfig(objective=objective, init_from=init_from), diffusion=DiffusionConfig(**diffusion))


def test_registry_builds_each_objective_with_the_attention_it_trains():
    assert {"ar", "diffusion"} <= set(OBJECTIVES)
    block = tiny_config(attention="block_causal")
    ar = build_objective(run("ar"), block)
    assert isinstance(ar, Autoregressive) and ar.model_config.attention == "causal" and ar.process is None
    assert ar.diffusion_config is None and block.attention == "block_causal"  # the input config is not changed
    diff = build_objective(run("diffusion"), block)
    assert isinstance(diff, Diffusion) and diff.model_config is block  # the model's own attention
    assert isinstance(diff.process, MaskedDiffusion) and diff.diffusion_config.process == "masked"
    assert build_objective(run("diffusion", process="uniform"), block).process.name == "uniform"
    with pytest.raises(ConfigError, match="ar needs a causal model; /m is bidirectional"):
        build_objective(run("ar", init_from="/m"), tiny_config())  # a pretrained network keeps its attention
    assert (
        build_objective(run("ar", init_from="/m"), tiny_config(attention="causal")).model_config.attention == "causal"
    )
    with pytest.raises(ConfigError, match="train.objective"):
        LoopConfig(objective="nope")


def batches(L=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 64, (3, L), generator=g)
    plen = torch.tensor([3, 5, 9])
    answer = torch.arange(L)[None] >= plen[:, None]
    return {
        "pretrain": {"input_ids": ids},
        "sft": {"input_ids": ids, "prompt_lengths": plen},
        "packed": {"input_ids": ids, "answer_mask": answer},
    }, answer


@pytest.mark.parametrize("kind", ["pretrain", "sft", "packed"])
def test_ar_nll_is_exact_over_scored_targets_and_loss_is_their_mean(kind):
    torch.manual_seed(0)
    net = Transformer(tiny_config(attention="causal")).eval()
    obj = build_objective(run("ar"), net.config)
    all_batches, answer = batches()
    batch = all_batches[kind]
    ids = batch["input_ids"]
    with torch.no_grad():
        logp = F.log_softmax(net(ids).float(), -1)
    keep = answer[:, 1:] if kind != "pretrain" else torch.ones(3, 11, dtype=torch.bool)
    terms = [-logp[b, i, ids[b, i + 1]] for b in range(3) for i in range(11) if keep[b, i]]
    with torch.no_grad():
        nll = obj.nll(net, batch, samples=1)
        loss = obj.loss(net, batch)
    assert obj.scored_tokens(batch) == len(terms)
    torch.testing.assert_close(nll, torch.stack(terms).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, nll / len(terms), rtol=1e-5, atol=1e-5)
    counted = obj.normalizer_tokens(batch)
    assert (counted is None) == (kind == "pretrain")
    if counted is not None:  # a global normaliser makes the loss a sum over this rank's answers / normaliser
        assert int(counted.sum()) == len(terms)
        with torch.no_grad():
            torch.testing.assert_close(
                obj.loss(net, batch, normalizer=torch.tensor(2.0)), nll / 2, rtol=1e-5, atol=1e-4
            )


@pytest.mark.parametrize("kind", ["pretrain", "sft", "packed"])
def test_diffusion_objective_is_its_process(kind):
    torch.manual_seed(0)
    net = Transformer(tiny_config()).eval()
    obj = build_objective(run("diffusion"), net.config)
    all_batches, answer = batches()
    batch = all_batches[kind]
    ids = batch["input_ids"]
    proc = obj.process
    assert obj.scored_tokens(batch) == (ids.numel() if kind == "pretrain" else int(answer.sum()))
    assert obj.normalizer_tokens(batch) is None

    def gen():
        return torch.Generator().manual_seed(5)

    with torch.no_grad():
        maskable = None if kind == "pretrain" else answer
        want = proc.elbo_nll(net, ids, 3, generator=gen(), maskable=maskable).sum()
        assert torch.equal(obj.nll(net, batch, 3, gen()), want)
        if kind == "pretrain":
            want = proc.loss(net, ids, generator=gen()).loss
        else:
            want = proc.sft_loss(
                net, ids, batch.get("prompt_lengths"), generator=gen(), answer_mask=batch.get("answer_mask")
            ).loss
        assert torch.equal(obj.loss(net, batch, gen()), want)
