"""Inference speed of MoEfied FFNs vs dense, CPU torch path (plm_kernels.moe_ffn), side by side in one process.

    python -m runner.bench moe [--threads 2] [--repeats 7] [--out outputs/bench/moe] [--quick]
                               [--stat min] [--previous] [--breakdown] [--layer-shape 384,1536]

Two measurements, each at every share of experts (--ratios) and expert size (--sizes), for one sentence
(1 x 64 tokens) and a batch (32 x 128 = 4,096 tokens):
  layer  one FFN of BERT-base shape (768 / 3072, GELU): dense Linear-GELU-Linear vs MoEFFN (router + experts)
  model  the whole MiniLM classifier (6 layers, 384 / 1536; offline weights, random weights if absent),
         dense vs the same weights MoEfied in every layer (random balanced split, mlp router: routing is in
         the timed path; the split does not change the cost, the router's choices do only through balance)
All variants run in one loop, one call each per repetition (runner.speed.interleaved: load on a shared machine
hits all alike); the figure is median (--stat min: fastest) dense time / MoE time. Prints one table per
measurement and writes moe.json and moe.png to --out.
  --previous   also times the previous CPU path (argsort + per-expert loop, MoEFFN.cpu_path="general") side by
               side, as variants "m<size>@<ratio>/prev"
  --breakdown  then, per shape, where the time goes: the fastest of --repeats instrumented, interleaved calls of
               dense and each MoE variant, split into router, top-k, index building, the densely computed busiest
               experts, gather, GEMM 1 (+ activation), GEMM 2, reduce, the rest of the FFN call, and everything
               outside the FFNs (summed over layers)
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

LAYER_SHAPE = (768, 3072)  # BERT-base d_model, d_ff
SHAPES = {"1x64": (1, 64), "32x128": (32, 128)}


def nothing() -> None:
    pass


def moe_from_linears(w_in, b_in, w_out, b_out, size: int, seed: int):
    """An MoEFFN of `size`-neuron experts (random split, mlp router) from dense weights."""
    import torch

    from runner.moe import router, split
    from runner.moe.module import MoEFFN

    d_ff, d = w_in.shape
    experts = d_ff // size
    groups = split.random_split(d_ff, experts, seed)
    perm = groups.flatten()
    r = router.build("mlp", w_in, groups)
    return MoEFFN(w_in[perm].view(experts, size, d), b_in[perm].view(experts, size),
                  w_out[:, perm].t().reshape(experts, size, d), b_out, "gelu", torch.nn.GELU(), r, experts)


def bench_layer(a, breakdowns: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from runner import speed
    from runner.moe.router import active_experts

    d, d_ff = a.layer_shape
    gen = torch.Generator().manual_seed(0)
    w_in, w_out = torch.randn(d_ff, d, generator=gen) * 0.02, torch.randn(d, d_ff, generator=gen) * 0.02
    b_in, b_out = torch.zeros(d_ff), torch.zeros(d)
    modules = {m: moe_from_linears(w_in, b_in, w_out, b_out, m, 0) for m in a.sizes if d_ff % m == 0}
    out = {}
    for shape, (b, t) in SHAPES.items():
        x = torch.randn(b * t, d, generator=gen)
        variants = {"dense": (nothing, lambda x=x: F.linear(F.gelu(F.linear(x, w_in, b_in)), w_out, b_out))}
        ffn_modules = {"dense": []}
        for m, mod in modules.items():
            for ratio in a.ratios:
                for path in paths(a):
                    k = active_experts(mod.num_experts, ratio)
                    variants[f"m{m}@{ratio}{SUFFIX[path]}"] = (
                        lambda mod=mod, k=k, path=path: (setattr(mod, "k", k), setattr(mod, "cpu_path", path)),
                        lambda mod=mod, x=x: mod(x))
                    ffn_modules[f"m{m}@{ratio}{SUFFIX[path]}"] = [mod]
        with torch.no_grad():
            out[shape] = speed.interleaved(variants, a.repeats, statistic=a.stat, clock=a.clock)
            if a.breakdown:
                breakdowns[shape] = breakdown(variants, ffn_modules, a.repeats, a.clock)
        print(f"  layer {shape}: done")
    return out


SUFFIX = {"topk": "", "general": "/prev"}  # MoEFFN.cpu_path -> variant name suffix
STAGES = ("router", "topk", "index", "dense", "gather", "gemm1", "gemm2", "reduce")


def paths(a) -> list[str]:
    return ["topk", "general"] if a.previous else ["topk"]


def moe_modules(model) -> list:
    from runner.moe.module import MoEFFN

    return [mod for mod in model.modules() if isinstance(mod, MoEFFN)]


def set_path(model, ratio: float, path: str) -> None:
    from runner.moe import module

    module.set_ratio(model, ratio)
    for mod in moe_modules(model):
        mod.cpu_path = path


def ffn_timer(ffns: list, sink: dict, now) -> list:
    """Hooks adding the time inside every FFN (read on the clock `now`) to sink["ffn"]: an MoEFFN from its call
    to its return, a dense arch FFN from its input module's call to its output projection's return. Returns the
    hook handles."""
    state = {}

    def start(*_):
        state["t0"] = now()

    def stop(*_):
        sink["ffn"] = sink.get("ffn", 0.0) + now() - state["t0"]

    handles = []
    for f in ffns:
        first, last = (f.input_module, f.w_out) if hasattr(f, "input_module") else (f, f)
        handles += [first.register_forward_pre_hook(start), last.register_forward_hook(stop)]
    return handles


def instrumented(fn, ffns: list, now) -> dict[str, float]:
    """Seconds per stage of one call of fn: total, ffn (inside the FFNs) and the stages the MoE modules
    report (previous path's "sort" = index)."""
    sink: dict[str, float] = {}
    handles = ffn_timer(ffns, sink, now)
    moes = [mod for mod in ffns if hasattr(mod, "timings")]
    for mod in moes:
        mod.timings = sink
    t0 = now()
    fn()
    sink["total"] = now() - t0
    for h in handles:
        h.remove()
    for mod in moes:
        mod.timings = None
    if "sort" in sink:
        sink["index"] = sink.pop("sort")
    return sink


def breakdown(variants: dict, ffns: dict, repeats: int, clock: str = "wall") -> dict[str, dict[str, float]]:
    """Seconds per stage of each variant: the fastest of `repeats` interleaved instrumented calls (after one
    warm-up call each; runner.speed.interleaved does the interleaving). Keys: total, ffn (inside the FFNs),
    non_ffn, the STAGES the MoE modules report and ffn_other (the rest of the MoE call: Python, reshapes,
    output allocation)."""
    from runner import speed

    now = speed.CLOCKS[clock]
    sinks: dict[str, list[dict]] = {name: [] for name in variants}
    calls = {name: (prepare, lambda name=name, fn=fn: sinks[name].append(instrumented(fn, ffns[name], now)))
             for name, (prepare, fn) in variants.items()}
    speed.interleaved(calls, repeats, calls=1, clock=clock)
    best = {name: min(found[1:], key=lambda sink: sink["total"]) for name, found in sinks.items()}  # [0]: warm-up
    for sink in best.values():
        sink.setdefault("ffn", sink["total"])  # a bare dense FFN (layer measurement): all of it is FFN
        sink["non_ffn"] = sink["total"] - sink["ffn"]
        staged = sum(sink.get(stage, 0.0) for stage in STAGES)
        sink["ffn_other"] = sink["ffn"] - staged if staged else 0.0
    return best


def breakdown_table(title: str, data: dict) -> list[str]:
    cols = ("total", "non_ffn", "ffn") + STAGES + ("ffn_other",)
    lines = [f"\n{title}: where the time goes, ms (fastest instrumented call; stages summed over layers)"]
    for shape, rows in data.items():
        lines.append(f"  {shape} tokens")
        lines.append("    " + f"{'variant':>16} | " + " | ".join(f"{c:>8}" for c in cols))
        for name, sink in rows.items():
            cells = " | ".join(f"{1000 * sink[c]:8.2f}" if c in sink else f"{'-':>8}" for c in cols)
            lines.append("    " + f"{name:>16} | " + cells)
    return lines


def load_minilm():
    import torch
    import yaml

    from runner.errors import UserError
    from runner.models import ModelConfig, load_model

    conf = Path(__file__).resolve().parents[2] / "conf" / "model" / "minilm.yaml"
    cfg = ModelConfig(**yaml.safe_load(conf.read_text()))
    try:
        return load_model(cfg, "classification", num_labels=2).eval(), "pretrained"
    except (UserError, OSError):
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        return BertForSequenceClassification(config).eval(), "random init (MiniLM shape)"


def bench_model(a, breakdowns: dict) -> tuple[dict, str]:
    import torch

    from runner import speed
    from runner.models import arch
    from runner.moe import module, router, split

    dense, origin = load_minilm()
    d_ff = arch.ffn_width(dense)
    moefied = {}
    for m in a.sizes:
        if d_ff % m:
            print(f"  model: skipping expert size {m} (does not divide {d_ff})")
            continue
        model = copy.deepcopy(dense)
        ffns = arch.ffns(model)
        groups = {f.name: split.random_split(d_ff, d_ff // m, f.index) for f in ffns}
        routers = {f.name: router.build("mlp", f.w_in.weight, groups[f.name]) for f in ffns}
        module.moefy(model, ffns, groups, routers)
        if a.reorder:  # busiest experts first, from routing counts on a batch that is not timed
            module.set_ratio(model, a.ratios[0])
            calib = torch.Generator().manual_seed(1)
            module.order_experts_by_use(model, [{"input_ids": torch.randint(1000, 29000, (8, 128), generator=calib),
                                                 "attention_mask": torch.ones(8, 128, dtype=torch.long)}])
        moefied[m] = model
    out = {}
    gen = torch.Generator().manual_seed(0)
    for shape, (b, t) in SHAPES.items():
        batch = {"input_ids": torch.randint(1000, 29000, (b, t), generator=gen),
                 "attention_mask": torch.ones(b, t, dtype=torch.long)}
        variants = {"dense": (nothing, lambda batch=batch: dense(**batch))}
        ffn_modules = {"dense": arch.ffns(dense)}
        for m, model in moefied.items():
            for ratio in a.ratios:
                for path in paths(a):
                    name = f"m{m}@{ratio}{SUFFIX[path]}"
                    variants[name] = (lambda model=model, ratio=ratio, path=path: set_path(model, ratio, path),
                                      lambda model=model, batch=batch: model(**batch))
                    ffn_modules[name] = moe_modules(model)
        with torch.no_grad():
            out[shape] = speed.interleaved(variants, a.repeats, statistic=a.stat, clock=a.clock)
            if a.breakdown:
                breakdowns[shape] = breakdown(variants, ffn_modules, a.repeats, a.clock)
        print(f"  model {shape}: done")
    return out, origin


def table(title: str, times: dict, sizes: list[int], ratios: list[float], stat: str = "median") -> list[str]:
    lines = [f"\n{title}: speedup = dense time / MoE time ({stat}); > 1 means MoE is faster"]
    for shape, t in times.items():
        lines.append(f"  {shape} tokens, dense {1000 * t['dense']:.2f} ms")
        lines.append("    expert size | " + " | ".join(f"{100 * r:>5.0f}%" for r in ratios))
        for m in sizes:
            for suffix, label in (("", f"{m}"), ("/prev", f"{m} previous")):
                if f"m{m}@{ratios[0]}{suffix}" in t:
                    cells = " | ".join(f"{t['dense'] / t[f'm{m}@{r}{suffix}']:>5.2f}x" for r in ratios)
                    lines.append(f"    {label:>11} | {cells}")
    return lines


def plot(results: dict, sizes: list[int], ratios: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(kind, shape) for kind in ("layer", "model") if kind in results for shape in SHAPES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (kind, shape) in zip(axes[0], panels, strict=True):
        t = results[kind][shape]
        for m in sizes:
            if f"m{m}@{ratios[0]}" in t:
                ax.plot(ratios, [t["dense"] / t[f"m{m}@{r}"] for r in ratios], "o-", label=f"{m} neurons")
        ax.axhline(1, color="k", lw=1, ls="--")
        ax.set_title(f"{'FFN layer 768/3072' if kind == 'layer' else 'MiniLM'}, {shape} tokens", fontsize=9)
        ax.set_xlabel("share of experts per token")
        ax.set_ylabel("speedup vs dense")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.bench moe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads, fixed for every variant (default 1: on a shared 2-core machine "
                        "OpenMP barriers of 2 threads make every small op of the expert loop wait)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per variant (after one warm-up)")
    p.add_argument("--sizes", default="32,64,128,192,384", help="neurons per expert")
    p.add_argument("--ratios", default="0.1,0.2,0.25,0.3,0.5,1.0", help="shares of experts per token")
    p.add_argument("--only", choices=("layer", "model"), help="run one measurement")
    p.add_argument("--quick", action="store_true", help="3 repeats, sizes 32,128,384, ratios 0.25,1.0")
    p.add_argument("--out", default="outputs/bench/moe", help="folder for moe.json and moe.png")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="per variant, the median or the fastest of the repeats (min is steadier on a loaded machine)")
    p.add_argument("--previous", action="store_true",
                   help="also time the previous CPU path (argsort + per-expert loop) side by side")
    p.add_argument("--breakdown", action="store_true", help="then print where the time goes, stage by stage")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (with --threads 1 on a machine shared with other jobs, "
                        "the time they hold the core is then not counted)")
    p.add_argument("--no-reorder", dest="reorder", action="store_false",
                   help="model: keep the experts in split order (default: busiest first, counted on an untimed "
                        "8x128 batch at the first ratio; the outputs are the same, the CPU path pads less)")
    p.add_argument("--layer-shape", default=",".join(map(str, LAYER_SHAPE)),
                   help="d_model,d_ff of the layer measurement (384,1536 = MiniLM)")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.sizes, a.ratios = 3, "32,128,384", "0.25,1.0"
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.ratios = [float(r) for r in a.ratios.split(",")]
    a.layer_shape = tuple(int(v) for v in a.layer_shape.split(","))
    import torch

    torch.set_num_threads(a.threads)
    if a.clock == "cpu":  # the MoE modules' stage timings (--breakdown) read the same clock
        from plm_kernels import torch_moe
        from runner import speed

        torch_moe.set_stage_clock(speed.CLOCKS["cpu"])
    print(f"MoE vs dense, CPU torch path, {a.threads} threads, {a.stat} of {a.repeats} interleaved calls, "
          f"{a.clock} clock")
    results, origin, breakdowns = {}, None, {"layer": {}, "model": {}}
    if a.only in (None, "layer"):
        results["layer"] = bench_layer(a, breakdowns["layer"])
    if a.only in (None, "model"):
        results["model"], origin = bench_model(a, breakdowns["model"])
    lines = []
    layer_title = f"FFN layer {a.layer_shape[0]}/{a.layer_shape[1]} (router included)"
    model_title = f"whole MiniLM ({origin}), every FFN MoEfied, mlp router in the loop"
    if "layer" in results:
        lines += table(layer_title, results["layer"], a.sizes, a.ratios, a.stat)
    if "model" in results:
        lines += table(model_title, results["model"], a.sizes, a.ratios, a.stat)
    if breakdowns["layer"]:
        lines += breakdown_table(layer_title, breakdowns["layer"])
    if breakdowns["model"]:
        lines += breakdown_table(model_title, breakdowns["model"])
    print("\n".join(lines))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe.json").write_text(json.dumps({"threads": a.threads, "repeats": a.repeats, "stat": a.stat,
                                              "clock": a.clock, "sizes": a.sizes, "ratios": a.ratios, "layer_shape": a.layer_shape,
                                              "seconds": results, "breakdown": breakdowns, "model": origin},
                                             indent=1))
    plot(results, a.sizes, a.ratios, out / "moe.png")
    print(f"\nwrote {out / 'moe.json'} and {out / 'moe.png'}")
    return 0
