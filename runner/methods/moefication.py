"""MoEfication (Zhang et al., Findings ACL 2022, arXiv 2110.01786): split every FFN of a fine-tuned model
into E experts of m neurons and compute only the k experts a router picks for each token.

    dense    fine-tune the model on the task, or reuse method.base_run            dense/model
    relufy   (method.relufy) every FFN activation -> ReLU, fine-tune again        relu/model
    collect  FFN inputs over collect_tokens training tokens (no padding)         collect/inputs.pt
    split    each FFN's neurons -> E equal experts: random | param_cluster | coact    split/experts.pt
    route    a router per FFN: gt | similarity | mlp (trained on the inputs)     router/routers.pt
    convert  permute neurons so each expert is contiguous, swap in MoE FFN modules (compute top-k only)
    evaluate the task metric at each ratio of experts per token, plot            eval/ratio-<r>.json, moefication.png
    (save)   method.save_ratio: the MoE model at that ratio, loadable by another run    model/ (runner.moe.saved)

Each stage leaves its artefact in the run directory; a re-run resumes at the first missing stage, and runs
that need the same dense/ReLU model, inputs or split (the cells of a split x router grid) share them
through the stage cache (runner/stages.py) instead of recomputing them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from runner.artifacts import fine_tuned, finished_run, input_batches, load_model_dir, save_model
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.models import arch
from runner.moe import collect, module, router, split
from runner.stages import Stage
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/moefication.yaml."""

    name: str = "moefication"
    base_run: str | None = None
    relufy: bool = False
    relu_epochs: float | None = None
    expert_size: int = 32
    num_experts: int | None = None
    split: Literal["random", "param_cluster", "coact"] = "param_cluster"
    router: Literal["gt", "similarity", "mlp"] = "mlp"
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.25, 0.3, 0.5, 1.0])
    collect_tokens: int = 40000
    cluster_n_init: int = 3
    router_epochs: int = 30
    router_lr: float = 0.01
    router_batch_size: int = 512
    router_holdout: float = 0.1
    speed_repeats: int = 5
    save_ratio: float | None = None

    def __post_init__(self):
        if not self.ratios:
            raise ValueError("method.ratios is empty; give shares of experts in (0, 1], e.g. [0.2,0.5,1.0]")
        for r in self.ratios:
            if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 1:
                raise ValueError(f"method.ratios: {r!r} is not in (0, 1]; a ratio is the share of experts a "
                                 "token uses, e.g. 0.25")
        for key in ("expert_size", "collect_tokens", "cluster_n_init", "router_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be a positive integer, got {getattr(self, key)}")
        if self.num_experts is not None and self.num_experts < 1:
            raise ValueError(f"method.num_experts must be a positive integer or null, got {self.num_experts}")
        if self.speed_repeats < 0:
            raise ValueError(f"method.speed_repeats must be >= 0 (0 skips the timing), got {self.speed_repeats}")
        if self.save_ratio is not None and self.save_ratio not in self.ratios:
            raise ValueError(f"method.save_ratio={self.save_ratio} is not one of method.ratios {self.ratios}: the "
                             "saved MoE model is one that was evaluated")
        if not 0 < self.router_holdout < 1:
            raise ValueError(f"method.router_holdout must be in (0, 1), got {self.router_holdout}")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    stages = ctx.stages()

    dense = fine_tuned(ctx, stages, "dense", base_run=cfg.base_run, check=lambda model: check_model(ctx, model))
    source = dense
    if cfg.relufy:
        source = stages.run("relu", {"dense": dense.digest, "train": relu_train(ctx)},
                            lambda path: relufy(ctx, dense.path / "model", path), share=True)
    inputs = stages.run("collect", {"model": source.digest, "tokens": cfg.collect_tokens},
                        lambda path: collect_inputs(ctx, source.path / "model", path), share=True)
    experts = stages.run("split", split_key(ctx, source, inputs),
                         lambda path: split_experts(ctx, source.path / "model", inputs.path, path), share=True)
    routers = stages.run("router", router_key(ctx, experts, inputs),
                         lambda path: build_routers(ctx, source.path / "model", experts.path, inputs.path, path))
    evaluation = stages.run("eval", {"router": routers.digest, "ratios": cfg.ratios},
                            lambda path: convert_and_evaluate(ctx, source.path / "model", experts.path,
                                                              routers.path, path))
    stages_done = [dense, source, inputs, experts, routers, evaluation]
    if cfg.speed_repeats:
        speed = stages.run("speed", {"router": routers.digest, "ratios": cfg.ratios, "repeats": cfg.speed_repeats},
                           lambda path: measure_speed(ctx, source.path / "model", experts.path, routers.path))
        ctx.info["speed"] = {k: v for k, v in speed.info.items() if k != "seconds"}
        stages_done.append(speed)
    if cfg.save_ratio is not None:
        save_moe(ctx, source.path / "model", experts.path, routers.path)
    return report(ctx, dense, source if cfg.relufy else None, experts, routers, evaluation, stages_done)


