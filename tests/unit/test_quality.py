"""Sample-quality measures: distinct-n, self-BLEU, entropy, generative perplexity, energy meter."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlm.errors import InputError
from dlm.eval import quality


def test_distinct_n_and_self_bleu():
    assert quality.distinct_n(["a b a b", "a b"], 1) == 2 / 6
    assert quality.distinct_n(["a b a b", "a b"], 2) == 2 / 4  # (a b) x3, (b a) x1
    assert quality.distinct_n(["", "x"], 2) == 0.0
    same = ["the cat sat on the mat today"] * 4
    assert quality.self_bleu(same) == pytest.approx(100.0)
    varied = ["the cat sat on the mat", "dogs run far in parks", "seven ships left port early", "red apples grow"]
    assert quality.self_bleu(varied) < 10.0
    assert quality.self_bleu(["only one"]) == 0.0


def test_token_entropy_is_low_for_repetition():
    assert quality.token_entropy([5] * 10) == 0.0
    assert quality.token_entropy(list(range(8))) == pytest.approx(math.log(8))
    assert quality.token_entropy([]) == 0.0


def test_generative_ppl_is_exact_under_a_causal_scorer():
    import dlm

    ar = dlm.load("builtin-ar")
    prompts, comps = ["def add(a, b):\n"], ["    return a + b\n"]
    got = quality.generative_ppl(ar, prompts, comps)
    ctx = ar.tokenizer.encode_prompt(prompts[0])
    whole = ar.tokenizer.encode_prompt(prompts[0] + comps[0])
    n = next(i for i in range(len(ctx) + 1) if i == len(ctx) or whole[i] != ctx[i])  # "\n" + indent merge
    assert n == len(ctx) - 1  # the prompt's trailing newline merged with the completion's indentation
    with torch.no_grad():
        logp = F.log_softmax(ar.model(torch.tensor([whole]))[0].float(), -1)
    nll = -sum(float(logp[i - 1, whole[i]]) for i in range(n, len(whole)))
    assert got == pytest.approx(math.exp(nll / (len(whole) - n)), rel=1e-5)
    with pytest.raises(InputError, match="scorer"):
        quality.generative_ppl(dlm.load("builtin"), prompts, comps)


def test_energy_meter_counts_cpu_time_and_names_its_source(monkeypatch):
    """The meter's arithmetic on scripted clocks (no timing): CPU and wall deltas, then joules from RAPL
    microjoules when the counter reads, else the stated watts per busy core."""
    clocks = {"cpu": iter([1.0, 3.5]), "wall": iter([10.0, 12.0])}
    monkeypatch.setattr(quality.time, "process_time", lambda: next(clocks["cpu"]))
    monkeypatch.setattr(quality.time, "perf_counter", lambda: next(clocks["wall"]))
    monkeypatch.setattr(quality, "_rapl", lambda: None)
    with quality.EnergyMeter(watts_per_core=10.0) as m:
        pass
    assert (m.cpu_seconds, m.wall_seconds) == (2.5, 2.0)
    assert m.joules == pytest.approx(25.0) and "assumed" in m.joules_source
    clocks = {"cpu": iter([0.0, 1.0]), "wall": iter([0.0, 1.0])}
    rapl = iter([5_000_000, 12_000_000])  # microjoules
    monkeypatch.setattr(quality, "_rapl", lambda: next(rapl))
    with quality.EnergyMeter(watts_per_core=10.0) as m:
        pass
    assert m.joules == pytest.approx(7.0) and "rapl" in m.joules_source
