"""Head importance read from the attention maps: AttAttr and attention entropy.

- AttAttr (Hao et al. 2021, "Self-Attention Attribution", arXiv 2004.11207): for one example and one layer
  with attention probabilities A (heads x L x L), the attribution of each entry is
      Attr(A) = A * integral over alpha in [0, 1] of dF(alpha A)/dA,
  where F is the gold label's probability (a regression model: its prediction) with that layer's attention
  replaced by alpha A and every other layer left as it is. The integral is a Riemann sum over `steps` points
  (the paper: 20); a head's score is the maximum of Attr over its real-token pairs (i, j), summed over
  `examples` examples. By completeness, Attr summed over all entries of a layer is F(A) - F(0) up to the
  quadrature error (tests check it). We take the midpoint points alpha = (k + 1/2) / steps, a closer sum
  than the reference's left points k / steps for the same cost, and the examples from the training batches
  (the reference scores 200 dev examples: a selection must not see the data it is judged on).
- Attention entropy: each head's mean entropy -sum_j A_ij log A_ij over real query tokens and examples
  (computed beside Michel et al.'s importance in the bertology reference). As an order, the most diffuse
  heads (highest entropy) are masked first: a heuristic, not a paper's claim.

Both are computed once on the model as given (dense, all gates 1) and give a fixed order that
runner.prune.structured.mask_heads masks in rounds, like the random-order control.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from runner.models import arch

Batches = Callable[[], Iterable[dict]]


def _chunks(batches: Batches, examples: int, size: int, device) -> Iterator[dict]:
    """Sub-batches of at most `size` rows from the batches, `examples` rows in all (fewer if the data ends)."""
    left = examples
    for batch in batches():
        rows = len(batch["input_ids"])
        for start in range(0, rows, size):
            if left <= 0:
                return
            take = min(size, left, rows - start)
            yield {k: v[start:start + take].to(device) for k, v in batch.items()}
            left -= take


def _target(logits: Tensor, labels: Tensor) -> Tensor:
    """F per row: the gold label's probability (classification) or the prediction (one output)."""
    if logits.shape[-1] == 1:
        return logits.float().squeeze(-1)
    return logits.float().softmax(-1).gather(-1, labels.long().view(-1, 1)).squeeze(-1)


def _maps(model: nn.Module, inputs: dict) -> list[Tensor]:
    """Every encoder layer's attention probabilities (B, H, L, L) for `inputs`, without gradients."""
    with torch.no_grad(), arch.attention_scores(model) as cap:
        model(**inputs)
        return [s.float().softmax(-1) for s in cap.scores]


def _real_pairs(inputs: dict) -> Tensor:
    """(B, 1, L, L) True where both the query and the key token are real (not padding)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    real = mask.bool()
    return (real[:, :, None] & real[:, None, :])[:, None]


def layer_attribution(model: nn.Module, inputs: dict, layer: int, steps: int,
                      maps: list[Tensor] | None = None) -> Tensor:
    """(B, H, L, L) AttAttr of layer `layer`'s attention map for each row of `inputs` (labels included)."""
    labels = inputs["labels"]
    features = {k: v for k, v in inputs.items() if k != "labels"}
    a = (maps or _maps(model, features))[layer]  # (B, H, L, L)
    batch = a.shape[0]
    alphas = (torch.arange(steps, dtype=a.dtype, device=a.device) + 0.5) / steps
    # every row repeated `steps` times, row-major: (b, k) -> b * steps + k
    scaled = (alphas[None, :, None, None, None] * a[:, None]).flatten(0, 1).requires_grad_(True)
    repeated = {k: v.repeat_interleave(steps, 0) for k, v in features.items()}
    with arch.attention_override(model, layer) as sub:
        sub.probs = scaled
        target = _target(model(**repeated).logits, labels.repeat_interleave(steps, 0))
    (grad,) = torch.autograd.grad(target.sum(), scaled)
    return a * grad.unflatten(0, (batch, steps)).mean(1)


def attattr(model: nn.Module, batches: Batches, examples: int = 200, steps: int = 20, chunk: int = 4) -> Tensor:
    """(layers, heads) AttAttr head importance: max over real-token pairs of the attribution, summed over
    `examples` training examples (`chunk` of them x `steps` scaled copies per forward)."""
    layers = arch._encoder_attentions(model)
    device = layers[0].o.weight.device
    was_training = model.training
    model.eval()  # attention dropout off: the override is exact only then
    scores = torch.zeros(len(layers), layers[0].num_heads)
    try:
        for inputs in _chunks(batches, examples, chunk, device):
            maps = _maps(model, {k: v for k, v in inputs.items() if k != "labels"})
            pairs = _real_pairs(inputs)
            for i in range(len(layers)):
                attr = layer_attribution(model, inputs, i, steps, maps)
                attr = attr.masked_fill(~pairs, float("-inf"))
                scores[i] += attr.flatten(2).max(-1).values.sum(0).detach().cpu()
    finally:
        model.train(was_training)
    return scores


def attention_entropy(model: nn.Module, batches: Batches, examples: int = 200, chunk: int = 32) -> Tensor:
    """(layers, heads) mean entropy (nats) of each head's attention rows over real query tokens."""
    layers = arch._encoder_attentions(model)
    device = layers[0].o.weight.device
    was_training = model.training
    model.eval()
    total = torch.zeros(len(layers), layers[0].num_heads)
    count = 0.0
    try:
        for inputs in _chunks(batches, examples, chunk, device):
            maps = _maps(model, {k: v for k, v in inputs.items() if k != "labels"})
            queries = _real_pairs(inputs).any(-1)  # (B, 1, L) real query rows
            for i, a in enumerate(maps):
                rows = -(a * a.clamp(min=1e-12).log()).sum(-1)  # (B, H, L)
                total[i] += (rows * queries).sum((0, 2)).cpu()
            count += float(queries.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1.0)