# ---------------------------------------------------------------------------------------------------------
# Stages


def relufy(ctx, dense_model: Path, path: Path) -> dict:
    """ReLU-fication: the paper MoEfies ReLU models; a GELU model is switched to ReLU and fine-tuned again."""
    model = load_model_dir(ctx, dense_model)
    arch.set_ffn_activation(model, "relu")
    before = evaluate(ctx, model)
    ctx.log(f"relufy: {ctx.task.main_metric} right after the swap {before.get(ctx.task.main_metric)}")
    result = fit(ctx, model, output=f"{path.name}/checkpoints", train=relu_train(ctx))
    save_model(ctx, model, path)
    shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return {"before": before, "after": evaluate(ctx, model), "train": result["train"]}


def collect_inputs(ctx, model_dir: Path, path: Path) -> dict:
    model = load_model_dir(ctx, model_dir)
    inputs = collect.collect_inputs(model, arch.ffns(model), input_batches(ctx, ctx.data["train"]),
                                    ctx.method.collect_tokens)
    torch.save(inputs, path / "inputs.pt")
    return {"tokens": min(len(x) for x in inputs.values())}


def split_experts(ctx, model_dir: Path, inputs_dir: Path, path: Path) -> dict:
    cfg: Config = ctx.method
    model = load_model_dir(ctx, model_dir)
    num_experts, size = check_model(ctx, model)
    inputs = torch.load(inputs_dir / "inputs.pt") if cfg.split == "coact" else {}
    groups = {}
    for ffn in arch.ffns(model):
        w_in = ffn.w_in.weight
        if cfg.split == "random":
            groups[ffn.name] = split.random_split(w_in.shape[0], num_experts, ctx.seed + ffn.index)
        elif cfg.split == "param_cluster":
            groups[ffn.name] = split.param_cluster(w_in, num_experts, ctx.seed, cfg.cluster_n_init)
        else:
            graph = split.coactivation(collect.hidden_blocks(ffn, inputs[ffn.name]))
            groups[ffn.name] = split.coact_split(graph, num_experts, ctx.seed)
        assert split.is_balanced(groups[ffn.name], w_in.shape[0]), ffn.name
        ctx.log(f"split {ffn.name}: {num_experts} experts x {size} neurons ({cfg.split})")
    torch.save(groups, path / "experts.pt")
    return {"split": cfg.split, "num_experts": num_experts, "expert_size": size, "balanced": True}


