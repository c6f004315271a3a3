"""Triton kernels under TRITON_INTERPRET=1 on CPU tensors, against the fp64 references.

Shapes stay tiny: the interpreter costs ~10-25 ms per program instance.
"""

import pytest
import torch
from kernels_testlib import (
    INTERPRETER,
    assert_close_to,
    make_moe_problem,
    make_sparse_problem,
    moe_args,
    sparse_args,
)

import plm_kernels
from plm_kernels import moe_ffn, moe_ffn_dense_oracle, sparse_ffn, sparse_ffn_reference

pytestmark = [
    pytest.mark.triton_interpreter,
    pytest.mark.skipif(not INTERPRETER, reason="needs TRITON_INTERPRET=1 (set by conftest only without CUDA)"),
]

# (name, T, d, E, m, k, options); T is never a multiple of the 32-row block.
CASES = [
    ("basic", 37, 72, 6, 24, 3, {}),  # ragged m (24 < 32-wide tile) and d (72 = 2 * 32 + 8)
    ("duplicates", 20, 64, 4, 32, 4, dict(duplicates=True)),
    ("empty_experts", 29, 64, 8, 16, 2, dict(experts_used=[1, 3, 4])),
    ("one_token", 1, 64, 5, 32, 2, {}),
    ("k_equals_E", 19, 48, 4, 16, 4, {}),
    ("no_bias_m64", 33, 40, 3, 64, 2, dict(bias=False)),
]


def _config(fused):
    from plm_kernels.configs import INTERPRETER_CONFIG

    return dict(INTERPRETER_CONFIG, FUSED=fused)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
@pytest.mark.parametrize("weights", [True, False], ids=["gated", "ungated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_moe_kernels_match_reference(case, fused, reduce, weights, dtype):
    from plm_kernels.triton_moe import moe_ffn_triton

    _, T, d, E, m, k, opts = case
    p = make_moe_problem(T, d, E, m, k, dtype, weights=weights, **opts)
    y = moe_ffn_triton(*moe_args(p), "gelu", reduce, config=_config(fused))
    assert y.dtype == dtype and y.shape == (T, d)
    assert_close_to(y, moe_ffn_dense_oracle(*moe_args(p)), dtype)


@pytest.mark.parametrize("activation", plm_kernels.ACTIVATIONS)
def test_moe_public_api_forces_triton(activation):
    p = make_moe_problem(21, 40, 4, 16, 2)
    y = moe_ffn(*moe_args(p), activation=activation, impl="triton")
    assert_close_to(y, moe_ffn_dense_oracle(*moe_args(p), activation=activation), torch.float32)


def test_buffer_reduction_is_deterministic():
    p = make_moe_problem(37, 64, 6, 32, 3, duplicates=True)
    a = moe_ffn(*moe_args(p), impl="triton", reduce="buffer")
    b = moe_ffn(*moe_args(p), impl="triton", reduce="buffer")
    assert torch.equal(a, b)


def test_empty_routing_gives_the_output_bias():
    p = make_moe_problem(5, 32, 3, 16, 1)
    p["expert_idx"] = p["expert_idx"][:, :0]
    p["expert_weight"] = p["expert_weight"][:, :0]
    y = moe_ffn(*moe_args(p), impl="triton")
    torch.testing.assert_close(y, p["b_out"].expand(5, 32))


def test_bf16_is_refused_under_the_interpreter():
    p = make_moe_problem(4, 32, 2, 16, 1, torch.bfloat16)
    with pytest.raises(NotImplementedError, match="bf16"):
        moe_ffn(*moe_args(p), impl="triton")


def test_exactly_one_config_under_the_interpreter():
    from plm_kernels import configs
    from plm_kernels.triton_common import interpreter_active

    assert interpreter_active()
    assert len(configs.candidate_configs(32, 100.0, True)) == 1


@pytest.mark.parametrize("T", [1, 7, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_gemv_matches_reference(T, dtype, bias):
    p = make_sparse_problem(T, 72, 200, 77, dtype, bias=bias)
    y = sparse_ffn(*sparse_args(p), impl="triton")
    assert_close_to(y, sparse_ffn_reference(*sparse_args(p)), dtype)


@pytest.mark.parametrize("activation", plm_kernels.ACTIVATIONS)
def test_sparse_gemv_split_active_list(activation):
    from plm_kernels.triton_sparse import sparse_ffn_triton

    p = make_sparse_problem(3, 40, 300, 150, torch.float32)
    y = sparse_ffn_triton(*sparse_args(p), activation, splits=3)  # 3 programs share the 150 neurons
    assert_close_to(y, sparse_ffn_reference(*sparse_args(p), activation=activation), torch.float32)


def test_sparse_gemv_rejects_large_batches():
    p = make_sparse_problem(17, 32, 64, 8)
    with pytest.raises(ValueError, match="T <= 16"):
        sparse_ffn(*sparse_args(p), impl="triton")


@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_inputs_are_not_modified(reduce, fused):
    from plm_kernels.triton_moe import moe_ffn_triton

    p = make_moe_problem(1, 32, 3, 16, 2)  # T=1: a (1, d) view of b_out is contiguous
    before = {k: v.clone() for k, v in p.items()}
    moe_ffn_triton(*moe_args(p), "gelu", reduce, config=_config(fused))
    for key, value in p.items():
        assert torch.equal(value, before[key]), key


def test_forced_triton_refuses_autograd_and_auto_falls_back():
    p = make_moe_problem(6, 32, 3, 16, 2)
    p["x"].requires_grad_()
    with pytest.raises(NotImplementedError, match="no backward"):
        moe_ffn(*moe_args(p), impl="triton")
    with torch.no_grad():
        moe_ffn(*moe_args(p), impl="triton")  # fine without autograd


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
def test_bench_stage_launchers(fused, reduce):
    # the benchmark's per-stage Triton timing (CUDA-only in the CLI) driven here with a CPU clock
    from plm_kernels import bench

    p = make_moe_problem(20, 32, 4, 16, 2, weights=False)
    calls = []

    def time_one(fn):
        calls.append(fn())
        return 1.0

    stages = bench.triton_stages(p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"], reduce,
                                 _config(fused), time_one)
    assert list(stages) == ["align", "gemm1+2" if fused else "gemm1"] + ([] if fused else ["gemm2"]) + ["reduce"]
    assert_close_to(calls[-1], moe_ffn_dense_oracle(*moe_args(p)), torch.float32)
