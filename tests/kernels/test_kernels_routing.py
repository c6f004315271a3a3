"""route_topk and align (pure torch, CPU)."""

import pytest
import torch

from plm_kernels import align, route_topk


def test_route_topk_picks_highest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [2.0, -1.0, 3.0, 0.0]])
    idx, w = route_topk(scores, 2)
    assert idx.tolist() == [[1, 2], [2, 0]]
    assert torch.equal(w, torch.tensor([[0.9, 0.5], [3.0, 2.0]]))
    _, ws = route_topk(scores, 2, softmax=True)
    torch.testing.assert_close(ws.sum(1), torch.ones(2))


@pytest.mark.parametrize("k", [0, 5])
def test_route_topk_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        route_topk(torch.rand(3, 4), k)


def _check_alignment(expert_idx, E, block_m):
    ids, block_expert, num_padded = align(expert_idx, E, block_m)
    num_pairs = expert_idx.numel()
    flat = expert_idx.reshape(-1).long()
    assert ids.dtype == torch.int32 and block_expert.dtype == torch.int32
    assert ids.numel() == num_padded == block_expert.numel() * block_m
    real = ids[ids < num_pairs].long()
    assert sorted(real.tolist()) == list(range(num_pairs))  # every pair exactly once
    assert torch.all(ids[ids >= num_pairs] == num_pairs)  # padding is the sentinel
    counts = torch.bincount(flat, minlength=E)
    expected_blocks = (counts + block_m - 1) // block_m
    assert torch.equal(torch.bincount(block_expert.long(), minlength=E), expected_blocks)
    for b, e in enumerate(block_expert.tolist()):
        rows = ids[b * block_m:(b + 1) * block_m].long()
        rows = rows[rows < num_pairs]
        assert torch.all(flat[rows] == e)  # a block holds one expert only
        assert torch.all(rows[1:] > rows[:-1])  # ascending pair (token) order
    # padding only at the end of each expert's list
    assert torch.equal(block_expert.sort().values, block_expert)
    return ids, block_expert, num_padded


@pytest.mark.parametrize("T,E,k,block_m", [(37, 6, 3, 4), (1, 8, 2, 16), (10, 4, 4, 3), (64, 16, 1, 16)])
def test_align_properties(T, E, k, block_m):
    g = torch.Generator().manual_seed(T)
    idx = torch.rand(T, E, generator=g).argsort(1)[:, :k]
    _check_alignment(idx, E, block_m)


def test_align_duplicates_and_empty_experts():
    idx = torch.tensor([[2, 2, 5], [5, 2, 2]])  # experts 0, 1, 3, 4, 6 empty; duplicates in a row
    ids, block_expert, num_padded = _check_alignment(idx, 7, 2)
    assert block_expert.tolist() == [2, 2, 5]
    assert ids.tolist() == [0, 1, 4, 5, 2, 3]


def test_align_matches_hand_computed_example():
    idx = torch.tensor([[1, 0], [1, 2], [0, 1]])  # pair p = 2 * token + slot, sentinel 6
    ids, block_expert, num_padded = align(idx, 3, 2)
    # expert 0: pairs 1, 4; expert 1: pairs 0, 2, 5 (+ 1 pad); expert 2: pair 3 (+ 1 pad)
    assert num_padded == 8
    assert ids.tolist() == [1, 4, 0, 2, 5, 6, 3, 6]
    assert block_expert.tolist() == [0, 1, 1, 2]


def test_align_rejects_out_of_range_experts():
    with pytest.raises(ValueError, match="num_experts"):
        align(torch.tensor([[0, 4]]), 4, 16)
    with pytest.raises(RuntimeError):
        align(torch.tensor([[0, -1]]), 4, 16)
