"""The GPU acceptance figures of the MoE FFN, in one process: `python -m plm_kernels.gpu_acceptance --help`.

bf16, TF32 allowed, uniform routing, a share --active of the experts per token. For each FFN shape, token
count T and expert size m, side by side (triton.testing.do_bench medians, ms):
  dense    the dense FFN (cuBLAS Linear-GELU-Linear)
  limit    the dense FFN at the active width (the same FLOPs as the MoE: what a perfect MoE reaches)
  moe      plm_kernels.moe_ffn (Triton, device align, the tuned config; both reductions, the faster kept)
  graph    the same call replayed from a CUDA graph (launch overhead removed)
  align    the device align alone, and the torch align (plm_kernels.routing.align) for comparison, in µs
and checks the acceptance targets (issue 17): MoE >= 1.8x dense for m >= 128 and >= 1.0x for m = 32 at
T >= 16k, align <= 50 µs at T = 16k. The tuning (every candidate config, Hopper ones on capability >= 9.0)
happens on the first call per problem and is cached in $PLM_KERNELS_CACHE_DIR (device_check.sh points it
at $OUT, so the timed choices come back). Refuses in one line without a CUDA device.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from .bench import SHAPES, shape_dims

TARGETS = {"speedup_m32": 1.0, "speedup_m128_plus": 1.8, "align_us_16k": 50.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m plm_kernels.gpu_acceptance", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="bert-large", help=f"names ({', '.join(SHAPES)}) or DxDFF")
    p.add_argument("--tokens", default="16384,65536", help="T values")
    p.add_argument("--expert-sizes", default="32,128,256", help="neurons per expert")
    p.add_argument("--active", type=float, default=0.25, help="share of experts per token")
    p.add_argument("--reduces", default="atomic,buffer", help="reductions to time (the faster is reported)")
    p.add_argument("--json", help="write the rows here (default $OUT/gpu_acceptance.json when $OUT is set)")
    a = p.parse_args(argv)
    a.shapes = [s for s in a.shapes.split(",") if s]
    a.tokens = [int(t) for t in a.tokens.split(",") if t]
    a.expert_sizes = [int(m) for m in a.expert_sizes.split(",") if m]
    a.reduces = [r for r in a.reduces.split(",") if r]
    return a


def graph_of(fn):
    """fn captured in a CUDA graph (after two warm-up calls on a side stream); returns graph.replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_row(d, d_ff, T, m, active, reduces, bench, *, device="cuda", dtype=torch.bfloat16, graphs=True,
                seed=0):
    """One problem's figures (ms; align in µs); bench(fn) -> ms."""
    import plm_kernels
    from plm_kernels.routing import align
    from plm_kernels.torch_moe import moe_ffn_torch
    from plm_kernels.triton_align import align_device

    g = torch.Generator().manual_seed(seed)
    E = d_ff // m
    k = max(1, round(E * active))
    n_active = k * m
    w1 = (torch.randn(d_ff, d, generator=g) * d**-0.5).to(device, dtype)
    b1 = (torch.randn(d_ff, generator=g) * 0.1).to(device, dtype)
    w2 = (torch.randn(d, d_ff, generator=g) * d_ff**-0.5).to(device, dtype)
    b2 = (torch.randn(d, generator=g) * 0.1).to(device, dtype)
    x = torch.randn(T, d, generator=g).to(device, dtype)
    w_in, b_in = w1.view(E, m, d), b1.view(E, m)
    w_out = w2.t().reshape(E, m, d).contiguous()
    idx = torch.rand(T, E, generator=g).topk(k, dim=1).indices.to(device)
    w1a, b1a, w2a = w1[:n_active].contiguous(), b1[:n_active].contiguous(), w2[:, :n_active].contiguous()
    row = dict(d=d, d_ff=d_ff, T=T, E=E, m=m, k=k)
    row["dense_ms"] = bench(lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))
    row["limit_ms"] = bench(lambda: F.linear(F.gelu(F.linear(x, w1a, b1a)), w2a, b2))
    ref = moe_ffn_torch(x, w_in, b_in, w_out, b2, idx).float()
    best = None
    for reduce in reduces:
        def call(reduce=reduce):
            return plm_kernels.moe_ffn(x, w_in, b_in, w_out, b2, idx, reduce=reduce, impl="triton")

        y = call().float()  # tunes on a cache miss
        err = ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        ms = bench(call)
        row[f"moe_{reduce}_ms"], row[f"rel_err_{reduce}"] = ms, err
        if graphs:
            row[f"graph_{reduce}_ms"] = bench(graph_of(call))
        if best is None or ms < row[f"moe_{best}_ms"]:
            best = reduce
    row["reduce"] = best
    row["moe_ms"] = row[f"moe_{best}_ms"]
    row["graph_ms"] = row.get(f"graph_{best}_ms")
    from plm_kernels import triton_moe as tm

    if device == "cuda":
        row["config"] = tm.choose_config(x, w_in, b_in, w_out, b2, idx, None, 1, best)
        block_m = row["config"]["BLOCK_M"]
    else:
        block_m = 32
    row["align_device_us"] = 1e3 * bench(lambda: align_device(idx, E, block_m))
    row["align_torch_us"] = 1e3 * bench(lambda: align(idx, E, block_m))
    row["speedup"] = row["dense_ms"] / row["moe_ms"]
    row["speedup_graph"] = row["dense_ms"] / row["graph_ms"] if row["graph_ms"] else None
    row["limit_speedup"] = row["dense_ms"] / row["limit_ms"]
    return row


