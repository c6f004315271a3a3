"""Where each head order cuts: the diagnostic behind the README's "Head orders read from the attention maps"
reading (why the entropy order falls below the random one).

For the finished curve runs of one seed whose order is scored once (attattr, entropy, random: results.json
`head_scores`), it replays the masking the run did (lowest score first, 7 heads a round, one head kept per
layer, as runner/prune/structured.py) and prints, per round, the accuracy as % of the dense model and how many
heads each layer has lost; then the rank correlation of the orders' scores. The gradient order re-scores after
every round, so its per-round cut is not in results.json; it is listed by accuracy only.

    .venv/bin/python recipes/head-pruning/diagnose_orders.py --seed 1

Runs are looked up under outputs/recipes/head-pruning/prune/glue/sst2/minilm ($PLM_OUTPUT_ROOT for outputs,
or --root). Reads results.json only: no model is loaded. A script, not part of the runner package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from runner.prune import structured  # the masking rule the runs used

ROOT = Path(__file__).resolve().parents[2]

ORDERS = ("gradient", "attattr", "entropy", "random")


def find_runs(root: Path, seed: int) -> dict[str, dict]:
    """{order: results} of the finished head-curve runs at `seed` under `root` (the first found per order)."""
    runs: dict[str, dict] = {}
    for path in sorted(root.glob(f"*/seed{seed}/results.json")):
        r = json.loads(path.read_text())
        method = r.get("config", {}).get("method", {})
        if r.get("status") != "completed" or not r.get("curve") or method.get("pruner") != "heads":
            continue
        runs.setdefault(method.get("head_importance", "gradient"), r)
    return runs


def replay(scores: list[list[float]], rounds: list[int]) -> dict[int, list[int]]:
    """{heads masked: heads masked per layer} when the heads go lowest score first, by the runner's own rule
    (runner.prune.structured: one head kept per layer, masked heads never picked again)."""
    imp = torch.tensor(scores, dtype=torch.float64)
    gates = torch.ones_like(imp)
    out: dict[int, list[int]] = {}
    for target in sorted(rounds):
        masked = int((gates == 0).sum())
        structured._mask_lowest(imp.masked_fill(gates == 0, float("inf")), gates, target - masked, False)
        out[target] = (gates == 0).sum(dim=1).tolist()
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two orders' scores."""
    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--root", type=Path, default=None, help="folder of the curve runs")
    args = p.parse_args(argv)
    root = args.root or (Path(os.environ.get("PLM_OUTPUT_ROOT", ROOT / "outputs"))
                         / "recipes/head-pruning/prune/glue/sst2/minilm")
    runs = find_runs(root, args.seed)
    if not runs:
        print(f"error: no finished head-curve run of seed {args.seed} under {root}; run "
              f"`python -m runner -m +experiment=head-pruning/<curve|attattr|entropy|random> seed={args.seed}`",
              file=sys.stderr)
        return 2
    for order in ORDERS:
        r = runs.get(order)
        if r is None:
            continue
        dense = r["dense"]["accuracy"]
        rounds = sorted(int(k) for k in r["curve"] if int(k) > 0)
        cuts = replay(r["head_scores"], rounds) if order != "gradient" and r.get("head_scores") else {}
        print(f"\n{order} order (seed {args.seed}, dense {100 * dense:.2f})")
        print("heads masked | % of dense | heads masked per layer (0 = bottom)")
        for k in rounds:
            cut = " ".join(str(x) for x in cuts[k]) if k in cuts else "(re-scored each round)"
            print(f"{k:12d} | {100 * r['curve'][str(k)]['accuracy'] / dense:10.1f} | {cut}")
    fixed = [o for o in ORDERS if o != "gradient" and o in runs and runs[o].get("head_scores")]
    if len(fixed) > 1:
        print("\nSpearman rank correlation of the orders' scores over all heads")
        for i, a in enumerate(fixed):
            for b in fixed[i + 1:]:
                flat_a = [x for row in runs[a]["head_scores"] for x in row]
                flat_b = [x for row in runs[b]["head_scores"] for x in row]
                print(f"  {a} vs {b}: {spearman(flat_a, flat_b):+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
