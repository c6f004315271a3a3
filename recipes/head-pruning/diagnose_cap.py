"""What CAP's contrastive terms do to recovery training: the diagnostic behind the README's CAP reading (why the
terms cost accuracy at 50% and less at 70-90%).

For the finished structured CAP runs of one seed (`cap.yaml`: both arms, every share found), it loads each run's
final pruned model and, on the same training batches, takes the gradient of the two parts of the loss the CAP arm
trains with, exactly as runner.prune.losses computes them:

    task   0.1 CE + 0.9 KD against the cached dense-model logits (what the KD-only arm trains with alone)
    terms  the contrastive terms: the sum over banks of 0.3 unsupervised + 3 supervised

and prints, per run, the loss parts, the norm of each part's gradient over all weights, and their cosine
(gradients averaged over the batches: the direction of the whole sample). Banks as the run had them: the
pre-trained model and the dense model encode the training set (once per seed, shared by the runs), plus the
run's saved snapshots (CAP arm; the KD-only arm has none, so its terms are measured against the first two banks
only). Models in eval mode (no dropout): the task loss alone and the whole loss see the same forward, and the
terms' gradient is the difference of the two. Each run's own loss settings are used (its results.json).

    .venv/bin/python recipes/head-pruning/diagnose_cap.py --seed 1

Runs are looked up under outputs/recipes/head-pruning/prune/glue/sst2/minilm ($PLM_OUTPUT_ROOT for outputs, or
--root). A script, not part of the runner package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_runs(root: Path, seed: int) -> dict[tuple[float, bool], Path]:
    """{(share of heads, contrastive): run dir} of the finished structured runs in steps at `seed` under `root`
    (the first found per key, in sorted order)."""
    runs: dict[tuple[float, bool], Path] = {}
    for path in sorted(root.glob(f"*/seed{seed}/results.json")):
        r = json.loads(path.read_text())
        method = r.get("config", {}).get("method", {})
        if r.get("status") != "completed" or method.get("pruner") != "structured" or method.get("iterative_steps", 1) < 2:
            continue
        runs.setdefault((float(method["heads"]), bool(method.get("contrastive"))), path.parent)
    return dict(sorted(runs.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batches", type=int, default=8, help="training batches of 32 the gradients are summed over")
    parser.add_argument("--root", help="folder of the runs (default <outputs>/recipes/head-pruning/prune/glue/sst2/minilm)")
    args, overrides = parser.parse_known_args(argv)
    outputs = Path(os.environ.get("PLM_OUTPUT_ROOT", ROOT / "outputs"))
    root = Path(args.root) if args.root else outputs / "recipes/head-pruning/prune/glue/sst2/minilm"
    runs = find_runs(root, args.seed)
    if not runs:
        print(f"error: no finished CAP runs at seed {args.seed} under {root}: run "
              f"`python -m runner -m +experiment=head-pruning/cap seed={args.seed}` first", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))

    from types import SimpleNamespace

    import torch
    from torch.utils.data import DataLoader
    from transformers import set_seed

    from runner import artifacts, hardware
    from runner.config import compose
    from runner.prune import contrastive, losses
    from runner.run import make_context
    from runner.tasks.collators import collator, model_inputs
    from runner.teacher_logits import LogitCache, row_key
    from runner.train import LossState

    cfg = compose(["+experiment=head-pruning/cap", f"seed={args.seed}", *overrides])
    ctx = make_context(cfg, Path("/tmp") / f"cap-diagnose-{args.seed}")
    hardware.apply(ctx.hardware)
    set_seed(ctx.seed)
    train = ctx.data["train"]
    loader = DataLoader(model_inputs(train.shuffle(seed=ctx.seed).select(range(min(32 * args.batches, len(train))))), batch_size=32,
                        collate_fn=collator(ctx.tokenizer, mlm=False))
    batches = list(loader)
    first = next(iter(runs.values()))
    cache = LogitCache.load(first / "teacher_logits" / "logits.pt")
    keys = [row_key(ids) for ids in train["input_ids"]]
    if any(cache.lookup(b["input_ids"], b.get("attention_mask")) is None for b in batches):
        print("error: the training rows differ from the runs' cached teacher logits: pass the runs' task overrides "
              "(e.g. task.max_train_samples)", file=sys.stderr)
        return 2
    dense = artifacts.load_model_dir(ctx, first / "dense" / "model")
    # each run's own loss settings (weights, tau, extra candidates, pooling), not this script's composition
    settings = {run: SimpleNamespace(**json.loads((run / "results.json").read_text())["config"]["method"])
                for run in runs.values()}
    method = settings[first]
    bs = ctx.train.eval_batch_size
    shared = {"pretrained": contrastive.encode(ctx.new_model(), train, ctx.tokenizer, bs, method.cap_pooling),
              "finetuned": contrastive.encode(dense, train, ctx.tokenizer, bs, method.cap_pooling)}

    def gradient(model, loss_fn) -> tuple[torch.Tensor, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        total, value = [torch.zeros_like(p) for p in params], 0.0
        for step, batch in enumerate(batches):
            loss, _ = loss_fn(model, dict(batch), None, LossState(step=step, max_steps=len(batches)))
            for acc, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
                if g is not None:
                    acc += g
            value += float(loss) / len(batches)
        return torch.cat([g.flatten() for g in total]) / len(batches), value

    report = {"seed": args.seed, "batches": args.batches, "runs": []}
    for (share, contrastive_arm), run in runs.items():
        if (run / "dense").resolve() != (first / "dense").resolve():
            print(f"note: {run.name} has another dense model", file=sys.stderr)
        model = artifacts.load_model_dir(ctx, run / "model").eval()
        banks = contrastive.Banks(keys, torch.tensor(train["labels"]))
        for name, vectors in shared.items():
            banks.add(name, vectors)
        for snapshot in sorted(run.glob("step*/snapshot.pt")):
            banks.add("snapshot", torch.load(snapshot, weights_only=True))
        g_task, task = gradient(model, losses.pruning_loss(settings[run], cache, None, ctx.seed))
        g_all, total = gradient(model, losses.pruning_loss(settings[run], cache, banks, ctx.seed))
        g_terms = g_all - g_task
        cosine = float(torch.nn.functional.cosine_similarity(g_task, g_terms, dim=0))
        accuracy = json.loads((run / "results.json").read_text())["metrics"]["accuracy"]
        report["runs"].append({"share": share, "arm": "CAP" if contrastive_arm else "KD only",
                               "accuracy": round(accuracy, 4), "banks": {k: v.shape[1] for k, v in banks.vectors.items()},
                               "loss_task": round(task, 4), "loss_terms": round(total - task, 4),
                               "grad_task": round(float(g_task.norm()), 4), "grad_terms": round(float(g_terms.norm()), 4),
                               "cosine": round(cosine, 3)})
        print(json.dumps(report["runs"][-1]), file=sys.stderr)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
