"""The fp64 references against each other, and the torch path (what runs on CPU) against them."""

import pytest
import torch
from kernels_testlib import assert_close_to, make_moe_problem, make_sparse_problem, moe_args, sparse_args

import plm_kernels
from plm_kernels import (
    moe_ffn,
    moe_ffn_dense_oracle,
    moe_ffn_loop_reference,
    sparse_ffn,
    sparse_ffn_reference,
)
from plm_kernels.torch_moe import moe_ffn_torch

# (name, T, d, E, m, k, options): duplicates, empty experts, T=1, k=E, ragged m and d, no bias
CASES = [
    ("basic", 37, 72, 6, 24, 3, {}),
    ("duplicates", 20, 64, 4, 32, 4, dict(duplicates=True)),
    ("empty_experts", 29, 64, 8, 16, 2, dict(experts_used=[0, 2, 4, 6])),
    ("one_token", 1, 64, 5, 32, 2, {}),
    ("k_equals_E", 19, 48, 4, 16, 4, {}),
    ("no_bias", 33, 40, 3, 64, 2, dict(bias=False)),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("weights", [True, False], ids=["gated", "ungated"])
@pytest.mark.parametrize("activation", plm_kernels.ACTIVATIONS)
def test_references_agree(case, weights, activation):
    _, T, d, E, m, k, opts = case
    p = make_moe_problem(T, d, E, m, k, torch.float64, weights=weights, **opts)
    dense = moe_ffn_dense_oracle(*moe_args(p), activation=activation)
    loop = moe_ffn_loop_reference(*moe_args(p), activation=activation)
    torch.testing.assert_close(dense, loop, atol=1e-12, rtol=1e-12)


def test_reference_duplicate_expert_counts_twice():
    p = make_moe_problem(4, 16, 3, 8, 1, torch.float64, bias=False, weights=False)
    once = moe_ffn_dense_oracle(*moe_args(p))
    p["expert_idx"] = p["expert_idx"].repeat(1, 2)
    torch.testing.assert_close(moe_ffn_loop_reference(*moe_args(p)), 2 * once)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("weights", [True, False], ids=["gated", "ungated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_torch_path_matches_reference(case, weights, dtype):
    _, T, d, E, m, k, opts = case
    p = make_moe_problem(T, d, E, m, k, dtype, weights=weights, **opts)
    y = moe_ffn(*moe_args(p), impl="torch")
    assert y.dtype == dtype and y.shape == (T, d)
    assert_close_to(y, moe_ffn_dense_oracle(*moe_args(p)), dtype)
    assert torch.equal(moe_ffn(*moe_args(p)), y)  # impl="auto" on CPU tensors is the torch path


@pytest.mark.parametrize("activation", plm_kernels.ACTIVATIONS)
def test_torch_path_activations(activation):
    p = make_moe_problem(21, 32, 4, 16, 2)
    y = moe_ffn(*moe_args(p), activation=activation)
    assert_close_to(y, moe_ffn_loop_reference(*moe_args(p), activation=activation), torch.float32)


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_token_chunks_do_not_change_the_result(chunk):
    p = make_moe_problem(37, 48, 6, 16, 3, duplicates=True)
    y = moe_ffn_torch(*moe_args(p), chunk_tokens=chunk)
    assert_close_to(y, moe_ffn_dense_oracle(*moe_args(p)), torch.float32)


def test_stage_timings_are_reported():
    p = make_moe_problem(16, 32, 4, 8, 2)
    timings = {}
    moe_ffn_torch(*moe_args(p), timings=timings)
    assert set(timings) == {"sort", "gather", "gemm1", "gemm2", "reduce"}
    assert all(v >= 0 for v in timings.values())


@pytest.mark.parametrize("weights", [True, False], ids=["gated", "ungated"])
def test_torch_path_gradients_match_reference(weights):
    p = make_moe_problem(23, 24, 5, 8, 3, torch.float64, weights=weights, duplicates=True)
    leaves = [t.requires_grad_() for t in moe_args(p) if t is not None and t.is_floating_point()]
    probe = torch.randn(23, 24, dtype=torch.float64)
    got = torch.autograd.grad((moe_ffn(*moe_args(p)) * probe).sum(), leaves)
    want = torch.autograd.grad((moe_ffn_dense_oracle(*moe_args(p)) * probe).sum(), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_sparse_gradients_match_reference():
    p = make_sparse_problem(4, 16, 40, 9, torch.float64)
    leaves = [t.requires_grad_() for t in sparse_args(p) if t is not None and t.is_floating_point()]
    got = torch.autograd.grad(sparse_ffn(*sparse_args(p)).square().sum(), leaves)
    want = torch.autograd.grad(sparse_ffn_reference(*sparse_args(p)).square().sum(), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_zero_tokens():
    p = make_moe_problem(0, 16, 3, 8, 2)
    y = moe_ffn(*moe_args(p))
    assert y.shape == (0, 16)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 3, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sparse_ffn_torch(bias, T, dtype):
    p = make_sparse_problem(T, 48, 160, 37, dtype, bias=bias)
    y = sparse_ffn(*sparse_args(p), impl="torch")
    assert_close_to(y, sparse_ffn_reference(*sparse_args(p)), dtype)


def test_sparse_ffn_all_neurons_is_the_dense_ffn():
    p = make_sparse_problem(5, 32, 64, 64, torch.float64)
    p["neuron_idx"] = torch.arange(64)
    dense = torch.nn.functional.gelu(p["x"] @ p["w_in"].T + p["b_in"]) @ p["w_out_t"] + p["b_out"]
    torch.testing.assert_close(sparse_ffn(*sparse_args(p)), dense)


def test_bad_arguments_raise_value_error():
    p = make_moe_problem(4, 16, 3, 8, 2)
    with pytest.raises(ValueError, match="valid names: gelu, gelu_new, gelu_tanh, relu, silu"):
        moe_ffn(*moe_args(p), activation="swish")
    with pytest.raises(ValueError, match="reduce"):
        moe_ffn(*moe_args(p), reduce="sum")
    with pytest.raises(ValueError, match="impl"):
        moe_ffn(*moe_args(p), impl="cuda")
    with pytest.raises(ValueError, match="w_out"):
        moe_ffn(p["x"], p["w_in"], p["b_in"], p["w_out"][:, :4], p["b_out"], p["expert_idx"])
    with pytest.raises(ValueError, match="dtype of x"):
        moe_ffn(p["x"], p["w_in"].double(), p["b_in"], p["w_out"], p["b_out"], p["expert_idx"])
    with pytest.raises(ValueError, match="integer"):
        moe_ffn(p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"].float())
    with pytest.raises(ValueError, match="num_experts"):
        moe_ffn(p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"] + 3)
    s = make_sparse_problem(2, 16, 32, 4)
    with pytest.raises(ValueError, match="neuron_idx"):
        sparse_ffn(s["x"], s["w_in"], s["b_in"], s["w_out_t"], s["b_out"], torch.tensor([0, 32]))
    with pytest.raises(ValueError, match="valid names"):
        sparse_ffn(*sparse_args(s), activation="tanh")