def build_routers(ctx, model_dir: Path, experts_dir: Path, inputs_dir: Path, path: Path) -> dict:
    """One router per FFN; every router is scored by the share of the oracle's top-k activation mass its
    own top-k holds on held-out tokens (the mlp router is trained on the others)."""
    cfg: Config = ctx.method
    model = load_model_dir(ctx, model_dir)
    groups = torch.load(experts_dir / "experts.pt")
    inputs = torch.load(inputs_dir / "inputs.pt")
    states, recall, history = {}, {}, {}
    for ffn in arch.ffns(model):
        x, g = inputs[ffn.name].float(), groups[ffn.name]
        mass = torch.cat([router.expert_mass(h, g) for h in collect.hidden_blocks(ffn, x)])
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))
        n_held = max(1, int(len(x) * cfg.router_holdout))
        held, train = order[:n_held], order[n_held:]
        r = router.build(cfg.router, ffn.w_in.weight, g)
        if cfg.router == "mlp":
            history[ffn.name] = router.train_mlp(r, x[train], mass[train], x[held], mass[held],
                                                 epochs=cfg.router_epochs, lr=cfg.router_lr,
                                                 batch_size=cfg.router_batch_size, seed=ctx.seed)
        with torch.no_grad():
            scores = mass[held] if cfg.router == "gt" else r(x[held])
        recall[ffn.name] = {ratio_key(q): router.mass_recall(scores, mass[held],
                                                             router.active_experts(g.shape[0], q))
                            for q in cfg.ratios}
        states[ffn.name] = r.state_dict()
        ctx.log(f"router {ffn.name}: {cfg.router}, mass recall {recall[ffn.name]}")
    torch.save(states, path / "routers.pt")
    mean = {q: sum(layer[q] for layer in recall.values()) / len(recall) for q in map(ratio_key, cfg.ratios)}
    return {"router": cfg.router, "recall": mean, "recall_per_layer": recall, "held_out_tokens": len(held),
            "training": history}


def moefied(ctx, model, experts_dir: Path, routers_dir: Path):
    """`model` with every FFN swapped for its MoE version (the split and routers of the earlier stages)."""
    cfg: Config = ctx.method
    ffns = arch.ffns(model)
    groups = torch.load(experts_dir / "experts.pt")
    states = torch.load(routers_dir / "routers.pt")
    routers = {}
    for ffn in ffns:
        routers[ffn.name] = router.build(cfg.router, ffn.w_in.weight, groups[ffn.name])
        routers[ffn.name].load_state_dict(states[ffn.name])
    module.moefy(model, ffns, groups, routers)
    return model, ffns, groups


def convert_and_evaluate(ctx, model_dir: Path, experts_dir: Path, routers_dir: Path, path: Path) -> dict:
    cfg: Config = ctx.method
    model = load_model_dir(ctx, model_dir)
    dense = evaluate(ctx, model)  # same process, same load: the reference for eval_seconds
    model, ffns, groups = moefied(ctx, model, experts_dir, routers_dir)
    ctx.info["parameters"] = {"total": sum(p.numel() for p in model.parameters())}
    results = {}
    for ratio in cfg.ratios:
        file = path / f"ratio-{ratio_key(ratio)}.json"
        if file.exists():  # evaluated before this run was killed
            results[ratio_key(ratio)] = json.loads(file.read_text())
            continue
        ks = module.set_ratio(model, ratio)
        metrics = evaluate(ctx, model)
        metrics.update(k=ks[0], num_experts=int(groups[ffns[0].name].shape[0]))
        ctx.log(f"ratio {ratio}: k={ks[0]} {ctx.task.main_metric}={metrics[ctx.task.main_metric]:.4f}")
        file.write_text(json.dumps(metrics))
        results[ratio_key(ratio)] = metrics
    return {"dense_eval_seconds": dense["eval_seconds"], "dense_check": dense, "ratios": results}


