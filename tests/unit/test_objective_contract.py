"""The contract every registered training objective keeps (and, for diffusion, over every registered noise
process): a seed fixes the loss, a few optimizer steps on a fixed batch lower it, pretraining / SFT / packed
batches all work, and the NLL it reports for evaluation is finite and positive. A new objective or process
joins these tests by being registered."""

from types import SimpleNamespace

import pytest
import torch

from dlm.diffusion import PROCESSES, DiffusionConfig
from dlm.errors import ConfigError
from dlm.model import Transformer
from dlm.sampling import GenerationConfig
from dlm.training import RunConfig
from dlm.training.config import LoopConfig
from dlm.training.objectives import OBJECTIVES, build_objective

from ..conftest import tiny_config

VARIANTS = [(name, None) for name in sorted(OBJECTIVES) if name != "diffusion"] + [
    ("diffusion", p) for p in sorted(PROCESSES)
]


NEEDS = {"draft_verify": {"generation": GenerationConfig(draft_block=3)}}  # settings an objective cannot run without


def _objective(name, process):
    diff = DiffusionConfig(process=process) if process else DiffusionConfig()
    run = RunConfig(train=LoopConfig(objective=name), diffusion=diff, **NEEDS.get(name, {}))
    return build_objective(run, tiny_config())


def _batch(kind):
    ids = torch.randint(4, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    plen = torch.tensor([2, 5, 7, 9])
    if kind == "sft":
        return {"input_ids": ids, "prompt_lengths": plen}
    if kind == "packed":
        return {"input_ids": ids, "answer_mask": torch.arange(16)[None] >= plen[:, None]}
    return {"input_ids": ids}


@pytest.mark.parametrize("name, process", VARIANTS)
@pytest.mark.parametrize("kind", ["pretrain", "sft", "packed"])
def test_an_objective_is_deterministic_learns_a_fixed_batch_and_reports_a_finite_nll(name, process, kind):
    obj = _objective(name, process)
    torch.manual_seed(0)
    net = Transformer(obj.model_config)
    batch = _batch(kind)
    if obj.process is not None:  # as the trainer does: corpus statistics first (the spindle process's counts)
        obj.process.fit(SimpleNamespace(tokens=batch["input_ids"].numpy()))
    if obj.needs_sft and kind == "pretrain":  # e.g. certainty forcing: distillation data is SFT data
        with pytest.raises(ConfigError, match="data.task"):
            obj.loss(net, batch, torch.Generator().manual_seed(0))
        return

    def loss(seed):
        return obj.loss(net, batch, torch.Generator().manual_seed(seed))

    assert torch.equal(loss(3), loss(3))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    curve = []
    for step in range(40):
        value = loss(100 + step)
        opt.zero_grad()
        value.backward()
        opt.step()
        curve.append(value.item())
    assert all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-8:]) < 0.8 * sum(curve[:8]), curve
    with torch.no_grad():
        nll = obj.nll(net, batch, 4, torch.Generator().manual_seed(0))
    scored = obj.scored_tokens(batch)
    assert torch.isfinite(nll) and float(nll) > 0 and scored > 0
