"""PST (method.pruner=pst): the frozen weight plus a low-rank update, masked by magnitude + low-rank + row/column
scores; exact sparsity, the reference's start (W' = W, S = |W|), gradients only to the PST parameters, the
trainable count, and the baked (merged, sparse) weights equal to the parametrized forward."""

from __future__ import annotations

import pytest
import torch

from runner.prune import masks
from tests.test_prune_blocks import TINY, batch, logits, tiny


def pst_model(family: str, rank: int = 2, mask_rank: int = 3):
    model = tiny(family)
    chosen = masks.select(model, ["attention", "ffn"])
    found = masks.attach(chosen, "pst", pst=dict(rank=rank, mask_rank=mask_rank))
    return model, chosen, found


@pytest.mark.parametrize("family", list(TINY))
def test_pst_starts_as_magnitude_pruning_of_the_frozen_weights(family):
    _, chosen, found = pst_model(family)
    masks.set_level(found, 0.6)
    for name, module in chosen.items():
        w = masks.original(module)
        assert not w.requires_grad and (module.bias is None or not module.bias.requires_grad)
        # V = B = R = C = 0 at the start: W' = W and S = |W|, so the mask is magnitude's top-k
        expected = w * masks.topk_mask(w.abs(), masks.keep_count(w.numel(), 0.6))
        assert torch.equal(module.weight, expected), name
        assert float((module.weight == 0).float().mean()) == pytest.approx(0.6, abs=1 / w.numel() + 1e-6)


def test_pst_masks_by_the_full_score_and_bakes_the_merged_weights():
    model, chosen, found = pst_model("bert")
    torch.manual_seed(3)
    for m in found.values():
        for p in (m.V, m.B, m.R, m.C):
            torch.nn.init.normal_(p, std=0.05)
    masks.set_level(found, 0.7)
    for name, module in chosen.items():
        m, w = found[name], masks.original(module)
        merged = w + m.U @ m.V
        score = merged.abs() + m.A @ m.B + (m.R[:, None] + m.C[None, :])
        keep = masks.keep_count(w.numel(), 0.7)
        expected = merged * masks.topk_mask(score, keep)
        assert torch.allclose(module.weight, expected, atol=1e-6)
        assert int((module.weight != 0).sum()) <= keep
    before = logits(model)
    masks.bake(chosen)
    assert not any(".parametrizations." in k for k in model.state_dict())
    assert torch.allclose(logits(model), before, atol=1e-6)
    assert masks.sparsity(chosen)["overall"] >= 0.7 - 1e-3


def test_only_pst_parameters_get_gradients_and_the_count_is_the_papers():
    model, chosen, found = pst_model("bert", rank=2, mask_rank=3)
    model.train()
    masks.set_level(found, 0.5)
    params = masks.scores(model)
    expected = sum((m.U.shape[0] + m.V.shape[1]) * (2 + 3) + m.U.shape[0] + m.V.shape[1] for m in found.values())
    assert sum(p.numel() for p in params) == expected
    model(**batch()).loss.backward()
    for name, module in chosen.items():
        m = found[name]
        assert masks.original(module).grad is None
        assert m.V.grad.abs().sum() > 0 and m.B.grad.abs().sum() > 0  # U, A are random; V, B start at 0
        assert m.R.grad.abs().sum() > 0 and m.C.grad.abs().sum() > 0
        # V = B = 0 at the start, so the gradients of U (through V^T) and A (through B^T) are exactly 0
        assert m.U.grad.abs().sum() == 0 and m.A.grad.abs().sum() == 0
