"""`python -m plm_kernels.bench` runs on CPU (tiny shapes here) and skips the Triton part without CUDA."""

import os
import subprocess
import sys

import pytest
import torch

from plm_kernels import bench


def test_bench_rows_on_cpu(tmp_path):
    routing_file = tmp_path / "routing.pt"
    torch.save({"expert_idx": torch.randint(0, 4, (10, 2))}, routing_file)
    lines = []
    args = bench.parse_args(["--device", "cpu", "--shapes", "32x128", "--tokens", "16,33", "--expert-sizes",
                             "32,48,64", "--active", "0.5", "--routing", "uniform,skewed", "--repeats", "1",
                             "--routing-file", str(routing_file), "--json", str(tmp_path / "rows.json")])
    rows = bench.run(args, emit=lines.append)
    # m=48 does not divide 128; the file (4 experts) fits only E=4 (m=32)
    assert {(r["E"], r["m"]) for r in rows} == {(4, 32), (2, 64)}
    assert {r["routing"] for r in rows if r["E"] == 4} == {"uniform", "skewed", "file"}
    assert len(rows) == 2 * (3 + 2)
    for r in rows:
        assert r["impl"] == "torch" and r["dense_ms"] > 0 and r["moe_ms"] > 0
        assert set(r["stages"]) == {"sort", "gather", "gemm1", "gemm2", "reduce"}
    assert lines[-1] == "triton: skipped: no CUDA device" or torch.cuda.is_available()
    assert (tmp_path / "rows.json").exists()


def test_skewed_routing_is_skewed():
    gen = torch.Generator().manual_seed(0)
    idx, _ = bench.route_topk(bench.make_scores("skewed", 2000, 16, gen), 2)
    counts = torch.bincount(idx.flatten(), minlength=16).sort(descending=True).values
    assert counts[0] > 4 * counts[-1]


def test_quick_defaults():
    args = bench.parse_args(["--quick", "--device", "cpu"])
    assert args.tokens == [512, 4096] and args.dtype == ["fp32"] and args.active == [0.25]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cli_exits_zero_without_cuda():
    out = subprocess.run([sys.executable, "-m", "plm_kernels.bench", "--shapes", "32x64", "--tokens", "8",
                          "--expert-sizes", "32", "--active", "0.5", "--routing", "uniform", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert "skipped: no CUDA device" in out.stdout


def test_baseline_loops_agree_with_the_torch_path():
    from kernels_testlib import make_moe_problem

    from plm_kernels.torch_moe import moe_ffn_torch

    p = make_moe_problem(30, 32, 6, 16, 3, bias=True)
    want = moe_ffn_torch(p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"])
    for fn in (bench.loop_fresh, bench.loop_replicated):
        got = fn(p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"].long())
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
