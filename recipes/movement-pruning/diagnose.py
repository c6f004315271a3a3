"""What happens inside a hard movement (or magnitude) fine-pruning run, step by step: the diagnostic behind the
movement-pruning README's "Why movement collapses" section (issue #33, item 3).

It runs the recipe's own fine-pruning (runner.methods.prune.fine_prune, curve.yaml's config, KD from the dense
MiniLM of the same seed) with a probe callback that, every `--every` optimizer steps, records on a fixed batch
of dev sentences (eval mode, no grad: the training trajectory is that of a plain recipe run):

    schedule   the target level, the learning rates of the weights and of the scores
    model      dev loss and accuracy on the probe batch, the share of the majority prediction, the logits' spread
    masks      per matrix kind (q, k, v, o, w_in, w_out): the kept share, the churn (share of the kept entries
               that were not kept at the previous probe), the share of rows and of columns left empty
    scores     per kind: mean, std and the score at the top-k boundary (movement)
    outliers   per kind: the share of the pruned entries that sit in the 1% of input columns with the largest
               |token mean| (the residual stream's outlier dimensions; 1% if pruning ignored them), and what the
               pruned entries contributed to the matrix's output before they went: its token mean (the part
               every token shares) and its token deviations, each as a share of the whole matrix's
    residual   per layer: ||attention out|| / ||residual in||, ||FFN out|| / ||residual in|| (token means), and
               how constant each sublayer's output is over the tokens (||token mean|| / mean token norm: 1 = the
               same vector for every token, what pruned weights leave when only the biases speak)
    pooled     mean pairwise cosine of the mean-pooled last hidden states of the probe sentences (1 = every
               sentence looks the same to the classifier)

Each run writes <out>/<pruner>-<sparsity>-seed<seed>/trace.jsonl (one JSON object per probe) beside the run's
results.json; `--summary` prints the traces of a folder side by side.

    cd /work/main && nice -n 10 .venv/bin/python recipes/movement-pruning/diagnose.py --sparsity 0.9 --seed 1 \
        --out /tmp/mvp-diag hardware.threads=1                      # one run (~10 min on one core)
    .venv/bin/python recipes/movement-pruning/diagnose.py --summary /tmp/mvp-diag

Extra arguments are Hydra overrides on top of `+experiment=movement-pruning/curve` (e.g. train.epochs=8
method.warmup=0.3). It is a script, not part of the runner package: it imports the prune method to run it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

KINDS = ("q", "k", "v", "o", "w_in", "w_out")


def kinds_of(model) -> dict[int, tuple[str, int]]:
    """id(Linear) -> (kind, layer) for the encoder's pruned matrices."""
    from runner.models import arch

    out = {}
    for i, att in enumerate(arch.attentions(model, "self", "encoder")):
        for kind in ("q", "k", "v", "o"):
            out[id(getattr(att, kind))] = (kind, i)
    for i, ffn in enumerate(arch.ffns(model, stack="encoder")):
        out[id(ffn.w_in)] = ("w_in", i)
        out[id(ffn.w_out)] = ("w_out", i)
    return out


def current_mask(module):
    """The 0/1 mask a parametrized Linear applies now (movement: TopK of the scores; magnitude: its buffer)."""
    mask_module = module.parametrizations.weight[0]
    mask = mask_module.mask
    return (mask() if callable(mask) else mask).detach()


