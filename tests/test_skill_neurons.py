"""Skill neurons (method.pruner=skill, runner.prune.skill): predictivity of the 1[a > baseline] rule, the
per-layer selection restricted to chosen layers, and mean folding exact for removed neurons at their mean."""

from __future__ import annotations

import pytest
import torch

from runner.errors import UserError
from runner.models import arch
from runner.prune import skill, structured
from tests.test_prune_blocks import BERT_FAMILIES, batch, batches, tiny


def test_predictivity_is_the_rules_accuracy_either_sign():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    features = torch.tensor([
        # baseline from the first 4 rows; the last 4 scored
        [0.0, 1.0, 5.0], [1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [1.0, 0.0, 5.0],
        [0.0, 1.0, 6.0], [1.0, 0.0, 4.0], [0.0, 1.0, 6.0], [1.0, 1.0, 4.0],
    ])
    p = skill.predictivity(features, labels)
    # neuron 0: a > 0.5 <=> label 1 on all 4 scored rows; neuron 1: a > 0.5 <=> label 0 on 3 of 4 (row 7 is
    # 1 with label 1), so 1 - acc = 0.75; neuron 2: a > 5 <=> label 0 on all 4 -> 1.0 by the negated rule
    assert p.tolist() == [1.0, 0.75, 1.0]
    with pytest.raises(UserError, match="binary"):
        skill.predictivity(features, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    with pytest.raises(UserError, match="binary"):
        skill.predictivity(features, torch.rand(8))


def test_selection_touches_only_the_chosen_layers():
    imp = [torch.arange(8.0), torch.arange(8.0).flip(0), torch.arange(8.0)]
    keep = structured.select_neurons(imp, 0.75, "layer", layers=[1, 2])
    assert keep[0] == list(range(8)) and keep[1] == [0, 1] and keep[2] == [6, 7]
    keep = structured.select_neurons(imp, 0.5, "global", layers=[0])
    assert keep[0] == [4, 5, 6, 7] and keep[1] == list(range(8))
    # neurons masked earlier (scored -1 by the step schedule) are never kept, also under the global scope
    masked = [torch.tensor([-1.0, -1.0, 2, 3, 4, 5, 6, 7]), torch.tensor([-1.0, 1, 2, 3, 4, 5, 6, 7])]
    keep = structured.select_neurons(masked, 0.5, "global")
    assert 0 not in keep[0] and 1 not in keep[0] and 0 not in keep[1] and sum(map(len, keep)) == 8


@pytest.mark.parametrize("family", BERT_FAMILIES)
def test_mean_folding_is_exact_when_removed_neurons_sit_at_their_means(family):
    """Dense model with the removed neurons' activations replaced by their means == pruned + folded model."""
    model = tiny(family)
    data = batches()
    feats, means, labels = skill.activations(model, lambda: iter(data), "cls")
    assert len(feats) == 3 and feats[0].shape == (12, 64) and labels.shape == (12,)
    keep = structured.select_neurons([torch.rand(64, generator=torch.Generator().manual_seed(i)) for i in range(3)],
                                     0.75, "layer")
    # the reference: removed neurons replaced by their means inside the dense model
    hooks = []
    for ffn, ids, mean in zip(arch.ffns(model, stack="encoder"), keep, means, strict=True):
        removed = torch.ones(64, dtype=torch.bool)
        removed[ids] = False

        def at_mean(module, args, removed=removed, mean=mean):
            x = args[0].clone()
            x[..., removed] = mean[removed]
            return (x,)
        hooks.append(ffn.w_out.register_forward_pre_hook(at_mean))
    b = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        reference = model(**b).logits
    for h in hooks:
        h.remove()
    skill.fold_means(model, keep, means)
    structured.gate_neurons(model, keep)
    structured.prune_masked(model, None, keep)
    with torch.no_grad():
        pruned = model(**b).logits
    assert arch.ffns(model, stack="encoder")[0].w_out.in_features == 16
    assert torch.allclose(pruned, reference, atol=1e-5)


def test_activation_means_cover_real_tokens_only():
    model = tiny("bert")
    b = batch()  # row 0 is padded in the middle
    _, means, _ = skill.activations(model, lambda: iter([b]), "mean")
    real = b["attention_mask"].bool()
    inner = {}
    ffn = arch.ffns(model, stack="encoder")[1]
    h = ffn.w_out.register_forward_pre_hook(lambda m, a: inner.setdefault("x", a[0]))
    with torch.no_grad():
        model(**{k: v for k, v in b.items() if k != "labels"})
    h.remove()
    assert torch.allclose(means[1], inner["x"][real].mean(0), atol=1e-5)
