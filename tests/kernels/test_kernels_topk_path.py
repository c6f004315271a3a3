"""plm_kernels.torch_moe.moe_ffn_topk_torch (the CPU path of MoEFFN) against the fp64 references: both of its
strategies for the experts not computed densely (segmented padded bmm, expert loop, grouped GEMM), k=1 and k=E,
skewed routing, MiniLM shapes, fallbacks."""

import pytest
import torch
from kernels_testlib import assert_close_to, make_moe_problem, moe_args

import plm_kernels
from plm_kernels import moe_ffn_dense_oracle, moe_ffn_loop_reference
from plm_kernels.torch_moe import (
    dense_prefix,
    grouped_mm_usable,
    moe_ffn_topk_torch,
    moe_ffn_torch,
    padded_layout,
    topk_ranks,
)

# options that force one strategy for the experts after the dense prefix
PADDED = dict(grouped_rows=0, padded_slack=10**9)
LOOP = dict(grouped_rows=0, padded_slack=0)
GROUPED = dict(grouped_rows=10**9)
STRATEGIES = [PADDED, LOOP, GROUPED]
STRATEGY_IDS = ["padded", "loop", "grouped"]

# (name, T, d, E, m, k, options)
CASES = [
    ("basic", 37, 72, 6, 24, 3, {}),
    ("k1", 29, 64, 8, 16, 1, {}),
    ("k_equals_E", 19, 48, 4, 16, 4, {}),
    ("one_token", 1, 64, 5, 32, 2, {}),
    ("empty_experts", 29, 64, 8, 16, 2, dict(experts_used=[0, 2, 4, 6])),
    ("no_bias", 33, 40, 3, 64, 2, dict(bias=False)),
    ("minilm_sentence", 64, 384, 48, 32, 12, {}),
]
CASE_IDS = [c[0] for c in CASES]


def args(p):
    return moe_args(p)[:6]  # no gates: top-k routing in MoEfication is ungated


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("segment", [1, 3, 8, 1000])
@pytest.mark.parametrize("dense_share", [0.0, 0.2, 2.0], ids=["all_dense", "some_dense", "none_dense"])
def test_topk_path_matches_reference(case, strategy, segment, dense_share):
    _, T, d, E, m, k, opts = case
    p = make_moe_problem(T, d, E, m, k, weights=False, **opts)
    y = moe_ffn_topk_torch(*args(p), **strategy, segment=segment, dense_share=dense_share)
    assert y.shape == (T, d) and y.dtype == torch.float32
    assert_close_to(y, moe_ffn_dense_oracle(*args(p)), torch.float32)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("activation", plm_kernels.ACTIVATIONS)
def test_topk_path_activations_and_float64(strategy, activation):
    for dtype in (torch.float32, torch.float64):  # grouped GEMMs take fp32 only: float64 goes another way
        p = make_moe_problem(21, 32, 6, 16, 2, dtype, weights=False)
        y = moe_ffn_topk_torch(*args(p), activation, **strategy)
        assert_close_to(y, moe_ffn_loop_reference(*args(p), activation=activation), dtype)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=STRATEGY_IDS)
def test_skewed_routing_minilm_batch(strategy):
    """MiniLM shape at 25% with the skew a real router has (a few experts take most tokens, some none)."""
    T, d, E, m, k = 300, 384, 48, 32, 12
    p = make_moe_problem(T, d, E, m, k, weights=False)
    g = torch.Generator().manual_seed(3)
    popularity = torch.rand(E, generator=g) ** 4
    p["expert_idx"] = torch.multinomial(popularity.expand(T, E), k, generator=g)
    counts = torch.bincount(p["expert_idx"].view(-1), minlength=E)
    assert counts.max() > 3 * counts.float().mean() and (counts == 0).any()
    want = moe_ffn_dense_oracle(*args(p))
    assert_close_to(moe_ffn_topk_torch(*args(p), **strategy, segment=8), want, torch.float32)
    # busiest first, as MoEFFN.reorder_experts stores them: the leading experts go the dense, masked way
    order = counts.argsort(descending=True)
    p["w_in"], p["b_in"], p["w_out"] = p["w_in"][order], p["b_in"][order], p["w_out"][order]
    p["expert_idx"] = order.argsort()[p["expert_idx"]]
    if strategy is GROUPED:  # all grouped below the mean rows per expert; above it only the rest after the prefix
        timings = {}
        assert_close_to(moe_ffn_topk_torch(*args(p), **strategy, timings=timings), want, torch.float32)
        assert "dense" not in timings
        tail = counts.sort(descending=True).values[dense_prefix(counts.sort(descending=True).values.tolist(), T, 0.35):]
        strategy = dict(grouped_rows=int(tail.float().mean()) + 1)
        assert T * k > strategy["grouped_rows"] * E
    timings = {}
    y = moe_ffn_topk_torch(*args(p), **strategy, segment=8, dense_share=0.35, timings=timings)
    assert timings["dense"] > 0
    assert_close_to(y, want, torch.float32)


