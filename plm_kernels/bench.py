"""Benchmark the MoE FFN against the dense FFN: `python -m plm_kernels.bench --help`.

CPU: the torch path vs dense torch, side by side in one process. CUDA: additionally the
Triton path (both reductions) vs cuBLAS dense and vs the torch path. Times are the minimum
over --repeats interleaved runs on CPU (runner.speed's timer) and triton.testing.do_bench
medians on CUDA; speedup = dense / moe.
"""

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

from .routing import route_topk
from .torch_moe import moe_ffn_torch

SHAPES = {"bert-base": (768, 3072), "bert-large": (1024, 4096), "t5-large": (1024, 2816)}
EXPERT_SIZES = (32, 64, 128, 192, 384)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_STAGES = ("sort", "gather", "gemm1", "gemm2", "reduce")
TRITON_STAGES = ("align", "gemm1", "gemm2", "reduce")


def _csv(cast):
    return lambda text: [cast(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m plm_kernels.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--shapes", type=_csv(str), help=f"names ({', '.join(SHAPES)}) or DxDFF, e.g. 768x3072")
    p.add_argument("--expert-sizes", type=_csv(int), help="neurons per expert m; E = d_ff / m (default 32,64,128,192,384)")
    p.add_argument("--active", type=_csv(float), help="fraction of experts per token (default 0.125,0.25,0.5)")
    p.add_argument("--tokens", type=_csv(int), help="T values (default 512,4096 on CPU, 512..32768 on CUDA)")
    p.add_argument("--dtype", type=_csv(str), help="fp32, bf16, fp16 (default fp32 on CPU, bf16,fp32 on CUDA)")
    p.add_argument("--routing", type=_csv(str), help="uniform, skewed (default both)")
    p.add_argument("--routing-file", help="a torch.save'd (N, k) expert_idx tensor (or dict with 'expert_idx') "
                   "taken from a MoEfied model; adds a 'file' routing for the expert count it fits")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, i.e. all cores)")
    p.add_argument("--quick", action="store_true", help="fp32, T 512 and 4096, 25%% active, uniform routing")
    p.add_argument("--baselines", action="store_true",
                   help="also time two plain per-expert loops (fresh tensors; one k-fold replicated gather)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    args.device = "cuda" if cuda else "cpu"
    if args.quick:
        args.tokens = args.tokens or [512, 4096]
        args.dtype = args.dtype or ["fp32"]
        args.active = args.active or [0.25]
        args.routing = args.routing or ["uniform"]
    args.shapes = args.shapes or list(SHAPES)
    args.expert_sizes = args.expert_sizes or list(EXPERT_SIZES)
    args.active = args.active or [0.125, 0.25, 0.5]
    args.tokens = args.tokens or ([512, 4096, 8192, 16384, 32768] if cuda else [512, 4096])
    args.dtype = args.dtype or (["bf16", "fp32"] if cuda else ["fp32"])
    args.routing = args.routing or ["uniform", "skewed"]
    for name in args.dtype:
        if name not in DTYPES:
            p.error(f"unknown dtype {name}")
    return args


def shape_dims(name):
    if name in SHAPES:
        return SHAPES[name]
    d, d_ff = (int(v) for v in name.lower().split("x"))
    return d, d_ff


def make_scores(kind, T, E, generator):
    """Router scores whose top-k is uniform, or skewed: experts drawn without replacement with
    Zipf probabilities p_e ~ 1/rank (Gumbel top-k), so a few experts get most tokens."""
    if kind == "uniform":
        return torch.rand(T, E, generator=generator)
    rank = torch.randperm(E, generator=generator).double() + 1
    gumbel = -torch.log(-torch.log(torch.rand(T, E, generator=generator, dtype=torch.float64)))
    return (-torch.log(rank) + gumbel).float()


def load_routing_file(path, T):
    data = torch.load(path, map_location="cpu")
    idx = data["expert_idx"] if isinstance(data, dict) else data
    idx = torch.as_tensor(idx).long()
    reps = math.ceil(T / idx.shape[0])
    return idx.repeat(reps, 1)[:T]  # tile the recorded tokens up to T


def measure(fns, device, repeats):
    """Milliseconds per callable. On CPU the callables run interleaved (runner.speed.interleaved, one call
    per sample), `repeats` rounds after a warm-up, and the minimum is kept: load from other processes then
    hits dense and MoE alike."""
    if device == "cuda":
        from triton.testing import do_bench

        return {name: do_bench(fn) for name, fn in fns.items()}
    from runner.speed import interleaved

    seconds = interleaved({name: (_nothing, fn) for name, fn in fns.items()}, max(1, repeats), min_seconds=0)
    return {name: t * 1e3 for name, t in seconds.items()}


def _nothing():
    pass


def dense_ffn(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def loop_fresh(x, w_in, b_in, w_out, b_out, idx):
    """Baseline: the obvious per-expert loop, every gather and GEMM into a fresh tensor."""
    y = torch.zeros_like(x)
    for e in range(w_in.shape[0]):
        tok = torch.nonzero(idx == e, as_tuple=True)[0]
        y.index_add_(0, tok, F.gelu(F.linear(x[tok], w_in[e], b_in[e])) @ w_out[e])
    return y + b_out


def loop_replicated(x, w_in, b_in, w_out, b_out, idx):
    """Baseline: one k-fold replicated gather of x in expert order, then per-expert slices."""
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tokens = order // idx.shape[1]
    xs = x[tokens]
    y = torch.zeros_like(x)
    start = 0
    for e, n in enumerate(torch.bincount(flat, minlength=w_in.shape[0]).tolist()):
        h = F.gelu(F.linear(xs[start:start + n], w_in[e], b_in[e]))
        y.index_add_(0, tokens[start:start + n], h @ w_out[e])
        start += n
    return y + b_out


def torch_stages(x, w_in, b_in, w_out, b_out, idx, repeats):
    """Per-stage ms of the torch path on CPU (synchronous ops: the in-loop clock is exact)."""
    best = {}
    for _ in range(max(1, repeats)):
        stages = {}
        moe_ffn_torch(x, w_in, b_in, w_out, b_out, idx, timings=stages)
        if not best or sum(stages.values()) < sum(best.values()):
            best = stages
    return {k: v * 1e3 for k, v in best.items()}


def triton_stages(x, w_in, b_in, w_out, b_out, idx, reduce, cfg, time_one):
    """Per-stage ms of the Triton path with config cfg, each stage timed on its own."""
    from . import triton_moe as tm

    act = 1  # gelu
    T, k = idx.shape
    plan = tm.Plan(idx, w_in.shape[0], cfg["BLOCK_M"])
    stages = {"align": time_one(lambda: tm.Plan(idx, w_in.shape[0], cfg["BLOCK_M"]))}
    if cfg["FUSED"]:
        stages["gemm1+2"] = time_one(lambda: tm.fused(x, w_in, b_in, w_out, b_out, None, plan, k, act, reduce, cfg))
        out = tm.fused(x, w_in, b_in, w_out, b_out, None, plan, k, act, reduce, cfg)
    else:
        stages["gemm1"] = time_one(lambda: tm.gemm1(x, w_in, b_in, plan, k, act, cfg))
        h = tm.gemm1(x, w_in, b_in, plan, k, act, cfg)
        stages["gemm2"] = time_one(lambda: tm.gemm2(h, w_out, None, plan, x, b_out, k, reduce, cfg))
        out = tm.gemm2(h, w_out, None, plan, x, b_out, k, reduce, cfg)
    stages["reduce"] = time_one(lambda: tm.finish(out, b_out, T, k, reduce, x.dtype))
    return stages


def bench_row(x, w1, b1, w2, b2, w_in, b_in, w_out, idx, device, repeats, baselines=False):
    """[(impl, ms, stages)] for the torch path and, on CUDA, the Triton path; plus the dense ms."""
    fns = {"dense": lambda: dense_ffn(x, w1, b1, w2, b2),
           "torch": lambda: moe_ffn_torch(x, w_in, b_in, w_out, b2, idx)}
    if baselines:
        fns["loop-fresh"] = lambda: loop_fresh(x, w_in, b_in, w_out, b2, idx)
        fns["loop-replicated"] = lambda: loop_replicated(x, w_in, b_in, w_out, b2, idx)
    configs = {}
    if device == "cuda":
        from . import triton_moe as tm

        for reduce in ("buffer", "atomic"):
            cfg = tm.choose_config(x, w_in, b_in, w_out, b2, idx, None, 1, reduce)  # tunes on a cache miss
            name = f"triton-{reduce}" + ("-fused" if cfg["FUSED"] else "")
            configs[name] = (reduce, cfg)
            fns[name] = (lambda r=reduce, c=cfg: tm.run_with_config(x, w_in, b_in, w_out, b2, idx, None, 1, r, c))
    ms = measure(fns, device, repeats)
    results = [("torch", ms["torch"], torch_stages(x, w_in, b_in, w_out, b2, idx, repeats) if device == "cpu" else {})]
    results += [(name, ms[name], {}) for name in ("loop-fresh", "loop-replicated") if name in ms]
    for name, (reduce, cfg) in configs.items():
        stages = triton_stages(x, w_in, b_in, w_out, b2, idx, reduce, cfg, lambda fn: measure({"s": fn}, device, 1)["s"])
        results.append((name, ms[name], stages))
    return ms["dense"], results


def run(args, emit=print):
    device = args.device
    gen = torch.Generator().manual_seed(0)
    rows = []
    load = f" load-average={os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    emit(f"# device={device} threads={torch.get_num_threads()} repeats={args.repeats}{load}; "
         "speedup = dense ms / moe ms")
    if device == "cpu" and load and os.getloadavg()[0] > (os.cpu_count() or 1) and "OMP_WAIT_POLICY" not in os.environ:
        # measured: spinning OpenMP threads on a loaded machine slow the per-expert loop 3x or more
        emit("# note: the machine is loaded; run with OMP_WAIT_POLICY=PASSIVE (see plm_kernels/README.md)")
    emit("| shape | E x m | k (active) | T | dtype | routing | impl | dense ms | moe ms | speedup | vs torch path "
         "| route ms | stages ms |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        d, d_ff = shape_dims(shape)
        for dtype_name in args.dtype:
            dtype = DTYPES[dtype_name]
            w1 = (torch.randn(d_ff, d, generator=gen) * d**-0.5).to(device, dtype)
            b1 = (torch.randn(d_ff, generator=gen) * 0.1).to(device, dtype)
            w2 = (torch.randn(d, d_ff, generator=gen) * d_ff**-0.5).to(device, dtype)
            b2 = (torch.randn(d, generator=gen) * 0.1).to(device, dtype)
            for T in args.tokens:
                x = torch.randn(T, d, generator=gen).to(device, dtype)
                for m in args.expert_sizes:
                    if d_ff % m:
                        continue
                    E = d_ff // m
                    # expert layouts of contiguous neuron groups (the benchmark's perm is the identity)
                    w_in, b_in = w1.view(E, m, d), b1.view(E, m)
                    w_out = w2.t().reshape(E, m, d).contiguous()
                    for routing, idx, route_ms in routings(args, T, E, gen, device):
                        k = idx.shape[1]
                        dense_ms, results = bench_row(x, w1, b1, w2, b2, w_in, b_in, w_out, idx, device,
                                                      args.repeats, args.baselines)
                        torch_ms = results[0][1]
                        for impl, ms, stages in results:
                            row = dict(shape=shape, E=E, m=m, k=k, active=k / E, T=T, dtype=dtype_name,
                                       routing=routing, impl=impl, dense_ms=dense_ms, moe_ms=ms,
                                       speedup=dense_ms / ms, vs_torch=torch_ms / ms, route_ms=route_ms,
                                       stages=stages)
                            rows.append(row)
                            emit(format_row(row))
    if device != "cuda":
        emit("triton: skipped: no CUDA device")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def routings(args, T, E, gen, device):
    """Yield (name, expert_idx (T, k), route ms) for each routing and active fraction."""
    for routing in args.routing:
        for active in args.active:
            k = max(1, round(E * active))
            scores = make_scores(routing, T, E, gen).to(device)
            route_ms = measure({"route": lambda: route_topk(scores, k)}, device, args.repeats)["route"]  # noqa: B023
            yield routing, route_topk(scores, k)[0], route_ms
    if args.routing_file:
        idx = load_routing_file(args.routing_file, T)
        if int(idx.max()) < E:  # the file fits this expert count only
            yield "file", idx.to(device), 0.0


def format_row(r):
    stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
    return (f"| {r['shape']} | {r['E']} x {r['m']} | {r['k']} ({r['active']:.1%}) | {r['T']} | {r['dtype']} "
            f"| {r['routing']} | {r['impl']} | {r['dense_ms']:.2f} | {r['moe_ms']:.2f} | {r['speedup']:.2f}x "
            f"| {r['vs_torch']:.2f}x | {r['route_ms']:.2f} | {stages} |")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
