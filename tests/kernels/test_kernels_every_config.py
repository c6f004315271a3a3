"""Every GPU candidate config (base list and Hopper list) runs exactly under the interpreter.

num_warps / num_stages mean nothing to the interpreter, but the block sizes, the fused/unfused choice and
the tile masks do: small shapes with ragged d and m cover them. Compiled, on a GPU, the same configs run
in test_kernels_gpu.py.
"""

import pytest
import torch
from kernels_testlib import INTERPRETER, assert_close_to, make_moe_problem, moe_args

from plm_kernels import configs, moe_ffn_dense_oracle

pytestmark = [
    pytest.mark.triton_interpreter,
    pytest.mark.skipif(not INTERPRETER, reason="needs TRITON_INTERPRET=1 (set by conftest only without CUDA)"),
]
ALL_CONFIGS = [("base", c) for c in configs.GPU_CONFIGS] + [("hopper", c) for c in configs.HOPPER_CONFIGS]


def _name(item):
    kind, c = item
    return (f"{kind}-{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}-w{c['num_warps']}s{c['num_stages']}"
            + ("-fused" if c["FUSED"] else ""))


@pytest.mark.parametrize("item", ALL_CONFIGS, ids=[_name(i) for i in ALL_CONFIGS])
@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
def test_every_config_matches_reference(item, reduce):
    from plm_kernels.triton_moe import moe_ffn_triton

    _, cfg = item
    # m = 24 (ragged, < every tile) and m at the config's fused limit; d = 72 is ragged for every BLOCK_K
    for m in sorted({24, configs.fused_max_m(cfg)}):
        p = make_moe_problem(45, 72, 5, m, 2, experts_used=[0, 2, 3, 4], seed=m)
        y = moe_ffn_triton(*moe_args(p), "gelu", reduce, config=dict(cfg), device_align=True)
        assert_close_to(y, moe_ffn_dense_oracle(*moe_args(p)), torch.float32)


def test_hopper_candidates_only_on_hopper():
    base = configs.candidate_configs(32, 4096.0, interpreter=False, capability=(8, 0))
    hopper = configs.candidate_configs(32, 4096.0, interpreter=False, capability=(9, 0))
    assert base == configs.candidate_configs(32, 4096.0, interpreter=False)  # unknown device: base list
    assert len(hopper) == len(base) + len(configs.HOPPER_CONFIGS)
    assert all(c in hopper for c in configs.HOPPER_CONFIGS)
    # m = 128: only the 8-warp fused configs may take it; m = 256: no fused config at all
    fused_128 = [c for c in configs.candidate_configs(128, 4096.0, False, (9, 0)) if c["FUSED"]]
    assert fused_128 and all(c["num_warps"] == 8 for c in fused_128)
    assert not any(c["FUSED"] for c in configs.candidate_configs(256, 4096.0, False, (9, 0)))
    assert configs.candidate_configs(32, 4096.0, interpreter=True, capability=(9, 0)) == [
        configs.INTERPRETER_CONFIG]


def test_hopper_configs_are_large():
    for c in configs.HOPPER_CONFIGS:
        assert c["num_warps"] in (4, 8) and 3 <= c["num_stages"] <= 5
        assert c["BLOCK_M"] >= 64 and c["BLOCK_N"] >= 128