def test_w_in_t_and_chunks_do_not_change_the_result():
    p = make_moe_problem(50, 32, 6, 8, 3, weights=False)
    want = moe_ffn_topk_torch(*args(p))
    w_in_t = p["w_in"].transpose(1, 2).contiguous()
    torch.testing.assert_close(moe_ffn_topk_torch(*args(p), w_in_t=w_in_t), want, atol=1e-6, rtol=0)
    for chunk in (1, 7, 50):
        got = moe_ffn_topk_torch(*args(p), w_in_t=w_in_t, chunk_tokens=chunk)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_same_result_as_the_general_torch_path():
    """The previous CPU path (argsort + per-expert loop) and every strategy agree to fp32 rounding."""
    p = make_moe_problem(64, 384, 48, 32, 12, weights=False)
    general = moe_ffn_torch(*args(p), None)
    for strategy in STRATEGIES:
        torch.testing.assert_close(moe_ffn_topk_torch(*args(p), **strategy), general, atol=1e-6, rtol=0)


def test_grouped_gemms_only_where_the_op_takes_the_shapes():
    assert grouped_mm_usable(torch.zeros(2, 384), 32)
    assert not grouped_mm_usable(torch.zeros(2, 384, dtype=torch.float64), 32)  # fp32 rows only
    assert not grouped_mm_usable(torch.zeros(2, 30), 32) and not grouped_mm_usable(torch.zeros(2, 32), 6)
    p = make_moe_problem(17, 30, 4, 6, 2, weights=False)  # strides of 120 and 24 bytes: another strategy
    assert_close_to(moe_ffn_topk_torch(*args(p), **GROUPED), moe_ffn_dense_oracle(*args(p)), torch.float32)


def test_fallbacks_duplicates_gradients_half_and_empty():
    dup = make_moe_problem(20, 32, 4, 8, 4, weights=False, duplicates=True)
    assert topk_ranks(dup["expert_idx"], 4) is None  # a token lists an expert twice: the one-hot undercounts
    assert_close_to(moe_ffn_topk_torch(*args(dup)), moe_ffn_dense_oracle(*args(dup)), torch.float32)
    half = make_moe_problem(9, 32, 4, 8, 2, torch.float16, weights=False)
    assert_close_to(moe_ffn_topk_torch(*args(half)), moe_ffn_dense_oracle(*args(half)), torch.float16)
    p = make_moe_problem(9, 16, 4, 8, 2, torch.float64, weights=False)
    x = p["x"].clone().requires_grad_()
    (moe_ffn_topk_torch(x, *args(p)[1:]) ** 2).sum().backward()
    want = torch.autograd.grad((moe_ffn_dense_oracle(x, *args(p)[1:]) ** 2).sum(), x)[0]
    torch.testing.assert_close(x.grad, want)
    empty = make_moe_problem(0, 16, 3, 8, 2, weights=False)
    assert moe_ffn_topk_torch(*args(empty)).shape == (0, 16)


def test_ranks_and_padded_layout_by_hand():
    idx = torch.tensor([[2, 0], [0, 1], [2, 1]])
    _, rank, counts, onehot = topk_ranks(idx, 4)
    assert onehot.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]]
    assert counts == [2, 2, 2, 0]
    assert rank.tolist() == [[0, 0], [1, 0], [1, 1]]  # tokens keep their order inside an expert
    caps, base, rows = padded_layout([5, 1, 0, 2, 2], segment=2)
    assert caps == [5, 2, 2] and base == [0, 5, 10, 12, 14] and rows == 16


def test_stage_timings_are_reported():
    p = make_moe_problem(16, 32, 4, 8, 2, weights=False)
    for strategy, share, stages in ((PADDED, 2.0, {"index", "gather", "gemm1", "gemm2", "reduce"}),
                                    (LOOP, 2.0, {"index", "gather", "gemm1", "gemm2", "reduce"}),
                                    (GROUPED, 2.0, {"index", "gather", "gemm1", "gemm2", "reduce"}),
                                    (LOOP, 0.0, {"index", "dense"})):
        timings = {}
        moe_ffn_topk_torch(*args(p), **strategy, dense_share=share, timings=timings)
        assert set(timings) == stages
        assert all(v >= 0 for v in timings.values())


def test_dense_prefix():
    assert dense_prefix([9, 5, 4, 6], tokens=10, share=0.5) == 2  # stops at the first expert below the share
    assert dense_prefix([9, 5], tokens=10, share=2.0) == 0
    assert dense_prefix([0, 0], tokens=10, share=0.0) == 0  # unused experts are never computed
