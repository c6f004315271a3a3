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


# ---------------------------------------------------------------------------------------------------------
# kd: alpha mixing, T^2 scaling, regression


def test_kd_mixes_gold_and_soft_terms_by_alpha():
    from runner.distill.losses import kd_terms

    s = torch.zeros(1, 2)
    t = torch.tensor([[0.0, 2 * math.log(3)]])
    label = torch.tensor([1])
    kl = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))  # T=2: T^2 * KL([1/4,3/4] || [1/2,1/2])
    ce = math.log(2)  # -log 1/2
    terms = kd_terms(s, t, label, alpha=0.3, temperature=2.0)
    assert terms["kd"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.7 * ce + 0.3 * kl, rel=1e-6)
    only_kd = kd_terms(s, t, label, alpha=1.0, temperature=2.0)
    assert "ce" not in only_kd and only_kd["loss"].item() == pytest.approx(kl, rel=1e-6)


def test_kd_temperature_squared_scaling():
    from runner.distill.losses import kd_terms

    # teacher [0, ln 3] at T=1 -> [1/4, 3/4]; at T=2 the same distribution needs logits [0, 2 ln 3]
    s = torch.zeros(1, 2)
    one = kd_terms(s, torch.tensor([[0.0, math.log(3)]]), None, alpha=1.0, temperature=1.0)["kd"]
    two = kd_terms(s, torch.tensor([[0.0, 2 * math.log(3)]]), None, alpha=1.0, temperature=2.0)["kd"]
    assert two.item() == pytest.approx(4 * one.item(), rel=1e-6)


def test_kd_regression_uses_mse_to_teacher_and_gold():
    from runner.distill.losses import kd_terms

    s, t, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]]), torch.tensor([0.0, 2.0])
    terms = kd_terms(s, t, y, alpha=0.5, temperature=3.0)
    assert terms["kd"].item() == pytest.approx((1 + 4) / 2)
    assert terms["ce"].item() == pytest.approx((1 + 0) / 2)
    assert terms["loss"].item() == pytest.approx(0.5 * 2.5 + 0.5 * 0.5)


def test_kd_rows_without_gold_labels_count_in_kd_only():
    from runner.distill.losses import kd_terms

    # classification: row 0 labelled (class 1), row 1 unlabelled (-100): gold = CE of row 0 alone
    s = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    t = torch.tensor([[0.0, 2 * math.log(3)], [0.0, 0.0]])
    terms = kd_terms(s, t, torch.tensor([1, -100]), alpha=0.5, temperature=2.0)
    assert terms["ce"].item() == pytest.approx(math.log(2), rel=1e-6)
    full_kd = kd_terms(s, t, None, alpha=1.0, temperature=2.0)["kd"]
    assert terms["kd"].item() == pytest.approx(full_kd.item(), rel=1e-6)  # kd over both rows
    # a batch with no gold label at all: gold 0, the loss is alpha * kd, and it still has a graph
    s.requires_grad_(True)
    none = kd_terms(s, t, torch.tensor([-100, -100]), alpha=0.5, temperature=2.0)
    assert none["ce"].item() == 0.0 and none["loss"].item() == pytest.approx(0.5 * full_kd.item(), rel=1e-6)
    none["loss"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # regression: NaN marks the unlabelled rows
    s, t, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]]), torch.tensor([0.0, float("nan")])
    terms = kd_terms(s, t, y, alpha=0.5, temperature=3.0)
    assert terms["ce"].item() == pytest.approx(1.0) and terms["kd"].item() == pytest.approx(2.5)


# ---------------------------------------------------------------------------------------------------------
# tinybert


def test_attention_mse_zeroes_masked_entries():
    from runner.distill.losses import attention_mse

    s = torch.tensor([[[[1.0, -10000.0], [3.0, -10000.0]]]])
    t = torch.tensor([[[[2.0, -10000.0], [1.0, -9990.0]]]])
    assert attention_mse(s, t).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_tinybert_terms_hand_computed_with_projection():
    from runner.distill.losses import tinybert_terms

    proj = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0], [2.0]]))
    s_hidden = [torch.ones(1, 1, 1), 2 * torch.ones(1, 1, 1)]  # embeddings, layer 0
    t_hidden = [torch.zeros(1, 1, 2)] + [torch.full((1, 1, 2), float(j)) for j in range(1, 5)]
    s_scores = [torch.ones(1, 1, 1, 1)]
    t_scores = [torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 3.0)]
    terms = tinybert_terms(s_scores, t_scores, s_hidden, t_hidden, [3], proj)
    assert terms["att"].item() == pytest.approx(4.0)  # (1 - 3)^2
    assert terms["embed"].item() == pytest.approx((1 + 4) / 2)  # W*1 = [1, 2] vs [0, 0]
    assert terms["hidden"].item() == pytest.approx((4 + 0) / 2)  # W*2 = [2, 4] vs teacher rep 4 = [4, 4]
    assert terms["loss"].item() == pytest.approx(4 + 2.5 + 2)
    with pytest.raises(ValueError, match="no projection"):
        tinybert_terms(s_scores, t_scores, s_hidden, t_hidden, [3], None)


