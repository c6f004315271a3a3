"""Pruning blocks: the cubic schedule, masks (exact sparsity, masked forward = zeroed weights, straight-through
scores), head/FFN importance, physical removal against the gated reference, and save/reload of a pruned model."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

from runner.errors import UserError
from runner.models import arch
from runner.prune import masks, plan, structured
from runner.prune.schedule import CubicSchedule

VOCAB = 100
BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=40, initializer_range=0.2, num_labels=2)
TINY = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**BERT_LIKE)),
    "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**BERT_LIKE, pad_token_id=1)),
    "electra": lambda: tf.ElectraForSequenceClassification(tf.ElectraConfig(**BERT_LIKE, embedding_size=16)),
    "t5": lambda: tf.T5ForSequenceClassification(tf.T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
        num_labels=2, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)),
}
BERT_FAMILIES = ["bert", "roberta", "electra"]


def tiny(family: str):
    torch.manual_seed(0)
    return TINY[family]().eval()


def batch(seq: int = 9, seed: int = 1) -> dict:
    ids = torch.randint(3, VOCAB, (4, seq), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = 1
    mask = torch.ones_like(ids)
    ids[0, 5:-1], mask[0, 5:-1] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def logits(model, seed: int = 1) -> torch.Tensor:
    with torch.no_grad():
        b = batch(seed=seed)
        b.pop("labels")
        return model(**b).logits


def batches():
    return [batch(seed=s) for s in range(3)]


# ---------------------------------------------------------------------------------------------------------
# Schedule


def test_cubic_schedule_values():
    s = CubicSchedule(final=0.9, total_steps=100, warmup=0.1, end=0.6)
    assert s(0) == 0 and s(10) == 0                     # warm-up: dense
    assert s(60) == pytest.approx(0.9) and s(100) == pytest.approx(0.9)  # reached at 60%, then fixed
    # midway (t=35): s_f + (s_i - s_f)(1 - 25/50)^3 = 0.9 - 0.9 / 8
    assert s(35) == pytest.approx(0.9 - 0.9 / 8)
    values = [s(t) for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert CubicSchedule(final=0.5, total_steps=10, warmup=0.0, end=1.0, initial=0.2)(0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        CubicSchedule(final=0.5, total_steps=10, warmup=0.7, end=0.5)


# ---------------------------------------------------------------------------------------------------------
# Masks


def test_select_defaults_to_encoder_linears():
    model = tiny("bert")
    chosen = masks.select(model, ["attention", "ffn"])
    assert len(chosen) == 3 * 6
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in chosen)
    assert list(masks.select(model, [r"classifier"])) == ["classifier"]
    with pytest.raises(UserError):
        masks.select(model, ["nothing-matches"])


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("target", [0.0, 0.37, 0.9, 0.97])
def test_magnitude_masks_reach_the_target_exactly(scope, target):
    model = tiny("bert")
    chosen = masks.select(model, ["attention", "ffn"])
    masks.attach(chosen, "magnitude")
    masks.update_magnitude(chosen, target, scope)
    measured = masks.sparsity(chosen)
    total = measured["pruned_parameters"]
    assert measured["zeros"] == int(round(target * total)) or scope == "local"
    if scope == "local":
        for name, module in chosen.items():
            n = module.weight.numel()
            assert measured["per_matrix"][name] == (n - masks.keep_count(n, target)) / n
    else:  # global: the pruned entries are the globally smallest
        kept = torch.cat([module.weight.flatten() for module in chosen.values()])
        dense = torch.cat([masks.original(m).flatten() for m in chosen.values()]).abs()
        if 0 < target:
            assert dense[kept == 0].max() <= dense[kept != 0].min()


@pytest.mark.parametrize("pruner", ["magnitude", "movement"])
def test_masked_forward_equals_dense_forward_with_zeroed_weights(pruner):
    model = tiny("bert")
    reference = copy.deepcopy(model)
    chosen = masks.select(model, ["attention", "ffn"])
    found = masks.attach(chosen, pruner)
    if pruner == "magnitude":
        masks.update_magnitude(chosen, 0.6)
    else:
        for m in found.values():
            torch.nn.init.normal_(m.scores)
        masks.set_level(found, 0.6)
    with torch.no_grad():
        ref_mods = dict(reference.named_modules())
        for name, module in chosen.items():
            ref_mods[name].weight.copy_(masks.original(module) * (module.weight != 0))
    assert torch.allclose(logits(model), logits(reference), atol=1e-6)
    assert masks.sparsity(chosen)["overall"] == pytest.approx(0.6, abs=1e-3)
    masks.bake(chosen)  # what is saved: the plain masked weights
    assert not any(".parametrizations." in k for k in model.state_dict())
    assert torch.allclose(logits(model), logits(reference), atol=1e-6)


def test_movement_scores_get_gradients_through_the_straight_through_topk():
    model = tiny("bert").train()
    chosen = masks.select(model, ["ffn"])
    found = masks.attach(chosen, "movement")
    for m in found.values():
        torch.nn.init.normal_(m.scores)
    masks.set_level(found, 0.5)
    model(**batch()).loss.backward()
    for name, module in chosen.items():
        mask = found[name]
        w = masks.original(module)
        assert mask.scores.grad is not None and mask.scores.grad.abs().sum() > 0
        # STE: dL/dS = dL/dW' * W, also for the pruned entries (they can come back)
        pruned = mask.mask() == 0
        assert mask.scores.grad[pruned].abs().sum() > 0
        grad_w_eff = w.grad / mask.mask().clamp(min=1e-30)  # dL/dW = M * dL/dW'
        kept = ~pruned
        assert torch.allclose(mask.scores.grad[kept], (grad_w_eff * w.detach())[kept], atol=1e-6)


def test_soft_movement_threshold_penalty_and_min_keep():
    model = tiny("bert").train()
    chosen = masks.select(model, ["ffn"])
    found = masks.attach(chosen, "soft_movement")
    for m in found.values():
        torch.nn.init.normal_(m.scores)
    masks.set_level(found, 0.5)  # sigmoid(S) > 0.5 <=> S > 0
    for m in found.values():
        assert torch.equal(m.mask(), (m.scores > 0).float())
    loss = model(**batch()).loss + masks.penalty(found)
    loss.backward()
    assert all(m.scores.grad.abs().sum() > 0 for m in found.values())
    masks.set_level(found, 0.9999999)  # nearly nothing passes: the min_keep floor holds
    for m in found.values():
        assert int(m.mask().sum()) == max(1, round(0.005 * m.scores.numel()))


# ---------------------------------------------------------------------------------------------------------
# Structured


@pytest.mark.parametrize("family", BERT_FAMILIES)
def test_physically_pruned_model_equals_gated_model_and_reloads(family, tmp_path):
    model = tiny(family)
    heads = structured.mask_heads(model, batches, fraction=0.4, step=0.2, log=lambda m: None)
    assert sum(map(len, heads)) == round(0.4 * 12) and all(len(h) < 4 for h in heads)
    keep = structured.select_neurons(structured.ffn_importance(model, "taylor", batches), 0.5)
    structured.gate_neurons(model, keep)
    gated = logits(model)
    structured.prune_masked(model, heads, keep)
    sizes = arch.layer_sizes(model)
    assert sizes["heads"] == [4 - len(h) for h in heads] and sizes["ffn"] == [32, 32, 32]
    assert torch.allclose(logits(model), gated, atol=1e-5)
    assert not any("gate" in k for k in model.state_dict())
    model.save_pretrained(tmp_path)
    plan.save_plan(model, tmp_path)
    loaded = plan.load_pruned(tmp_path)
    assert torch.allclose(logits(loaded), gated, atol=1e-5)
    assert arch.layer_sizes(loaded) == sizes


def test_gate_values_are_folded_and_iterative_prune_uses_original_ids():
    model = tiny("bert")
    atts = arch.attentions(model, "self", "encoder")
    atts[0].set_head_gate(torch.tensor([0.5, 0.0, 2.0, 1.0]))
    reference = logits(model)
    arch.prune_heads(model, {0: [1]})
    assert torch.allclose(logits(model), reference, atol=1e-5)
    arch.prune_heads(model, {0: [3]})  # original id 3, now at position 2
    assert arch.kept_heads(arch.attentions(model, "self", "encoder")[0]) == [0, 2]
    with pytest.raises(UserError, match="no head"):
        arch.prune_heads(model, {0: [1]})


def test_pruning_every_head_of_a_layer_refused_unless_allowed():
    model = tiny("bert")
    with pytest.raises(UserError, match="every head of layer 1") as err:
        arch.prune_heads(model, {1: [0, 1, 2, 3]})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="empties a layer"):
        structured.mask_heads(model, batches, fraction=0.9, step=0.5, log=lambda m: None)
    structured.set_head_gates(model, torch.tensor([[1.0] * 4, [0.0] * 4, [1.0, 0, 1, 1]]))
    gated = logits(model)
    structured.prune_masked(model, [[], [0, 1, 2, 3], [1]], None, allow_empty=True)
    assert arch.layer_sizes(model)["heads"] == [4, 0, 3]
    assert torch.allclose(logits(model), gated, atol=1e-5)


def test_t5_ffn_pruning_works_and_head_pruning_is_refused(tmp_path):
    model = tiny("t5")
    keep = structured.select_neurons(structured.ffn_importance(model, "magnitude"), 0.25)
    structured.gate_neurons(model, keep)
    gated = logits(model)
    structured.prune_masked(model, None, keep)
    assert torch.allclose(logits(model), gated, atol=1e-5)
    model.save_pretrained(tmp_path)
    plan.save_plan(model, tmp_path)
    assert torch.allclose(logits(plan.load_pruned(tmp_path)), gated, atol=1e-5)
    with pytest.raises(UserError, match="not supported for T5"):
        arch.prune_heads(model, {0: [0]})


def test_global_neuron_selection_keeps_a_neuron_per_layer():
    imp = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.001, 0.002, 0.0, 0.0])]
    keep = structured.select_neurons(imp, 0.75, "global")
    assert all(keep) and sum(map(len, keep)) >= 2
    assert structured.select_neurons(imp, 0.5, "layer") == [[2, 3], [0, 1]]


def test_magnitude_head_masking_is_one_round_of_the_smallest_heads():
    model = tiny("bert")
    imp = structured.head_magnitude(model)
    heads = structured.mask_heads(model, None, fraction=0.25, step=0.1, how="magnitude", log=lambda m: None)
    masked = [(i, h) for i, hs in enumerate(heads) for h in hs]
    assert len(masked) == 3
    kept_min = min(imp[i, h] for i in range(3) for h in range(4) if (i, h) not in masked)
    assert all(imp[i, h] <= kept_min for i, h in masked)
    with pytest.raises(UserError, match="head_importance"):
        structured.mask_heads(tiny("bert"), None, 0.25, 0.1, how="taylor")


def test_random_head_order_is_seeded_masked_in_rounds_and_keeps_a_head_per_layer():
    rounds = []
    model = tiny("bert")  # 3 layers x 4 heads
    heads = structured.mask_heads(model, None, fraction=0.75, step=1 / 12, how="random", seed=5,
                                  log=lambda m: None, on_round=rounds.append)
    assert rounds == list(range(1, 10))  # one head per round, as the gradient curve's rounds
    assert sum(map(len, heads)) == 9 and all(len(h) == 3 for h in heads)  # at least one head left per layer
    # the masked heads follow the seeded order, lowest first, skipping a layer's last head
    order = structured.random_order(3, 4, 5)
    expected, gates = [], torch.ones(3, 4)
    for flat in torch.argsort(order.flatten()).tolist():
        layer, head = divmod(flat, 4)
        if len(expected) < 9 and int(gates[layer].sum()) > 1:
            gates[layer, head] = 0
            expected.append((layer, head))
    assert sorted((i, h) for i, hs in enumerate(heads) for h in hs) == sorted(expected)
    again = structured.mask_heads(tiny("bert"), None, 0.75, 1 / 12, how="random", seed=5, log=lambda m: None)
    assert again == heads
    others = [structured.mask_heads(tiny("bert"), None, 0.5, 1 / 12, how="random", seed=s, log=lambda m: None)
              for s in (1, 2, 3)]
    assert len({str(h) for h in others}) > 1  # other seeds, other orders
    assert torch.equal(structured.random_order(3, 4, 7), structured.random_order(3, 4, 7))


def test_t5_selection_is_encoder_unless_the_decoder_is_named():
    model = tiny("t5")
    enc = masks.select(model, ["attention", "ffn"])
    assert enc and all(".encoder." in n for n in enc)
    dec = masks.select(model, ["decoder_attention", "decoder_ffn"])
    assert dec and all(".decoder." in n for n in dec)
    assert any("EncDecAttention" in n for n in dec)
