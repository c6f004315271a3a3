"""Why the students copied from teacher layers 1, 3, 5 trail those copied from layers 0, 1, 2 under CE and KD,
and what TinyBERT's intermediate stage changes: the diagnostic behind the README's TinyBERT section.

For the finished all-data runs of one task and seed (every arm that copies teacher layers: CE, KD, TinyBERT),
it loads their shared teacher and, per arm, measures on dev sentences:

    cut            the student as built (the copied layers, embeddings and head), before any training: its dev
                   metric and, per student layer, how far its output is from the output of the teacher layer it
                   was copied from (||h_student - h_teacher|| / ||h_teacher|| over real tokens; 0 for a layer
                   whose predecessors are all copied too), and `head_gap`: the student's last output against the
                   teacher's last output, which the copied head was trained to read
    intermediate   TinyBERT only: the same after the intermediate stage (its student.pt)
    trained        the student the run saved: its dev metric and the same gaps
    loss           the run's training loss, every third logged value (trainer_state.json)
    spread         beside each metric: how far the predictions spread on those dev sentences (the std of a
                   regression output, or the share of the most predicted class): a student that predicts a
                   constant has std ~0 (or share 1) whatever its loss says

Random-init students (TinyBERT's own shape, `tinybert4.yaml`) have another width, so no gaps: their trained
metric, spread and the loss curves of both stages only.

`--cut` adds layer choices measured as cut only (no run needed), e.g. the consecutive copy beside a skip copy:

    .venv/bin/python recipes/distill/diagnose_layers.py --task stsb --seed 1 --cut "[0,1,2]"

Runs are looked up under outputs/recipes/distill/distill/glue/<task>/minilm ($PLM_OUTPUT_ROOT for outputs, or
--root). Extra arguments are Hydra overrides on top of `+experiment=distill/ce` (--experiment). A script, not
part of the runner package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_runs(root: Path, seed: int) -> dict[str, Path]:
    """{arm: run dir} of the finished all-data runs under `root` at `seed` whose student is a copy of teacher
    layers or a random init; the arm reads "<loss> alpha=<alpha> layers=<layers>" (with " random init" for the
    latter; the first found per arm, in sorted order)."""
    runs: dict[str, Path] = {}
    for results in sorted(root.glob(f"*/seed{seed}/results.json")):
        r = json.loads(results.read_text())
        method = r.get("config", {}).get("method", {})
        if (r.get("status") != "completed" or method.get("student_init") not in ("copy", "random")
                or method.get("student_train_samples") is not None or not isinstance(method.get("student_layers"), list)):
            continue
        arm = f"{method['loss']} alpha={method['alpha']} layers={method['student_layers']}"
        arm += " random init" if method["student_init"] == "random" else ""
        runs.setdefault(arm, results.parent)
    return runs


def loss_curve(run: Path, folder: str = "checkpoints") -> list[float]:
    states = sorted((run / folder).glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"] if states else []
    return [round(h["loss"], 4) for h in history if "loss" in h][::3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="stsb", choices=["stsb", "sst2"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=256, help="dev sentences for the output gaps")
    parser.add_argument("--root", help="folder of the runs (default <outputs>/recipes/distill/distill/glue/<task>/minilm)")
    parser.add_argument("--cut", action="append", default=[], help="a layer list (JSON) measured as cut only")
    parser.add_argument("--experiment", default="distill/ce", help="the experiment the runs' task settings come from")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        print(f"error: unknown argument(s) {' '.join(bad)}: Hydra overrides are key=value", file=sys.stderr)
        return 2
    outputs = Path(os.environ.get("PLM_OUTPUT_ROOT", ROOT / "outputs"))
    root = Path(args.root) if args.root else outputs / "recipes" / "distill" / "distill" / "glue" / args.task / "minilm"
    runs = find_runs(root, args.seed)
    if not runs:
        print(f"error: {root} holds no finished all-data run with a copied student at seed {args.seed}; run the "
              "arms of the README's TinyBERT section first", file=sys.stderr)
        return 2

    import torch
    from transformers import set_seed

    from runner import artifacts, hardware
    from runner.config import compose
    from runner.distill.student import dev_batches, from_teacher, hidden_states, relative_gap
    from runner.evaluation import evaluate
    from runner.run import make_context

    cfg = compose([f"+experiment={args.experiment}", f"task=glue/{args.task}", f"seed={args.seed}", *overrides])
    ctx = make_context(cfg, Path("/tmp") / f"distill-layers-{args.task}-{args.seed}")
    hardware.apply(ctx.hardware)
    set_seed(ctx.seed)
    batches = dev_batches(ctx, args.sentences)
    metric = ctx.task.main_metric
    first = json.loads((next(iter(runs.values())) / "results.json").read_text())
    teacher = artifacts.load_model_dir(ctx, Path(first["stages"]["teacher"]["path"]) / "model").eval()
    reference = hidden_states(teacher, batches)

    def spread(model) -> dict[str, float]:
        with torch.no_grad():
            logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
        if logits.shape[-1] == 1:
            return {"prediction_std": round(float(logits.squeeze(-1).std()), 4)}
        return {"majority_share": round(float(logits.argmax(-1).bincount().max()) / len(logits), 4)}

    report = {"task": args.task, "seed": args.seed, "metric": metric,
              "teacher": {"metric": round(evaluate(ctx, teacher)[metric], 4), **spread(teacher)}, "arms": {}}

    def measure(model, layers):
        # student layer k's output (hidden k + 1) against the output of the teacher layer it was copied from
        hidden = hidden_states(model.eval(), batches)
        gaps = relative_gap(hidden, reference, [(k + 1, j + 1) for k, j in enumerate(layers)])
        head = relative_gap(hidden, reference, [(len(layers), len(reference[0][0]) - 1)])[0]
        return {"metric": round(evaluate(ctx, model)[metric], 4), **spread(model), "output_gap": gaps,
                "head_gap": head}

    cuts: dict[str, dict] = {}  # the arms of one layer choice share their cut: measured once

    def cut(layers):
        key = json.dumps(layers)
        if key not in cuts:
            cuts[key] = measure(from_teacher(teacher, layers), layers)
        return cuts[key]

    for arm, run in runs.items():
        result = json.loads((run / "results.json").read_text())
        if Path(result["stages"]["teacher"]["path"]).resolve() != Path(first["stages"]["teacher"]["path"]).resolve():
            print(f"note: {arm} has another teacher stage ({result['stages']['teacher']['path']})", file=sys.stderr)
        layers = result["config"]["method"]["student_layers"]
        if result["config"]["method"]["student_init"] == "random":
            student = artifacts.load_model_dir(ctx, run / "model").eval()
            report["arms"][arm] = {"trained": {"metric": round(evaluate(ctx, student)[metric], 4), **spread(student)},
                                   "loss": loss_curve(run), "intermediate_loss": loss_curve(run / "intermediate")}
            continue
        entry = {"cut": cut(layers)}
        if (run / "intermediate" / "student.pt").exists():
            student = from_teacher(teacher, layers)
            student.load_state_dict(torch.load(run / "intermediate" / "student.pt", weights_only=True))
            entry["intermediate"] = measure(student, layers)
        entry["trained"] = measure(artifacts.load_model_dir(ctx, run / "model"), layers)
        entry["loss"] = loss_curve(run)
        report["arms"][arm] = entry
    for spec in args.cut:
        layers = json.loads(spec)
        report["arms"][f"cut only, layers={layers}"] = {"cut": cut(layers)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