def make_probe(ctx, every: int, probe_size: int, trace: Path):
    import torch
    from transformers import TrainerCallback

    from runner.models import arch
    from runner.tasks.collators import collator, model_inputs

    dev = ctx.data["validation"]
    dev = dev.select(range(min(probe_size, len(dev))))
    batch = collator(ctx.tokenizer, mlm=False)([dict(r) for r in model_inputs(dev)])
    labels = batch.pop("labels")

    class Probe(TrainerCallback):
        def __init__(self):
            self.previous: dict[str, torch.Tensor] = {}
            self.inputs: dict[int, torch.Tensor] = {}  # id(Linear) -> |token mean| of each input column
            self.schedule = None
            self.last_loss = None
            self.stop_at = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.stop_at is not None and state.global_step >= self.stop_at:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = logs["loss"]

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.record(state.global_step, model, kwargs.get("optimizer"))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self.record(state.global_step, model, kwargs.get("optimizer"))

        @torch.no_grad()
        def record(self, step, model, optimizer):
            row = {"step": step, "train_loss": self.last_loss}
            if self.schedule is not None and self.schedule.schedule is not None:
                row["level"] = self.schedule.level(step)
            if optimizer is not None:
                row["lr"] = [g["lr"] for g in optimizer.param_groups]
            was_training = model.training
            model.eval()
            try:
                row.update(residual_and_outputs(model, batch, labels))
            finally:
                model.train(was_training)
            row.update(masks_and_scores(model, self.previous, self.inputs))
            with trace.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"probe step {step}: level {row.get('level', 0):.3f} dev acc {row['acc']:.3f} "
                  f"loss {row['loss']:.3f} majority {row['majority']:.2f} pooled cos {row['pooled_cos']:.3f}",
                  flush=True)

    def masks_and_scores(model, previous, inputs) -> dict:
        from torch.nn.utils import parametrize

        kinds = kinds_of(model)
        acc: dict[str, dict[str, list[float]]] = {k: {} for k in KINDS}
        for name, module in model.named_modules():
            if id(module) not in kinds or not parametrize.is_parametrized(module, "weight"):
                continue
            kind, _ = kinds[id(module)]
            mask = current_mask(module)
            stats = acc[kind]
            kept = mask.bool()
            stats.setdefault("kept", []).append(float(kept.float().mean()))
            stats.setdefault("empty_rows", []).append(float((~kept.any(dim=1)).float().mean()))
            stats.setdefault("empty_cols", []).append(float((~kept.any(dim=0)).float().mean()))
            x = inputs.get(id(module))
            pruned = ~kept
            if x is not None and pruned.any():
                mean = x.mean(0)
                # the 1% of input columns with the largest |token mean| (the residual stream's outlier dimensions):
                # their share of the pruned entries, against their share of all entries (1%)
                top = torch.topk(mean.abs(), max(1, mean.numel() // 100)).indices
                stats.setdefault("pruned_in_outlier_cols", []).append(
                    float(pruned[:, top].sum() / pruned.sum()))
                # what the pruned entries contributed to the output: its token mean (the part common to every
                # token) and its deviations (what tells tokens apart), each as a share of the whole matrix's
                w = module.parametrizations.weight.original.detach().float()
                w_pruned = w * pruned.float()
                dev = x - mean
                stats.setdefault("pruned_const_share", []).append(
                    float((w_pruned @ mean).norm() / (w @ mean).norm().clamp(min=1e-12)))
                stats.setdefault("pruned_token_share", []).append(
                    float((dev @ w_pruned.T).norm() / (dev @ w.T).norm().clamp(min=1e-12)))
            if name in previous:
                before = previous[name]
                stats.setdefault("churn", []).append(float((kept & ~before).sum() / max(int(kept.sum()), 1)))
            previous[name] = kept.clone()
            scores = getattr(module.parametrizations.weight[0], "scores", None)
            if scores is not None:
                s = scores.detach().flatten().float()
                stats.setdefault("score_mean", []).append(float(s.mean()))
                stats.setdefault("score_std", []).append(float(s.std()))
                n_keep = int(kept.sum())
                if 0 < n_keep < s.numel():
                    stats.setdefault("score_boundary", []).append(float(torch.topk(s, n_keep).values[-1]))
        return {kind: {k: sum(v) / len(v) for k, v in stats.items()} for kind, stats in acc.items() if stats}

    def residual_and_outputs(model, batch, labels) -> dict:
        outs: dict[str, list] = {"att": [], "ffn": []}
        hooks = []
        mask = batch["attention_mask"].bool()
        pruned_ids = kinds_of(model)
        for module in (m for m in model.modules() if id(m) in pruned_ids):
            def remember(m, args, mask=mask):  # the input tokens (padding excluded), at most 512 of them
                x = args[0].detach()
                x = x[mask].float() if x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1]).float()
                probe.inputs[id(m)] = x[:: max(1, x.shape[0] // 512)]
            hooks.append(module.register_forward_pre_hook(remember))
        for att in arch.attentions(model, "self", "encoder"):
            hooks.append(att.o.register_forward_hook(lambda m, i, o: outs["att"].append(o.detach())))
        for ffn in arch.ffns(model, stack="encoder"):
            hooks.append(ffn.w_out.register_forward_hook(lambda m, i, o: outs["ffn"].append(o.detach())))
        try:
            out = model(**batch, output_hidden_states=True)
        finally:
            for h in hooks:
                h.remove()
        mask = batch["attention_mask"].bool()
        logits = out.logits.float()
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        pred = logits.argmax(-1)
        majority = float(max((pred == c).float().mean() for c in pred.unique()))
        row = {"loss": loss, "acc": float((pred == labels).float().mean()), "majority": majority,
               "logit_std": float(logits.std(0).mean())}

        def tokens(x):  # (tokens, d): the non-padding positions
            return x[mask].float()

        hidden = out.hidden_states
        layers = []
        for i in range(len(outs["att"])):
            resid = tokens(hidden[i]).norm(dim=-1).mean()
            entry = {}
            for part in ("att", "ffn"):
                y = tokens(outs[part][i])
                entry[f"{part}_ratio"] = float(y.norm(dim=-1).mean() / resid)
                entry[f"{part}_constant"] = float(y.mean(0).norm() / y.norm(dim=-1).mean().clamp(min=1e-12))
            layers.append(entry)
        row["layers"] = layers
        last = hidden[-1].float()
        pooled = (last * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        cos = pooled @ pooled.T
        n = cos.shape[0]
        row["pooled_cos"] = float((cos.sum() - n) / (n * (n - 1)))
        return row

    probe = Probe()
    return probe


def run_one(args, overrides: list[str]) -> Path:
    from transformers import set_seed

    from runner import hardware
    from runner.config import compose
    from runner.methods import prune
    from runner.run import make_context
    from runner.stages import Stages

    name = args.name or f"{args.pruner}-{args.sparsity}-seed{args.seed}"
    run_dir = Path(args.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = run_dir / "trace.jsonl"
    trace.unlink(missing_ok=True)
    cfg = compose(["+experiment=movement-pruning/curve", f"method.pruner={args.pruner}",
                   f"method.sparsity={args.sparsity}", f"seed={args.seed}",
                   f"paths.output_root={args.out}", *overrides])
    ctx = make_context(cfg, run_dir)
    hardware.apply(ctx.hardware)
    set_seed(ctx.seed)
    probe = make_probe(ctx, args.every, args.probe_size, trace)
    probe.stop_at = args.stop_at
    stages = Stages(ctx.run_dir, ctx.cache_dir and Path(ctx.cache_dir), ctx.log, "prune")
    original = prune.Schedule.on_train_begin

    def remember(self, *a, **k):  # the probe reads the level off the run's own schedule
        probe.schedule = self
        return original(self, *a, **k)

    prune.Schedule.on_train_begin = remember
    result = prune.fine_prune(ctx, stages, callbacks=[probe])
    summary = {k: result[k] for k in ("metrics", "remaining", "dense") if k in result}
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary["metrics"], default=str))
    return trace


def summary(folder: Path, steps: list[int] | None = None) -> None:
    """The traces of a folder side by side: the probe's accuracy, loss, churn and residual picture."""
    for trace in sorted(folder.glob("*/trace.jsonl")):
        rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        result = trace.parent / "result.json"
        final = json.loads(result.read_text())["metrics"].get("accuracy") if result.exists() else None
        print(f"\n== {trace.parent.name}: final dev accuracy {final}")
        print(f"{'step':>5} {'level':>6} {'lr_w':>8} {'lr_s':>8} {'acc':>6} {'loss':>6} {'maj':>5} {'cos':>6} "
              f"{'churn':>6} {'erow':>5} {'ecol':>5} {'att/res':>8} {'ffn/res':>8} {'att_c':>6} {'ffn_c':>6} {'outl%':>6} "
              f"{'pr_mean':>7} {'pr_tok':>6}")
        for r in rows:
            if steps and r["step"] not in steps:
                continue
            kinds = [r[k] for k in KINDS if k in r]
            churn = [k["churn"] for k in kinds if "churn" in k]
            layers = r.get("layers", [])

            def mean(xs):
                return sum(xs) / len(xs) if xs else math.nan

            lr = r.get("lr") or [math.nan]  # AdamW groups: weights (decay, no decay), then the scores
            print(f"{r['step']:>5} {r.get('level', 0):>6.3f} {lr[0]:>8.2e} {lr[-1]:>8.2e} {r['acc']:>6.3f} "
                  f"{r['loss']:>6.3f} {r['majority']:>5.2f} {r['pooled_cos']:>6.3f} {mean(churn):>6.3f} "
                  f"{mean([k['empty_rows'] for k in kinds]):>5.3f} {mean([k['empty_cols'] for k in kinds]):>5.3f} "
                  f"{mean([x['att_ratio'] for x in layers]):>8.3f} {mean([x['ffn_ratio'] for x in layers]):>8.3f} "
                  f"{mean([x['att_constant'] for x in layers]):>6.3f} {mean([x['ffn_constant'] for x in layers]):>6.3f} "
                  f"{100 * mean([k['pruned_in_outlier_cols'] for k in kinds if 'pruned_in_outlier_cols' in k]):>6.1f} "
                  f"{mean([k['pruned_const_share'] for k in kinds if 'pruned_const_share' in k]):>7.3f} "
                  f"{mean([k['pruned_token_share'] for k in kinds if 'pruned_token_share' in k]):>6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruner", default="movement", choices=["movement", "magnitude"])
    parser.add_argument("--sparsity", type=float, default=0.9, help="share pruned (0.9 = 10%% remaining)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="/tmp/mvp-diag", help="folder of the diagnostic runs (not outputs/)")
    parser.add_argument("--name", help="folder of this run under --out (default <pruner>-<sparsity>-seed<seed>)")
    parser.add_argument("--every", type=int, default=10, help="probe every this many optimizer steps")
    parser.add_argument("--probe-size", type=int, default=128, help="dev sentences in the probe batch")
    parser.add_argument("--stop-at", type=int, help="stop training at this step (the schedule still spans the "
                        "whole run): a cheap look at the first pruning steps")
    parser.add_argument("--summary", metavar="FOLDER", help="print the traces under FOLDER and exit")
    parser.add_argument("--steps", type=int, nargs="*", help="with --summary: only these steps")
    args, overrides = parser.parse_known_args(argv)
    if args.summary:
        folder = Path(args.summary)
        if not folder.is_dir():
            print(f"error: --summary {folder}: no such folder; give the --out of earlier runs", file=sys.stderr)
            return 2
        summary(folder, args.steps)
        return 0
    bad = [o for o in overrides if "=" not in o]
    if bad:
        print(f"error: unknown argument(s) {' '.join(bad)}: give options as --name and Hydra overrides as "
              "key=value", file=sys.stderr)
        return 2
    run_one(args, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
