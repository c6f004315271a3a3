"""The CUDA-graph inference path: bucketing and padding on CPU (eager), capture and replay on a GPU."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from runner.errors import UserError
from runner.models import arch
from runner.moe import cuda_graph, module, router, split
from runner.moe.cuda_graph import GraphedModel, batch_bucket, cut, length_bucket, pad_batch

VOCAB = 100


def moefied_bert(ratio: float = 0.5):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=80, initializer_range=0.2, num_labels=3)).eval()
    ffns = arch.ffns(model)
    groups = {f.name: split.random_split(64, 8, f.index) for f in ffns}
    routers = {f.name: router.build("mlp", f.w_in.weight, groups[f.name]) for f in ffns}
    module.moefy(model, ffns, groups, routers, ratio)
    return model


def batch(b: int, L: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, L), generator=g)
    mask = torch.ones_like(ids)
    if b > 1:
        ids[1, L // 2:], mask[1, L // 2:] = 0, 0  # a row with its own padding
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_batch_and_length_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 32, 33, 256)] == [1, 2, 4, 8, 32, 64, 256]
    assert batch_bucket(300) == 512 and batch_bucket(7, (4, 16)) == 16
    assert [length_bucket(n) for n in (1, 32, 33, 128)] == [32, 32, 64, 128]
    assert length_bucket(10, 8) == 16
    with pytest.raises(ValueError, match="positive"):
        batch_bucket(0)


def test_pad_batch_masks_the_padding():
    inputs = batch(3, 5)
    padded = pad_batch(inputs, 4, 8, pad_token_id=0)
    assert {k: tuple(v.shape) for k, v in padded.items()} == dict.fromkeys(inputs, (4, 8))
    assert torch.equal(padded["input_ids"][:3, :5], inputs["input_ids"])
    assert torch.all(padded["input_ids"][3] == 0) and torch.all(padded["input_ids"][:, 5:] == 0)
    assert torch.equal(padded["attention_mask"][:3, :5], inputs["attention_mask"])
    assert padded["attention_mask"][:, 5:].sum() == 0
    assert padded["attention_mask"][3].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # no fully masked row
    no_mask = pad_batch({"input_ids": inputs["input_ids"]}, 4, 8)
    assert no_mask["attention_mask"][:3].sum() == 15 and no_mask["attention_mask"][3, 0] == 1
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch(inputs, 2, 8)


def test_cut_keeps_the_real_rows():
    assert cut(torch.zeros(4, 3), 3, 5, 8).shape == (3, 3)  # per sequence
    assert cut(torch.zeros(4, 8), 3, 5, 8).shape == (3, 8)  # 8 labels, not 8 positions
    assert cut(torch.zeros(4, 8, 6), 3, 5, 8).shape == (3, 5, 6)  # per token


@pytest.mark.parametrize("b,L", [(1, 7), (3, 13), (5, 32), (2, 40)])
def test_padded_eager_equals_the_plain_model(b, L):
    model = moefied_bert()
    inputs = batch(b, L, seed=b + L)
    with torch.no_grad():
        want = model(**inputs).logits
    runner = GraphedModel(model, length_step=16)
    assert not runner.graphs  # a CPU model runs eagerly
    got = runner(**inputs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    hidden = GraphedModel(model.bert, output="last_hidden_state", length_step=16)(**inputs)
    with torch.no_grad():
        torch.testing.assert_close(hidden, model.bert(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_graphs_are_refused_on_cpu():
    with pytest.raises(UserError, match="CUDA device"):
        GraphedModel(moefied_bert(), graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replay_equals_eager_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = moefied_bert().cuda()
    runner = GraphedModel(model, length_step=16)
    assert runner.graphs
    for b, L, seed in [(3, 13, 0), (4, 9, 1), (3, 13, 2), (20, 30, 3)]:
        inputs = {k: v.cuda() for k, v in batch(b, L, seed).items()}
        with torch.no_grad():
            want = model(**inputs).logits
        torch.testing.assert_close(runner(**inputs), want, atol=1e-4, rtol=1e-4)
    # (3, 13) and (4, 9) share the bucket (4, 16): two graphs for three shapes
    assert set(runner.captured) == {(4, 16), (32, 32)}
    assert cuda_graph.BATCH_BUCKETS[-1] == 256
