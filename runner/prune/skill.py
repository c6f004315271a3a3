"""Skill neurons (Wang et al. 2022, "Finding Skill Neurons in Pre-trained Transformer-based Language Models",
arXiv 2211.07349) and the mean folding that lets FFN neurons be removed without losing their average output.

- Activations: each FFN neuron's inner activation (the input of W_out, before any neuron gate) at one position
  per example: "cls" (the first token; the paper reads the prompt tokens' positions) or "mean" (the mean over
  real tokens: what a mean-pooled classifier reads).
- Predictivity: the neuron predicts 1[a > a_bsl] (or its negation), a_bsl = the mean activation over a set of
  examples; predictivity = max(acc, 1 - acc) of that rule. The paper takes a_bsl on the training set and the
  accuracy on dev; we take both from training rows, the baseline from the first half and the accuracy on the
  second, so the selection never sees the dev set it is judged on. Binary classification only (the paper
  splits multi-class tasks into binary subtasks).
- Mean folding: a removed neuron j then adds W_out[:, j] * mean_j for every token, its mean activation over the
  real tokens of training rows, folded into W_out's bias. Only the removed neurons are folded (the reference's
  prune.py adds W_out @ mean over all neurons, counting the kept ones twice). For an input whose removed
  neurons' activations equal their means, the pruned FFN's output equals the dense one (tests check it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from runner.errors import UserError
from runner.models import arch

Batches = Callable[[], Iterable[dict]]
POSITIONS = ("cls", "mean")


def activations(model: nn.Module, batches: Batches, position: str = "cls"
                ) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Per encoder FFN: (examples, d_ff) activations at `position`, the (d_ff,) mean over every real token
    of the batches, and the (examples,) labels."""
    if position not in POSITIONS:
        raise UserError(f"method.skill_position must be one of {', '.join(POSITIONS)}, got '{position}'")
    ffns = arch.ffns(model, stack="encoder")
    per_example: list[list[Tensor]] = [[] for _ in ffns]
    sums = [torch.zeros(f.w_out.in_features, dtype=torch.float64) for f in ffns]
    count = 0
    labels: list[Tensor] = []
    current: dict[int, Tensor] = {}

    def keep(i: int, module, args):
        current[i] = args[0].detach()

    handles = [f.w_out.register_forward_pre_hook(lambda m, a, i=i: keep(i, m, a), prepend=True)
               for i, f in enumerate(ffns)]
    was_training = model.training
    model.eval()
    device = ffns[0].w_out.weight.device
    try:
        with torch.no_grad():
            for batch in batches():
                batch = {k: v.to(device) for k, v in batch.items()}
                model(**{k: v for k, v in batch.items() if k != "labels"})
                real = batch["attention_mask"].bool()
                labels.append(batch["labels"].cpu())
                count += int(real.sum())
                for i in range(len(ffns)):
                    h = current[i].float()  # (B, L, d_ff)
                    sums[i] += h[real].sum(0).double().cpu()
                    if position == "cls":
                        per_example[i].append(h[:, 0].cpu())
                    else:
                        m = real[..., None].float()
                        per_example[i].append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not labels:
        raise UserError("skill neurons: no training examples to score (method.skill_examples)")
    means = [(s / max(count, 1)).float() for s in sums]
    return [torch.cat(p) for p in per_example], means, torch.cat(labels)


def predictivity(features: Tensor, labels: Tensor) -> Tensor:
    """(d_ff,) max(acc, 1 - acc) of 1[a > a_bsl] on the second half of the rows, a_bsl = the first half's mean."""
    if labels.is_floating_point() or labels.unique().numel() > 2 or int(labels.max()) > 1:
        raise UserError("skill neurons need a binary classification task (labels 0/1); the paper splits "
                        "multi-class tasks into binary subtasks, which this option does not")
    half = len(labels) // 2
    if half < 1:
        raise UserError("skill neurons: give at least 2 training examples (method.skill_examples)")
    baseline = features[:half].mean(0)
    predicted = features[half:] > baseline  # (rows, d_ff)
    acc = (predicted == labels[half:, None].bool()).float().mean(0)
    return torch.maximum(acc, 1 - acc)


def fold_means(model: nn.Module, keep: list[list[int]], means: list[Tensor]) -> None:
    """Add W_out[:, j] * mean_j of every removed neuron j (those not in `keep`) to W_out's bias."""
    with torch.no_grad():
        for ffn, ids, mean in zip(arch.ffns(model, stack="encoder"), keep, means, strict=True):
            removed = torch.ones(ffn.w_out.in_features, dtype=torch.bool)
            removed[ids] = False
            if not removed.any():
                continue
            if ffn.w_out.bias is None:
                raise UserError(f"{ffn.name}: W_out has no bias to fold the removed neurons' means into "
                                "(set method.fold_means=false)")
            w = ffn.w_out.weight
            contribution = w[:, removed.to(w.device)] @ mean[removed].to(w.device, w.dtype)
            ffn.w_out.bias += contribution