def measure_speed(ctx, model_dir: Path, experts_dir: Path, routers_dir: Path) -> dict:
    """Dense vs MoE inference at every ratio, timed side by side (runner.speed), one sentence and a batch."""
    from runner import speed

    cfg: Config = ctx.method
    dense = load_model_dir(ctx, model_dir)
    moe, _, _ = moefied(ctx, load_model_dir(ctx, model_dir), experts_dir, routers_dir)
    # Store the experts busiest first (counted at 25% on a few training sentences): outputs are unchanged,
    # and the CPU path computes the few experts most tokens use as dense blocks (plm_kernels/torch_moe.py).
    module.set_ratio(moe, 0.25)
    with torch.no_grad():
        module.order_experts_by_use(moe, itertools.islice(input_batches(ctx, ctx.data["train"], 8), 4))
    models = {"dense": dense, **{f"moe@{ratio_key(r)}": moe for r in cfg.ratios}}
    prepare = {f"moe@{ratio_key(r)}": (lambda r=r: module.set_ratio(moe, r)) for r in cfg.ratios}
    return speed.measure(models, reference="dense", vocab_size=len(ctx.tokenizer), repeats=cfg.speed_repeats,
                         prepare=prepare, device="cuda" if ctx.hardware.device == "cuda" else "cpu")


def save_moe(ctx, model_dir: Path, experts_dir: Path, routers_dir: Path) -> Path:
    """<run dir>/model: the source model and the MoE files at method.save_ratio, experts stored busiest first
    as measure_speed stores them (runner.quant.deploy.load_deployed rebuilds it)."""
    from runner.moe import saved

    cfg: Config = ctx.method
    path = save_model(ctx, load_model_dir(ctx, model_dir), ctx.run_dir)
    moe, _, groups = moefied(ctx, load_model_dir(ctx, model_dir), experts_dir, routers_dir)
    module.set_ratio(moe, cfg.save_ratio)
    with torch.no_grad():
        module.order_experts_by_use(moe, itertools.islice(input_batches(ctx, ctx.data["train"], 8), 4))
    saved.save(path, moe, groups, torch.load(routers_dir / "routers.pt"), cfg.router, cfg.save_ratio)
    return path


# ---------------------------------------------------------------------------------------------------------
# Report


def report(ctx, dense: Stage, relu: Stage | None, experts: Stage, routers: Stage, evaluation: Stage,
           all_stages: list[Stage]) -> dict:
    main = ctx.task.main_metric
    base = dense.info["metrics"]
    metrics = {k: v for k, v in base.items() if isinstance(v, int | float)}
    if relu is not None:
        metrics[f"relu_{main}_before"] = relu.info["before"][main]
        metrics[f"relu_{main}"] = relu.info["after"][main]
    ratios = {}
    for key, m in evaluation.info["ratios"].items():
        relative = m[main] / base[main] if base[main] else float("nan")
        speed = evaluation.info["dense_eval_seconds"] / m["eval_seconds"] if m["eval_seconds"] else float("nan")
        ratios[key] = {**m, "relative": relative, "eval_speedup": speed, "recall": routers.info["recall"][key]}
        metrics[f"{main}@{key}"] = m[main]
        metrics[f"relative@{key}"] = relative
        if relu is not None and relu.info["after"][main]:
            metrics[f"relative_relu@{key}"] = ratios[key]["relative_relu"] = m[main] / relu.info["after"][main]
        metrics[f"recall@{key}"] = routers.info["recall"][key]
    plot(ctx, ratios, base[main], relu.info["after"][main] if relu else None)
    print_table(ctx, ratios, base[main], experts.info)
    return {
        "metrics": metrics,
        "dense": base,
        "relu": None if relu is None else {"before": relu.info["before"], "after": relu.info["after"]},
        "ratios": ratios,
        "experts": experts.info,
        "router": {k: v for k, v in routers.info.items() if k != "training"},
        "stages": {s.name: {"status": s.reused, "path": str(s.path.resolve()), "seconds": s.info.get("seconds")}
                   for s in all_stages},
        "plot": "moefication.png",
    }


