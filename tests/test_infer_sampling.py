"""Sampling at extreme temperatures: a tiny one is (nearly) greedy, never a crash."""

import pytest
import torch


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 1e-300])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature):
    """Fault: logits / 1e-300 overflowed to inf (or 0/0 where the temperature is 0 in float32), the softmax
    was NaN and sampling stopped with 'RuntimeError: probability tensor contains either inf, nan or
    element < 0' (launch/generate.py --temperature 1e-300: a traceback)."""
    from ngpt_ds.infer.generate import Sampling, sample_next

    logits = torch.tensor([[3.0, 250.0, -7.5, 249.0], [-1e4, 0.0, 12.0, 11.9999]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, Sampling(temperature=temperature), g).tolist() == [1, 2]


def test_moderate_temperatures_keep_their_distribution():
    from ngpt_ds.infer.generate import Sampling, sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1) + 100.0
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, Sampling(temperature=1.0), g), minlength=4) / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.025)
    # Temperature 0.5 squares the probabilities (renormalized): 0.25, 0.09, 0.0225, 0.0025 over 0.365.
    counts = torch.bincount(sample_next(logits, Sampling(temperature=0.5), g), minlength=4) / 4000
    assert torch.allclose(counts, torch.tensor([0.25, 0.09, 0.0225, 0.0025]) / 0.365, atol=0.025)
