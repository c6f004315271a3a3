"""Inference speed of a structurally pruned MiniLM vs the dense one, side by side in one process.

    python -m runner.bench prune [--heads 0.3] [--ffn 0.5] [--threads 2] [--repeats 7]

Removes the `--heads` share of attention heads (lowest ||V_h|| * ||O_h||, at least one head per layer) and
the `--ffn` share of FFN neurons per layer (lowest ||W_in row|| * ||W_out column||) physically (arch), checks
the pruned model against the gated dense model, and times both on random token ids at 1 x 64 and 32 x 128,
interleaved, min of repeats (runner.speed.measure). No training: accuracy is not the point here, the cost of the shapes is.
Prints the speedup (dense ms / pruned ms) per shape.
"""

from __future__ import annotations

import argparse
import copy


def pruned_minilm(heads: float, ffn: float):
    """(dense, pruned, max |logit difference| pruned vs gated)."""
    import torch

    from runner.bench.moe import load_minilm
    from runner.prune import structured

    dense, origin = load_minilm()
    print(f"MiniLM: {origin}")
    gated = copy.deepcopy(dense)
    masked = structured.mask_heads(gated, None, heads, step=heads, how="magnitude", log=lambda m: None)
    keep = structured.select_neurons(structured.ffn_importance(gated, "magnitude"), ffn)
    structured.gate_neurons(gated, keep)
    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = gated(input_ids=ids).logits
        pruned = copy.deepcopy(gated)
        structured.prune_masked(pruned, masked, keep)
        diff = (pruned(input_ids=ids).logits - reference).abs().max().item()
    return dense, pruned, diff


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.bench prune", description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=float, default=0.3, help="share of attention heads removed")
    p.add_argument("--ffn", type=float, default=0.5, help="share of FFN neurons removed in each layer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    import torch

    from runner import speed
    from runner.models import arch, count_parameters

    torch.set_num_threads(a.threads)
    dense, pruned, diff = pruned_minilm(a.heads, a.ffn)
    sizes = arch.layer_sizes(pruned)
    print(f"heads per layer {sizes['heads']}, FFN neurons per layer {sizes['ffn']}; "
          f"parameters {count_parameters(pruned)['total'] / count_parameters(dense)['total']:.3f} of dense; "
          f"max |pruned - gated| logit {diff:.2e}")
    result = speed.measure({"dense": dense, "pruned": pruned}, reference="dense",
                           vocab_size=dense.config.vocab_size, repeats=a.repeats)
    for shape in ("1x64", "32x128"):
        ms = result[shape]["ms"]
        print(f"{shape}: dense {ms['dense']:.1f} ms, pruned {ms['pruned']:.1f} ms, "
              f"speedup {result[shape]['speedup']['pruned']:.2f}x")
    return 0