def print_table(ctx, ratios: dict, dense: float, experts: dict) -> None:
    main = ctx.task.main_metric
    cfg: Config = ctx.method
    print(f"MoEfication {cfg.split} split, {cfg.router} router, {experts['num_experts']} experts x "
          f"{experts['expert_size']} neurons; dense {main} {dense:.4f}")
    print(f"{'ratio':>6} {'k':>4} {main:>10} {'% dense':>8} {'recall':>7}")
    for key, m in ratios.items():
        print(f"{key:>6} {m['k']:>4} {m[main]:>10.4f} {100 * m['relative']:>7.1f}% {m['recall']:>7.3f}")


def plot(ctx, ratios: dict, dense: float, relu: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = ctx.task.main_metric
    xs = [float(k) for k in ratios]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [ratios[k][main] for k in ratios], "o-", label=f"MoE ({ctx.method.split}, {ctx.method.router})")
    ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
    ax.axhline(0.95 * dense, color="gray", ls=":", lw=1, label="95% of dense")
    if relu is not None:
        ax.axhline(relu, color="tab:orange", ls="--", lw=1, label="dense, ReLU")
    ax.set_xlabel("share of experts per token")
    ax.set_ylabel(main)
    ax.set_title(f"MoEfication: {ctx.task.name}, {ctx.model_cfg.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.path("moefication.png"), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Helpers


def ratio_key(ratio: float) -> str:
    return repr(float(ratio))


def relu_train(ctx):
    epochs = ctx.method.relu_epochs
    return ctx.train if epochs is None else dataclasses.replace(ctx.train, epochs=epochs)


def split_key(ctx, source: Stage, inputs: Stage) -> dict:
    cfg: Config = ctx.method
    key = {"model": source.digest, "split": cfg.split, "expert_size": cfg.expert_size,
           "num_experts": cfg.num_experts, "seed": ctx.seed}
    if cfg.split == "param_cluster":
        key["n_init"] = cfg.cluster_n_init
    if cfg.split == "coact":
        key["inputs"] = inputs.digest
    return key


def router_key(ctx, experts: Stage, inputs: Stage) -> dict:
    cfg: Config = ctx.method
    key = {"split": experts.digest, "inputs": inputs.digest, "router": cfg.router, "ratios": cfg.ratios,
           "holdout": cfg.router_holdout, "seed": ctx.seed}
    if cfg.router == "mlp":
        key.update(epochs=cfg.router_epochs, lr=cfg.router_lr, batch_size=cfg.router_batch_size)
    return key


def check(ctx) -> None:
    """check_model on the model's skeleton (config only): runner/preflight.py runs it before weights load."""
    from runner.models import skeleton

    base_run = ctx.method.base_run
    base = finished_run(base_run, key="method.base_run", task=ctx.task_cfg.name) if base_run else None
    check_model(ctx, skeleton(ctx.model_cfg, base and str(base)))


def check_model(ctx, model) -> tuple[int, int]:
    """(experts, expert size) for this model, or a one-line error naming the fix."""
    cfg: Config = ctx.method
    ffns = arch.ffns(model)
    name = ctx.model_cfg.name
    if any(f.gated for f in ffns):
        raise UserError(f"model {name} has gated FFNs (T5 v1.1 style act(W_g x) * W_in x); MoEfication "
                        "supports plain FFNs only: pick a model with feed_forward_proj=relu or gelu")
    if not cfg.relufy:
        module.kernel_activation(ffns[0].activation)
    d_ff = ffns[0].w_in.out_features
    divisors = [n for n in range(1, d_ff + 1) if d_ff % n == 0]
    if cfg.num_experts is not None:
        if d_ff % cfg.num_experts:
            raise UserError(f"method.num_experts={cfg.num_experts} does not divide the FFN width {d_ff} of model "
                            f"{name}; use one of {', '.join(map(str, divisors))}")
        return cfg.num_experts, d_ff // cfg.num_experts
    if d_ff % cfg.expert_size:
        raise UserError(f"method.expert_size={cfg.expert_size} does not divide the FFN width {d_ff} of model "
                        f"{name}; use one of {', '.join(map(str, divisors))} (or set method.num_experts)")
    return d_ff // cfg.expert_size, cfg.expert_size