def test_registry_tinybert_stages_select_terms():
    from runner.distill.losses import LOSSES, Forward, LossParams

    g = torch.Generator().manual_seed(1)
    fwd = [Forward(torch.randn(2, 3, generator=g), [torch.randn(2, 1, 4, 4, generator=g)],
                   [torch.randn(2, 4, 5, generator=g) for _ in range(2)]) for _ in range(2)]
    labels = torch.tensor([0, 2])
    both = LOSSES["tinybert"](*fwd, labels, LossParams(layer_map=[0]))
    inter = LOSSES["tinybert"](*fwd, labels, LossParams(layer_map=[0], prediction=False))
    pred = LOSSES["tinybert"](*fwd, labels, LossParams(layer_map=[0], intermediate=False))
    assert set(inter) == {"att", "embed", "hidden", "loss"} and set(pred) == {"kd", "ce", "loss"}
    assert both["loss"].item() == pytest.approx(inter["loss"].item() + pred["loss"].item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# sinkd


def _linear_sinkhorn(cost, epsilon, iterations):
    """SinKD's plain form: K = exp(-W/eps), then alternately normalise rows and columns."""
    p = torch.exp(-cost.double() / epsilon)
    for _ in range(iterations):
        p = p / p.sum(1, keepdim=True)
        p = p / p.sum(0, keepdim=True)
    return p


def test_sinkhorn_log_domain_matches_linear_reference():
    from runner.distill.losses import sinkhorn_distance, sinkhorn_plan

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    p_s, p_t = torch.softmax(s / 2, -1), torch.softmax(t / 2, -1)
    cost = torch.cdist(p_s, p_t, p=1)
    plan = sinkhorn_plan(cost.double(), 0.1, 20)
    ref = _linear_sinkhorn(cost, 0.1, 20)
    assert torch.allclose(plan, ref, atol=1e-10)
    assert (plan >= 0).all() and torch.allclose(plan.sum(0), torch.ones(5, dtype=torch.double))
    assert torch.allclose(plan.sum(1), torch.ones(5, dtype=torch.double), atol=1e-3)
    expected = 1e-3 * (ref * cost.double()).sum().item()
    assert sinkhorn_distance(s, t, temperature=2, epsilon=0.1, iterations=20, scale=1e-3).item() == \
        pytest.approx(expected, rel=1e-5)


def test_sinkhorn_small_epsilon_stays_finite_and_approaches_exact_ot():
    import itertools

    from runner.distill.losses import sinkhorn_plan

    g = torch.Generator().manual_seed(2)
    cost = torch.rand(4, 4, generator=g, dtype=torch.double)
    plan = sinkhorn_plan(cost, 1e-3, 500)  # exp(-cost/1e-3) underflows in the linear domain
    assert torch.isfinite(plan).all()
    exact = min(sum(cost[i, j] for i, j in enumerate(perm)) for perm in itertools.permutations(range(4)))
    assert (plan * cost).sum().item() == pytest.approx(exact.item(), abs=1e-2)


def test_sinkd_adds_beta_times_sinkhorn_and_has_finite_grads_at_batch_one():
    from runner.distill.losses import kd_terms, sinkd_terms

    s = torch.randn(1, 2, requires_grad=True)
    t = torch.randn(1, 2)
    sink = {"temperature": 2.0, "epsilon": 0.1, "iterations": 20, "scale": 1e-3}
    terms = sinkd_terms(s, t, torch.tensor([1]), alpha=0.9, temperature=2.0, beta=0.8, sinkhorn=sink)
    base = kd_terms(s, t, torch.tensor([1]), alpha=0.9, temperature=2.0)["loss"]
    assert terms["loss"].item() == pytest.approx(base.item() + 0.8 * terms["sinkhorn"].item(), rel=1e-6)
    terms["loss"].backward()
    assert torch.isfinite(s.grad).all()
