"""Whole-model GPU inference, dense vs MoEfied, bf16, eager and CUDA graphs, side by side in one process.

    python -m runner.bench moe-gpu [--models minilm,bert-base,bert-large] [--shapes 32x128,256x128]
                                   [--sizes 32,128] [--ratios 0.25,0.5] [--repeats 10] [--out DIR]

Models: MiniLM (the offline pretrained weights when present, else random weights of its shape), BERT-base
and BERT-large shapes (random weights). Every FFN is MoEfied (random balanced split into experts of
--sizes neurons, untrained mlp router: the routing is in the timed path) at each share of experts
(--ratios). Each variant runs eagerly and through runner.moe.cuda_graph.GraphedModel (one graph per
bucket). All variants of a model and shape are timed interleaved (runner.speed.interleaved: CUDA events,
median of --repeats rounds of --calls calls each); the speedups are dense / MoE in the same mode (eager vs eager, graph vs
graph). Needs a CUDA device: without one it refuses in one line (the CPU benchmark is `runner.bench moe`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),  # tests
}


def dense_model(name: str):
    """(model, origin) in fp32 on CPU, eval mode."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    if name == "minilm":
        import yaml

        from runner.errors import UserError
        from runner.models import ModelConfig, load_model

        conf = Path(__file__).resolve().parents[2] / "conf" / "model" / "minilm.yaml"
        try:
            return load_model(ModelConfig(**yaml.safe_load(conf.read_text())), "classification",
                              num_labels=2).eval(), "pretrained"
        except (UserError, OSError):
            pass
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**SHAPES[name], num_labels=2))
    return model.eval(), "random init"


def moefied(dense, size: int):
    """A copy of `dense` with every FFN split into `size`-neuron experts (mlp router), or None."""
    from runner.models import arch
    from runner.moe import module, router, split

    d_ff = arch.ffn_width(dense)
    if d_ff % size:
        return None
    model = copy.deepcopy(dense)
    ffns = arch.ffns(model)
    groups = {f.name: split.random_split(d_ff, d_ff // size, f.index) for f in ffns}
    routers = {f.name: router.build("mlp", f.w_in.weight, groups[f.name]) for f in ffns}
    module.moefy(model, ffns, groups, routers)
    return model


def bench_model(name: str, a, device: str, emit) -> list[dict]:
    import torch

    from runner import speed
    from runner.moe import module
    from runner.moe.cuda_graph import GraphedModel

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dense, origin = dense_model(name)
    variants_models = {"dense": dense}
    for size in a.sizes:
        model = moefied(dense, size)
        if model is None:
            emit(f"  {name}: skipping expert size {size} (does not divide d_ff)")
            continue
        variants_models[f"m{size}"] = model
    variants_models = {k: m.to(device=device, dtype=dtype) for k, m in variants_models.items()}
    rows = []
    gen = torch.Generator().manual_seed(0)
    graphs = device == "cuda"
    for shape in a.shapes:
        b, L = (int(v) for v in shape.split("x"))
        ids = torch.randint(0, dense.config.vocab_size, (b, L), generator=gen)
        batch = {"input_ids": ids.to(device), "attention_mask": torch.ones(b, L, dtype=torch.long, device=device)}
        variants, outputs = {}, {}
        for key, model in variants_models.items():
            ratios = [None] if key == "dense" else a.ratios
            for ratio in ratios:
                label = key if ratio is None else f"{key}@{ratio:g}"

                def prepare(model=model, ratio=ratio):
                    if ratio is not None:
                        module.set_ratio(model, ratio)

                def eager(model=model, batch=batch):
                    return model(**batch).logits

                variants[f"{label} eager"] = (prepare, eager)
                if graphs:
                    runner = GraphedModel(model)  # captured at the first call, after prepare() set k
                    variants[f"{label} graph"] = (prepare, lambda runner=runner, batch=batch: runner(**batch))
        with torch.no_grad():
            # one warm-up round first (it captures the graphs); CUDA events on a GPU, wall clock on CPU
            seconds = speed.interleaved(variants, a.repeats, calls=a.calls, statistic="median",
                                        clock="cuda" if device == "cuda" else "wall")
            times = {label: s * 1e3 for label, s in seconds.items()}
            for label, (prepare, fn) in variants.items():  # sanity: graph replay == eager, per variant
                prepare()
                outputs[label] = fn().float()
        for label, ms in times.items():
            kind, mode = label.rsplit(" ", 1)
            ref = times[f"dense {mode}"]
            diff = (outputs[label] - outputs[f"{kind} eager"]).abs().max().item()
            row = dict(model=name, weights=origin, shape=shape, variant=kind, mode=mode, ms=ms,
                       speedup=ref / ms, graph_vs_eager_max_diff=diff)
            rows.append(row)
            emit(f"| {name} | {shape} | {kind} | {mode} | {ms:.3f} | {ref / ms:.2f}x | {diff:.1e} |")
    del variants_models
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def run(a, device: str, emit=print) -> list[dict]:
    emit(f"# whole-model inference, {device}, median of {a.repeats} interleaved rounds of {a.calls} calls; "
         "speedup = dense ms / this ms in the same mode")
    emit("| model | batch x length | variant | mode | ms | speedup vs dense | max |diff| vs eager |")
    emit("|---|---|---|---|---|---|---|")
    rows = []
    for name in a.models:
        rows += bench_model(name, a, device, emit)
    return rows


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="python -m runner.bench moe-gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm,bert-base,bert-large", help=f"from {', '.join(SHAPES)}")
    p.add_argument("--shapes", default="32x128,256x128", help="batch x length")
    p.add_argument("--sizes", default="32,128", help="neurons per expert")
    p.add_argument("--ratios", default="0.25,0.5", help="shares of experts per token")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (after one warm-up round)")
    p.add_argument("--calls", type=int, default=5, help="back-to-back calls per sample")
    p.add_argument("--out", default="outputs/bench/moe_gpu", help="folder for moe_gpu.json")
    a = p.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    for m in a.models:
        if m not in SHAPES:
            p.error(f"unknown model {m!r}; choose from {', '.join(SHAPES)}")
    a.shapes = [s for s in a.shapes.split(",") if s]
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.ratios = [float(r) for r in a.ratios.split(",")]
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: runner.bench moe-gpu needs a CUDA device and none is visible; on CPU run "
              "`python -m runner.bench moe`", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    rows = run(a, "cuda", emit=lambda line: print(line, flush=True))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_gpu.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                 indent=1))
    print(f"\nwrote {out / 'moe_gpu.json'}")
    return 0
