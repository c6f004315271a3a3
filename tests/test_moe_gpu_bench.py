"""`python -m runner.bench moe-gpu`: refuses in one line without CUDA; its loop runs on CPU (eager only)."""

from __future__ import annotations

import pytest
import torch

from runner.bench import moe_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_refuses_without_cuda(capsys):
    from runner.bench.__main__ import main

    assert main(["moe-gpu", "--models", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA device" in err


def test_bad_model_is_refused():
    with pytest.raises(SystemExit):
        moe_gpu.parse_args(["--models", "gpt9"])


def test_loop_on_cpu_times_every_variant():
    a = moe_gpu.parse_args(["--models", "tiny", "--shapes", "2x16", "--sizes", "32,48", "--ratios", "0.25,1",
                            "--repeats", "1", "--calls", "1"])
    lines = []
    rows = moe_gpu.run(a, "cpu", emit=lines.append)
    # d_ff = 256: 48 does not divide it; dense + m32 at two ratios, eager only on CPU
    assert [(r["variant"], r["mode"]) for r in rows] == [("dense", "eager"), ("m32@0.25", "eager"),
                                                          ("m32@1", "eager")]
    assert rows[0]["speedup"] == 1.0 and all(r["ms"] > 0 for r in rows)
    assert any("skipping expert size 48" in line for line in lines)


def test_moefied_copy_with_every_expert_equals_dense():
    from runner.moe import module

    dense, _ = moe_gpu.dense_model("tiny")
    moe = moe_gpu.moefied(dense, 32)
    module.set_ratio(moe, 1.0)
    ids = torch.randint(0, dense.config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(moe(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert moe_gpu.moefied(dense, 48) is None