def verdicts(row) -> list[str]:
    """Issue 17's targets that this row is subject to, each with PASS or FAIL."""
    out = []
    if row["T"] >= 16384:
        want = TARGETS["speedup_m32"] if row["m"] < 128 else TARGETS["speedup_m128_plus"]
        out.append(f"moe>={want}x:{'PASS' if row['speedup'] >= want else 'FAIL'}")
    if row["T"] == 16384:
        ok = row["align_device_us"] <= TARGETS["align_us_16k"]
        out.append(f"align<={TARGETS['align_us_16k']:g}us:{'PASS' if ok else 'FAIL'}")
    return out


def format_row(r) -> str:
    graph = f"{r['graph_ms']:.3f}" if r.get("graph_ms") else "-"
    sg = f"{r['speedup_graph']:.2f}x" if r.get("speedup_graph") else "-"
    return (f"| {r['d']}x{r['d_ff']} | {r['E']}x{r['m']} (k={r['k']}) | {r['T']} | {r['dense_ms']:.3f} | "
            f"{r['limit_ms']:.3f} | {r['moe_ms']:.3f} ({r['reduce']}) | {graph} | {r['speedup']:.2f}x | {sg} | "
            f"{r['limit_speedup']:.2f}x | {r['align_device_us']:.1f} | {r['align_torch_us']:.1f} | "
            f"{max(r.get('rel_err_atomic', 0), r.get('rel_err_buffer', 0)):.1e} | {' '.join(verdicts(r))} |")


HEADER = ("| d x d_ff | E x m | T | dense ms | limit ms | moe ms | graph ms | moe speedup | graph speedup | "
          "limit speedup | align µs (device) | align µs (torch) | rel err | targets |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    a = parse_args(argv)
    if not torch.cuda.is_available():
        print("error: plm_kernels.gpu_acceptance needs a CUDA device and none is visible", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()} capability {torch.cuda.get_device_capability()} torch "
          f"{torch.__version__}; bf16, uniform routing, {a.active:.0%} of experts", flush=True)
    print(HEADER, flush=True)
    rows = []
    for shape in a.shapes:
        d, d_ff = shape_dims(shape)
        for T in a.tokens:
            for m in a.expert_sizes:
                if d_ff % m:
                    continue
                try:
                    row = measure_row(d, d_ff, T, m, a.active, a.reduces, do_bench)
                except Exception as e:  # noqa: BLE001 - report and go on to the next problem
                    print(f"| {d}x{d_ff} | m={m} | {T} | error: {repr(e)[:200]} |", flush=True)
                    continue
                rows.append(row)
                print(format_row(row), flush=True)
    path = a.json or (os.path.join(os.environ["OUT"], "gpu_acceptance.json") if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
