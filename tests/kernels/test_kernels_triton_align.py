"""The device align (plm_kernels.triton_align) against plm_kernels.routing.align, and the Triton MoE path using it.

Under TRITON_INTERPRET=1 on CPU (compiled on a GPU machine with `pytest -m gpu`).
"""

import pytest
import torch
from kernels_testlib import INTERPRETER, assert_close_to, make_moe_problem, moe_args

from plm_kernels import moe_ffn_dense_oracle
from plm_kernels.routing import align

pytestmark = pytest.mark.skipif(not INTERPRETER and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a CUDA device")
DEVICE = "cpu" if INTERPRETER else "cuda"


def _routing(T, E, k, seed, experts_used=None, duplicates=False):
    g = torch.Generator().manual_seed(seed)
    pool = torch.arange(E) if experts_used is None else torch.as_tensor(experts_used)
    if duplicates:
        return pool[torch.randint(0, len(pool), (T, k), generator=g)]
    return pool[torch.rand(T, len(pool), generator=g).argsort(1)[:, :k]]


def _check_exact(idx, E, block_m, **launch):
    from plm_kernels.triton_align import align_device, padded_bound

    T, k = idx.shape
    ids, block_expert, bound, total = align_device(idx.to(DEVICE), E, block_m, **launch)
    ref_ids, ref_blocks, n = align(idx, E, block_m)
    ids, block_expert = ids.cpu(), block_expert.cpu()
    assert bound == padded_bound(T * k, E, block_m) >= n
    assert ids.shape == (bound,) and block_expert.shape == (bound // block_m,)
    assert int(total) == n
    assert torch.equal(ids[:n], ref_ids)  # the same order as the torch align, pair for pair
    assert torch.all(ids[n:] == T * k)  # the rest is the sentinel
    assert torch.equal(block_expert[:n // block_m], ref_blocks)
    assert torch.all(block_expert[n // block_m:] == -1)


# (T, E, k, block_m)
SHAPES = [(37, 6, 3, 4), (1, 8, 2, 16), (10, 4, 4, 3), (64, 16, 1, 16), (5, 7, 1, 64), (300, 96, 24, 32),
          (129, 3, 2, 128), (50, 200, 8, 16)]


@pytest.mark.parametrize("T,E,k,block_m", SHAPES, ids=lambda v: str(v))
def test_device_align_matches_torch_align(T, E, k, block_m):
    _check_exact(_routing(T, E, k, seed=T + E), E, block_m)


@pytest.mark.parametrize("max_chunks,tile", [(1, 16), (7, 16), (64, 32), (3, 256)])
def test_device_align_launch_shapes(max_chunks, tile):
    # many chunks, many tiles per chunk, and one chunk: the chunk prefix sums and in-tile ranks
    _check_exact(_routing(211, 12, 3, seed=1), 12, 16, max_chunks=max_chunks, tile=tile)


def test_device_align_empty_experts_and_duplicates():
    _check_exact(_routing(45, 9, 2, seed=2, experts_used=[0, 4, 8]), 9, 8)  # experts 1-3, 5-7 get nothing
    _check_exact(_routing(30, 5, 4, seed=3, duplicates=True), 5, 4)  # a token may list an expert twice
    _check_exact(torch.tensor([[2, 2, 5], [5, 2, 2]]), 7, 2)


def test_device_align_hand_computed_example():
    from plm_kernels.triton_align import align_device

    ids, block_expert, bound, total = align_device(torch.tensor([[1, 0], [1, 2], [0, 1]], device=DEVICE), 3, 2)
    # bound = 6 pairs + 3 experts * (2 - 1) = 9, rounded up to 10; real padded length 8
    assert bound == 10 and int(total) == 8
    assert ids.tolist() == [1, 4, 0, 2, 5, 6, 3, 6, 6, 6]
    assert block_expert.tolist() == [0, 1, 1, 2, -1]


def test_device_align_drops_out_of_range_experts():
    from plm_kernels.triton_align import align_device

    # no host sync, so no exception: pairs naming expert 4 (of 4) or -1 are left out
    ids, block_expert, bound, total = align_device(torch.tensor([[0, 4], [-1, 0]], device=DEVICE), 4, 2)
    assert int(total) == 2
    assert ids[:2].tolist() == [0, 3] and torch.all(ids[2:] == 4)
    assert block_expert.tolist()[0] == 0 and all(b == -1 for b in block_expert.tolist()[1:])


def test_padded_bound_is_static_and_tight_for_few_pairs():
    from plm_kernels.triton_align import padded_bound

    assert padded_bound(16384 * 32, 128, 64) == 16384 * 32 + 128 * 63 + 0  # already a multiple of 64
    assert padded_bound(2, 100, 16) == 32  # at most 2 experts can be non-empty


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_moe_with_device_align_matches_reference(fused, reduce, dtype):
    from plm_kernels.configs import INTERPRETER_CONFIG
    from plm_kernels.triton_moe import moe_ffn_triton

    if dtype == torch.float16 and not INTERPRETER:
        pytest.skip("covered by the compiled tests")
    p = make_moe_problem(29, 64, 8, 16, 2, dtype, experts_used=[1, 3, 4], device=DEVICE)  # 5 empty experts
    cfg = dict(INTERPRETER_CONFIG, FUSED=fused)
    y = moe_ffn_triton(*moe_args(p), "gelu", reduce, config=cfg, device_align=True)
    ref = moe_ffn_dense_oracle(*(t.cpu() if t is not None else None for t in moe_args(p)))
    assert_close_to(y.cpu(), ref, dtype, 1e-4 if dtype == torch.float32 and not INTERPRETER else None)
    # the same kernels with the torch plan give the same numbers (the blocks hold the same rows)
    y_torch_plan = moe_ffn_triton(*moe_args(p), "gelu", reduce, config=cfg, device_align=False)
    if reduce == "buffer":
        assert torch.equal(y, y_torch_plan)


def test_plan_uses_the_static_bound_with_device_align():
    from plm_kernels.triton_align import padded_bound
    from plm_kernels.triton_moe import Plan

    idx = _routing(40, 10, 3, seed=4).to(DEVICE)
    plan = Plan(idx, 10, 16, device_align=True)
    assert plan.num_padded == padded_bound(120, 10, 16) and plan.num_blocks == plan.num_padded // 16
    # the torch plan is the default under the interpreter (the reference); the device one on CUDA
    assert Plan(idx, 10, 16).num_padded == (align(idx.cpu(), 10, 16)[2] if INTERPRETER else plan.num_padded)
