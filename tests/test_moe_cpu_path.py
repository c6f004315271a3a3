"""The MoEFFN CPU path (plm_kernels.torch_moe.moe_ffn_topk_torch, experts stored busiest first) gives the outputs
of the previous path and of the fp64 reference, on tiny and MiniLM-shaped models, with padded batches."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from plm_kernels import moe_ffn_dense_oracle
from runner.models import arch
from runner.moe import module, router, split
from tests.conftest import run_cli

CONFIGS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, expert=8),
    # MiniLM's FFN (384 / 1536, 48 experts of 32 neurons), one layer to keep the test quick
    "minilm": dict(hidden_size=384, num_hidden_layers=1, num_attention_heads=12, intermediate_size=1536, expert=32),
}


def build(shape: str, kind: str = "mlp"):
    cfg = dict(CONFIGS[shape])
    size = cfg.pop("expert")
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=100, max_position_embeddings=80,
                                                           num_labels=2, **cfg)).eval()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ffns = arch.ffns(model)
    d_ff = cfg["intermediate_size"]
    groups = {f.name: split.random_split(d_ff, d_ff // size, f.index) for f in ffns}
    routers = {f.name: router.build(kind, f.w_in.weight, groups[f.name]) for f in ffns}
    module.moefy(model, ffns, groups, routers)
    return model, dense


def padded_batch(rows: int = 3, seq: int = 40) -> dict:
    ids = torch.randint(3, 100, (rows, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 25:], ids[0, 25:] = 0, 0  # padding tokens, as a tokenizer pads a short sentence
    mask[1, 7:], ids[1, 7:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def moes(model) -> list[module.MoEFFN]:
    return [m for m in model.modules() if isinstance(m, module.MoEFFN)]


def run(model, batch, path: str):
    for m in moes(model):
        m.cpu_path = path
    with torch.no_grad():
        return model(**batch, output_hidden_states=True)


@pytest.mark.parametrize("shape", ["tiny", "minilm"])
def test_new_path_equals_previous_path_and_fp64_reference(shape):
    model, _ = build(shape)
    batch = padded_batch()
    num_experts = moes(model)[0].num_experts
    for ratio in (1 / num_experts, 0.25, 1.0):  # k = 1, 25%, every expert
        module.set_ratio(model, ratio)
        seen = []
        hooks = [m.register_forward_hook(lambda mod, a, out, seen=seen: seen.append((mod, a[0], out)))
                 for m in moes(model)]
        new = run(model, batch, "topk")
        for h in hooks:
            h.remove()
        old = run(model, batch, "general")
        torch.testing.assert_close(new.logits, old.logits, atol=1e-5, rtol=0)
        for a, b in zip(new.hidden_states, old.hidden_states, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        for mod, x, out in seen:  # each layer against the fp64 oracle on the same routing
            tokens = x.reshape(-1, x.shape[-1])
            with torch.no_grad():
                idx = mod.slot[torch.topk(mod.router(tokens, mod), mod.k, dim=1, sorted=False).indices]
            want = moe_ffn_dense_oracle(tokens, mod.w_in, mod.b_in, mod.w_out, mod.b_out, idx, activation="gelu")
            torch.testing.assert_close(out.reshape(-1, x.shape[-1]).double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", ["tiny", "minilm"])
def test_every_expert_equals_the_dense_model(shape):
    model, dense_state = build(shape)
    module.set_ratio(model, 1.0)
    dense = tf.BertForSequenceClassification(model.config).eval()
    dense.load_state_dict(dense_state)
    batch = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(run(model, batch, "topk").logits, dense(**batch).logits, atol=1e-5, rtol=0)


def test_ordering_experts_by_use_keeps_outputs_and_puts_the_busiest_first():
    model, _ = build("minilm")
    module.set_ratio(model, 0.25)
    batch = padded_batch()
    before = run(model, batch, "topk").logits
    moe = moes(model)[0]
    w_in = moe.w_in.clone()
    with torch.no_grad():
        tokens = model.bert.embeddings(batch["input_ids"]).reshape(-1, 384)  # not the real layer input; any
        chosen = torch.topk(moe.scores(tokens), moe.k, dim=1).indices      # input exercises the mapping
    assert module.order_experts_by_use(model, [batch]) == 1
    assert moe.reordered and not torch.equal(moe.w_in, w_in)
    torch.testing.assert_close(moe.w_in[moe.slot], w_in)  # router's expert e now lives in slot[e]
    torch.testing.assert_close(moe.w_in_t(), moe.w_in.transpose(1, 2))  # the cached copy followed
    torch.testing.assert_close(run(model, batch, "topk").logits, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(model, batch, "general").logits, before, atol=1e-5, rtol=0)
    with torch.no_grad():  # the same experts, now at their new slots
        again = moe.slot[torch.topk(moe.scores(tokens), moe.k, dim=1).indices]
    assert torch.equal(again.sort(1).values, moe.slot[chosen].sort(1).values)
    # busiest first: the use counted on the batch falls along the stored order
    seen = []
    hook = moe.register_forward_hook(lambda mod, a, out: seen.append(a[0]))
    run(model, batch, "topk")
    hook.remove()
    with torch.no_grad():
        x = seen[0].reshape(-1, 384)
        idx = moe.slot[torch.topk(moe.scores(x), moe.k, dim=1).indices]
    use = torch.bincount(idx.view(-1), minlength=moe.num_experts)
    assert torch.equal(use, use.sort(descending=True).values)


def test_reordering_refuses_the_oracle_router_and_bad_orders():
    model, _ = build("tiny", kind="gt")
    assert module.order_experts_by_use(model, [padded_batch()]) == 0  # gt layers are skipped
    moe = moes(model)[0]
    with pytest.raises(ValueError, match="gt router"):
        moe.reorder_experts(torch.arange(moe.num_experts).flip(0))
    mlp, _ = build("tiny")
    with pytest.raises(ValueError, match="permutation"):
        moes(mlp)[0].reorder_experts(torch.zeros(moes(mlp)[0].num_experts, dtype=torch.long))


def test_transposed_weight_cache_follows_the_weights():
    model, _ = build("tiny")
    moe = moes(model)[0]
    first = moe.w_in_t()
    assert moe.w_in_t() is first  # cached while w_in is unchanged
    with torch.no_grad():
        moe.w_in.mul_(2)
    torch.testing.assert_close(moe.w_in_t(), 2 * first)


def test_bench_breakdown_and_previous_path(tmp_path):
    out = run_cli("moe", "--only", "layer", "--layer-shape", "64,256", "--sizes", "32", "--ratios", "0.25",
                  "--repeats", "1", "--stat", "min", "--previous", "--breakdown", "--out", str(tmp_path),
                  module="runner.bench")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "32 previous |" in out.stdout and "where the time goes" in out.stdout
    data = json.loads((tmp_path / "moe.json").read_text())
    assert set(data["seconds"]["layer"]["1x64"]) == {"dense", "m32@0.25", "m32@0.25/prev"}
    stages = data["breakdown"]["layer"]["32x128"]["m32@0.25"]
    assert {"router", "topk", "index", "gemm1", "gemm2", "reduce", "ffn", "total"} <= set(stages)
    assert data["breakdown"]["layer"]["32x128"]["m32@0.25/prev"]["index"] > 0  # the old "sort" stage
