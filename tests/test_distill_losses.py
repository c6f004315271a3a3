"""Distillation losses against hand-computed values."""

import math

import pytest
import torch

from runner.distill.losses import soft_kl, soft_kl_reference


def test_soft_kl_hand_computed():
    # two classes, T=2: teacher logits [0, 2ln3] -> T-softmax [1/4, 3/4]; student [0, 0] -> [1/2, 1/2]
    t = torch.tensor([[0.0, 2 * math.log(3)]])
    s = torch.zeros(1, 2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert soft_kl(s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_soft_kl_matches_kl_div_and_masks_rows():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    assert soft_kl(s, t, 3.0).item() == pytest.approx(soft_kl_reference(s, t, 3.0).item(), rel=1e-5)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 1] = mask[2, 4] = True
    assert soft_kl(s, t, 1.0, mask).item() == pytest.approx(soft_kl_reference(s[mask], t[mask], 1.0).item(), rel=1e-5)
    assert soft_kl(s, t, 1.0, torch.zeros(3, 5, dtype=torch.bool)).item() == 0.0
    assert soft_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        soft_kl(s, t, 0.0)
