"""plm_kernels.gpu_acceptance: refuses without CUDA; its measurement row runs under the interpreter (fake clock)."""

import pytest
import torch
from kernels_testlib import INTERPRETER

from plm_kernels import gpu_acceptance


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_refuses_without_cuda(capsys):
    assert gpu_acceptance.main(["--tokens", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA device" in err


@pytest.mark.triton_interpreter
@pytest.mark.skipif(not INTERPRETER, reason="needs TRITON_INTERPRET=1")
def test_row_under_the_interpreter():
    calls = []

    def bench(fn):
        calls.append(fn())
        return 2.0 if len(calls) == 1 else 1.0  # dense 2 ms, everything else 1 ms

    # T = 16384 is too slow for the interpreter: a small T, then the verdicts on a copy with T = 16384
    row = gpu_acceptance.measure_row(64, 128, 40, 32, 0.5, ["buffer", "atomic"], bench, device="cpu",
                                     dtype=torch.float32, graphs=False)
    assert (row["E"], row["k"]) == (4, 2)
    assert row["rel_err_buffer"] < 1e-5 and row["rel_err_atomic"] < 1e-5
    assert row["speedup"] == 2.0 and row["align_device_us"] == 1000.0
    assert gpu_acceptance.verdicts(row) == []  # T < 16k: no target applies
    big = dict(row, T=16384, m=128)
    assert gpu_acceptance.verdicts(big) == ["moe>=1.8x:PASS", "align<=50us:FAIL"]
    assert "| 64x128 |" in gpu_acceptance.format_row(row)
