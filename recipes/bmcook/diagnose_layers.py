"""Why the chain's distillation step keeps 92% of dense on STS-B with layers 0, 2, 4 and 99% with 0, 1, 2: the
diagnostic behind the README's "Which layers the distillation step keeps" section.

For one finished P+D+Q run pair (the recipe's default student layers and `student_layers=[0,1,2]`, same seed),
it loads the chain's pruned model (step 1, the distillation step's source) and, for each layer choice:

    cut        the student as the distillation step builds it (arch.keep_layers), before any training:
               its dev metric, and per student layer how far its input is from the input that layer had in
               the full model (||h_student - h_full|| / ||h_full|| over the real tokens of dev sentences;
               0 for a layer whose predecessors are all kept)
    trained    the distilled student the run saved (step 2): its dev metric
    curve      the run's training loss and the mid-training dev metric (trainer_state.json of step 2)

    .venv/bin/python recipes/bmcook/diagnose_layers.py --task stsb --seed 1
    .venv/bin/python recipes/bmcook/diagnose_layers.py --task sst2 --seed 1 hardware.threads=1

Runs are looked up under outputs/recipes/bmcook/compress/glue/<task>/minilm ($PLM_OUTPUT_ROOT for outputs, or
--root): every finished chain starting prune -> distill at the seed, one per student layer choice. Extra
arguments are Hydra overrides on top of `+experiment=bmcook/<task>` (--experiment). A script, not part of the
runner package.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_runs(root: Path, seed: int) -> dict[str, Path]:
    """{student layers: run dir} of the finished chains under `root` that start prune -> distill at `seed`
    (without QAT), one per layer choice (the first found, in sorted order)."""
    runs: dict[str, Path] = {}
    for results in sorted(root.glob(f"*/seed{seed}/results.json")):
        r = json.loads(results.read_text())
        method = r.get("config", {}).get("method", {})
        steps = method.get("steps") or []
        if r.get("status") != "completed" or steps[:2] != ["prune", "distill"]:
            continue
        if (method.get("quantize") or {}).get("qat"):
            continue
        runs.setdefault(json.dumps(method["distill"]["student_layers"]), results.parent)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="stsb", choices=["stsb", "sst2"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=256, help="dev sentences for the input shift")
    parser.add_argument("--root", help="folder of the chains' runs (default <outputs>/recipes/bmcook/compress/"
                        "glue/<task>/minilm)")
    parser.add_argument("--experiment", help="the runs' experiment (default bmcook/<task>)")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        print(f"error: unknown argument(s) {' '.join(bad)}: Hydra overrides are key=value", file=sys.stderr)
        return 2
    outputs = Path(os.environ.get("PLM_OUTPUT_ROOT", ROOT / "outputs"))
    root = Path(args.root) if args.root else outputs / "recipes" / "bmcook" / "compress" / "glue" / args.task / "minilm"
    runs = find_runs(root, args.seed)
    if len(runs) < 2:
        print(f"error: {root} holds {len(runs)} finished prune -> distill chain(s) at seed {args.seed}; the "
              "diagnostic compares two student layer choices: run the P+D+Q arm with both (README)", file=sys.stderr)
        return 2

    from transformers import set_seed

    from runner import artifacts, hardware
    from runner.config import compose
    from runner.distill.student import dev_batches, hidden_states, relative_gap
    from runner.evaluation import evaluate
    from runner.models import arch
    from runner.run import make_context

    cfg = compose([f"+experiment={args.experiment or 'bmcook/' + args.task}", f"seed={args.seed}", *overrides])
    ctx = make_context(cfg, Path("/tmp") / f"bmcook-layers-{args.task}-{args.seed}")
    hardware.apply(ctx.hardware)
    set_seed(ctx.seed)
    batches = dev_batches(ctx, args.sentences)
    metric = ctx.task.main_metric
    report = {"task": args.task, "seed": args.seed, "metric": metric, "arms": {}}
    pruned = artifacts.load_model_dir(ctx, next(iter(runs.values())) / "step1-prune" / "model")
    full = hidden_states(pruned, batches)
    report["pruned"] = round(evaluate(ctx, pruned)[metric], 4)
    for arm, run in runs.items():
        layers = json.loads(arm)
        cut = arch.keep_layers(copy.deepcopy(pruned), layers).eval()
        trained = artifacts.load_model_dir(ctx, run / "step2-distill" / "model")
        state = sorted((run / "step2-distill" / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                       key=lambda p: int(p.parent.name.split("-")[1]))
        history = json.loads(state[-1].read_text())["log_history"] if state else []
        report["arms"][arm] = {
            "cut": round(evaluate(ctx, cut)[metric], 4),
            # student layer k's input (hidden k) against the input its source layer had in the full model
            "input_shift": relative_gap(hidden_states(cut, batches), full, list(enumerate(layers))),
            "trained": round(evaluate(ctx, trained)[metric], 4),
            "loss": [round(h["loss"], 4) for h in history if "loss" in h][::3],
            "mid_eval": [round(h[f"eval_{metric}"], 4) for h in history if f"eval_{metric}" in h],
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
