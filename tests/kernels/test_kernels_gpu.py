"""Compiled Triton kernels on a CUDA device (skip cleanly without one).

Run on a GPU machine with `pytest -m gpu tests/kernels` (TRITON_INTERPRET unset or 0).
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

from plm_kernels import moe_ffn, moe_ffn_dense_oracle, sparse_ffn, sparse_ffn_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(INTERPRETER, reason="TRITON_INTERPRET=1 is set: these tests need compiled kernels"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_TOL = {torch.float32: 1e-4}  # fp32 with input_precision="ieee"; half types use TOL
# (T, d, E, m, k, options): BERT-base granularities, a ragged case, decoding sizes, duplicates
SHAPES = [
    (512, 768, 96, 32, 24, {}),
    (300, 768, 16, 192, 4, {}),
    (77, 200, 6, 24, 3, dict(duplicates=True)),
    (1, 256, 8, 64, 2, {}),
    (40, 128, 4, 32, 4, dict(bias=False)),
]


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch):
    # fp32 is checked at 1e-4, so keep TF32 off (the kernels follow torch's switch)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
@pytest.mark.parametrize("reduce", ["buffer", "atomic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_moe_ffn_every_config(shape, reduce, dtype, tmp_path, monkeypatch):
    from plm_kernels import configs
    from plm_kernels.triton_moe import moe_ffn_triton

    monkeypatch.setenv("PLM_KERNELS_CACHE_DIR", str(tmp_path))
    T, d, E, m, k, opts = shape
    p = make_moe_problem(T, d, E, m, k, dtype, device="cuda", **opts)
    ref = moe_ffn_dense_oracle(*(t.cpu() if t is not None else None for t in moe_args(p)))
    candidates = configs.candidate_configs(m, T * k / E, interpreter=False,
                                           capability=torch.cuda.get_device_capability())
    for cfg in candidates:
        y = moe_ffn_triton(*moe_args(p), "gelu", reduce, config=cfg)
        assert_close_to(y, ref, dtype, GPU_TOL.get(dtype))
    y = moe_ffn(*moe_args(p), reduce=reduce)  # auto: the tuned choice, cached under tmp_path
    assert_close_to(y, ref, dtype, GPU_TOL.get(dtype))
    if len(candidates) > 1:
        assert len(list(tmp_path.glob("*.json"))) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_path_on_cuda(dtype):
    p = make_moe_problem(128, 256, 8, 32, 2, dtype, device="cuda")
    ref = moe_ffn_dense_oracle(*(t.cpu() if t is not None else None for t in moe_args(p)))
    assert_close_to(moe_ffn(*moe_args(p), impl="torch"), ref, dtype, GPU_TOL.get(dtype))


@pytest.mark.parametrize("T", [1, 4, 16])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparse_ffn_gemv(T, dtype):
    p = make_sparse_problem(T, 768, 3072, 700, dtype, device="cuda")
    ref = sparse_ffn_reference(*(t.cpu() if t is not None else None for t in sparse_args(p)))
    assert_close_to(sparse_ffn(*sparse_args(p)), ref, dtype, GPU_TOL.get(dtype))
