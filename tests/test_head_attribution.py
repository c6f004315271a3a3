"""Head orders read from the attention maps (runner.prune.attribution): the attention override is exact,
AttAttr satisfies completeness, entropy ignores padding, and both give fixed orders masked in rounds."""

from __future__ import annotations

import math

import pytest
import torch

from runner.errors import UserError
from runner.models import arch
from runner.prune import attribution, structured
from tests.test_prune_blocks import BERT_FAMILIES, batch, batches, tiny


def features(b: dict) -> dict:
    return {k: v for k, v in b.items() if k != "labels"}


@pytest.mark.parametrize("family", BERT_FAMILIES)
def test_override_with_the_models_own_probabilities_changes_nothing(family):
    model = tiny(family)
    b = features(batch())
    maps = attribution._maps(model, b)
    with torch.no_grad():
        reference = model(**b).logits
        for layer in range(3):
            with arch.attention_override(model, layer) as sub:
                sub.probs = maps[layer]
                assert torch.allclose(model(**b).logits, reference, atol=1e-5)
            with arch.attention_override(model, layer) as sub:
                sub.probs = torch.zeros_like(maps[layer])  # the layer's context is zero: outputs change
                assert not torch.allclose(model(**b).logits, reference, atol=1e-4)
        assert torch.equal(model(**b).logits, reference)  # hooks removed on exit


def test_override_keeps_the_head_gates():
    model = tiny("bert")
    b = features(batch())
    maps = attribution._maps(model, b)
    arch.attentions(model, "self", "encoder")[1].set_head_gate(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with torch.no_grad():
        gated = model(**b).logits
        with arch.attention_override(model, 1) as sub:
            sub.probs = maps[1]
            assert torch.allclose(model(**b).logits, gated, atol=1e-5)


@pytest.mark.parametrize("family", BERT_FAMILIES)
def test_attattr_completeness_sum_equals_the_probability_change(family):
    """Integrated gradients: the attributions of a layer's map sum to F(A) - F(0) (midpoint rule, 64 points)."""
    model = tiny(family)
    b = batch()
    maps = attribution._maps(model, features(b))
    for layer in range(3):
        attr = attribution.layer_attribution(model, b, layer, steps=64, maps=maps)
        with torch.no_grad():
            full = attribution._target(model(**features(b)).logits, b["labels"])
            with arch.attention_override(model, layer) as sub:
                sub.probs = torch.zeros_like(maps[layer])
                empty = attribution._target(model(**features(b)).logits, b["labels"])
        total = attr.sum((1, 2, 3))
        assert torch.allclose(total, full - empty, atol=2e-3 * max(1.0, float((full - empty).abs().max())))


def test_attattr_scores_sum_per_head_maxima_over_real_pairs():
    model = tiny("bert")
    data = batches()
    scores = attribution.attattr(model, lambda: iter(data), examples=6, steps=8, chunk=4)
    assert scores.shape == (3, 4) and torch.isfinite(scores).all()
    # by hand: the first 6 rows (batch 0 whole, 2 rows of batch 1), per example max over real pairs
    expected = torch.zeros(3, 4)
    for b in (data[0], {k: v[:2] for k, v in data[1].items()}):
        maps = attribution._maps(model, features(b))
        real = b["attention_mask"].bool()
        for layer in range(3):
            attr = attribution.layer_attribution(model, b, layer, 8, maps)
            for row in range(len(real)):
                keep = real[row]
                expected[layer] += attr[row][:, keep][:, :, keep].flatten(1).max(-1).values
    assert torch.allclose(scores, expected, atol=1e-5)


def test_entropy_ignores_padding_and_matches_a_hand_computation():
    model = tiny("bert")
    b = batch()
    ids = torch.cat([b["input_ids"][:1, :5], b["input_ids"][:1, -1:]], 1)  # 6 real tokens
    alone = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": b["labels"][:1]}
    # the same row padded on the right (positions of the real tokens unchanged)
    right = {"input_ids": torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
             "attention_mask": torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], 1).long(), "labels": b["labels"][:1]}
    e_alone = attribution.attention_entropy(model, lambda: iter([alone]), examples=1)
    e_right = attribution.attention_entropy(model, lambda: iter([right]), examples=1)
    assert torch.allclose(e_alone, e_right, atol=1e-5)
    maps = attribution._maps(model, features(alone))
    by_hand = torch.stack([-(a[0] * a[0].log()).sum(-1).mean(-1) for a in maps])
    assert torch.allclose(e_alone, by_hand, atol=1e-5)
    assert (e_alone <= math.log(6) + 1e-6).all() and (e_alone >= 0).all()


@pytest.mark.parametrize("how", ["attattr", "entropy"])
def test_attention_map_orders_are_fixed_and_masked_lowest_first(how):
    model = tiny("bert")
    data = batches()
    order = structured.fixed_order(model, lambda: iter(data), how, examples=8, steps=4)
    rounds = []
    heads = structured.mask_heads(model, lambda: iter(data), 0.5, 1 / 12, how=how, log=lambda m: None,
                                  on_round=rounds.append, order=order)
    assert rounds == list(range(1, 7))
    masked = {(i, h) for i, hs in enumerate(heads) for h in hs}
    kept = [order[i, h] for i in range(3) for h in range(4) if (i, h) not in masked]
    # lowest first, except where a layer's last head had to stay
    for i, h in masked:
        assert order[i, h] <= max(kept) + 1e-12
    if how == "entropy":
        assert torch.allclose(order, -attribution.attention_entropy(tiny("bert"), lambda: iter(data), 8))


def test_attention_map_orders_refuse_t5_in_one_line():
    with pytest.raises(UserError, match="T5"):
        structured.fixed_order(tiny("t5"), lambda: iter(batches()), "attattr")


def test_order_diagnostic_replays_the_rounds_of_a_fixed_order(tmp_path):
    """recipes/head-pruning/diagnose_orders.py (the README's reading of the entropy order): it replays the masking
    of a once-scored order from results.json (lowest first, one head kept per layer) and ranks two orders."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "head-pruning" / "diagnose_orders.py"
    spec = importlib.util.spec_from_file_location("diagnose_orders", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scores = [[0.0, 1.0, 2.0], [0.5, 0.1, 3.0]]       # 2 layers x 3 heads
    # lowest first: (0,0) 0.0, (1,1) 0.1, (1,0) 0.5, then (0,1) 1.0 ... layer 1 stops at 2 of its 3 heads
    assert mod.replay(scores, [1, 3, 4]) == {1: [1, 0], 3: [1, 2], 4: [2, 2]}
    assert mod.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mod.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    for how, rows in (("entropy", scores), ("attattr", [[2.0, 1.0, 0.0], [3.0, 0.1, 0.5]])):
        run = tmp_path / f"method.head_importance={how}" / "seed1"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({
            "status": "completed", "config": {"method": {"pruner": "heads", "head_importance": how}},
            "dense": {"accuracy": 0.8}, "head_scores": rows,
            "curve": {"0": {"accuracy": 0.8}, "3": {"accuracy": 0.6}}}))
    out = subprocess.run([sys.executable, str(script), "--root", str(tmp_path), "--seed", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "entropy order (seed 1, dense 80.00)" in out and "75.0 | 1 2" in out
    assert "attattr vs entropy: -0.43" in out  # 1 - 6 * 50 / (6 * 35)
    missing = subprocess.run([sys.executable, str(script), "--root", str(tmp_path), "--seed", "2"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
