"""Structured pruning: which attention heads and FFN neurons to remove.

- Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): a gate xi_h on each
  head's context; I_h = sum over batches of |dL/dxi_h| at the current gates, normalised per layer by its
  L2 norm. Heads are masked iteratively: each round sets the gates of the least important `step` share of
  all heads to 0 and re-scores with the new mask, until `fraction` of the heads are masked.
- Orders scored once (the random-order control, AttAttr, attention entropy: runner.prune.attribution),
  masked in the same rounds.
- FFN neuron importance: "magnitude" = ||W_in row|| * ||W_out column||; "taylor" = sum over batches of
  |dL/dgate_j| at gate 1, i.e. |sum activation x gradient| (the same first-order estimate as for heads).

Selections are applied as gates (arch.head_gate / arch.neuron_gate), the exact reference; physical removal
(arch.prune_heads / arch.prune_ffn) then gives the same outputs with smaller matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from runner.errors import UserError
from runner.models import arch
from runner.prune import attribution

Batches = Callable[[], Iterable[dict]]  # a fresh pass over labelled batches each call


def _gate_gradients(model: nn.Module, gates: list[tuple[Callable, Callable, Tensor]], batches: Batches
                    ) -> list[Tensor]:
    """sum over batches of |dL/dgate| for each (get, set, values) gate, at the given gate values."""
    params = [nn.Parameter(values.detach().clone()) for _, _, values in gates]
    for (_, set_gate, _), p in zip(gates, params, strict=True):
        set_gate(p)
    totals = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()  # no dropout: importance of the model as it is evaluated
    device = params[0].device
    try:
        for batch in batches():
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for t, g in zip(totals, grads, strict=True):
                if g is not None:
                    t += g.detach().abs()
    finally:
        for (_, set_gate, _), p in zip(gates, params, strict=True):
            set_gate(p.detach().clone())
        model.train(was_training)
    return totals


def head_gates(model: nn.Module) -> Tensor:
    """(layers, heads) current gate values of the encoder self-attentions."""
    return torch.stack([a.head_gate().detach().clone() for a in arch.attentions(model, "self", "encoder")])


def set_head_gates(model: nn.Module, gates: Tensor) -> None:
    for att, g in zip(arch.attentions(model, "self", "encoder"), gates, strict=True):
        att.set_head_gate(g.clone())


def head_importance(model: nn.Module, batches: Batches, normalize: bool = True) -> Tensor:
    """(layers, heads) Michel et al.'s importance at the current head gates."""
    atts = arch._encoder_attentions(model)
    if len({a.num_heads for a in atts}) != 1:
        raise UserError("head importance needs the same number of heads in every layer (score the dense or "
                        "gated model, not a physically pruned one)")
    gates = [(a.head_gate, a.set_head_gate, a.head_gate()) for a in atts]
    imp = torch.stack(_gate_gradients(model, gates, batches))
    if normalize:  # layer-wise L2 normalisation (exponent 2), as in the reference implementation
        imp = imp / imp.norm(dim=1, keepdim=True).clamp(min=1e-20)
    return imp


def random_order(layers: int, heads: int, seed: int) -> Tensor:
    """(layers, heads) importance that is a seeded random permutation of the heads: the random-order control
    (Michel et al.'s claim is that importance order beats it). Drawn once, so masking it in rounds removes the
    heads in one fixed random order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(layers * heads, generator=generator).float().view(layers, heads)


def head_magnitude(model: nn.Module) -> Tensor:
    """(layers, heads) data-free importance: ||V rows of h|| * ||O columns of h|| (what h can add)."""
    out = []
    for att in arch._encoder_attentions(model):
        v = att.v.weight.detach().unflatten(0, (att.num_heads, att.head_dim)).flatten(1).norm(dim=1)
        o = att.o.weight.detach().unflatten(1, (att.num_heads, att.head_dim)).transpose(0, 1).flatten(1)
        out.append(v * o.norm(dim=1))
    return torch.stack(out)


def _check_heads(layers: int, heads: int, target: int, allow_empty: bool) -> None:
    if not allow_empty and target > layers * (heads - 1):
        raise UserError(f"removing {target} of {layers * heads} heads empties a layer; lower method.heads "
                        "or set method.allow_empty_layers=true")


def _mask_lowest(imp: Tensor, gates: Tensor, n: int, allow_empty: bool) -> None:
    """Set to 0 the gates of the n least important unmasked heads, keeping one per layer unless allowed."""
    heads = gates.shape[1]
    for flat in torch.argsort(imp.flatten()).tolist():
        if n == 0:
            break
        layer, head = divmod(flat, heads)
        if gates[layer, head] == 0 or (not allow_empty and int((gates[layer] != 0).sum()) == 1):
            continue
        gates[layer, head] = 0
        n -= 1


ORDERS = ("gradient", "magnitude", "random", "attattr", "entropy")


def fixed_order(model: nn.Module, batches: Batches | None, how: str, seed: int = 0, examples: int = 200,
                steps: int = 20) -> Tensor:
    """(layers, heads) importance scored once, on the model as given, for the orders that do not re-score
    between rounds: "random" (the control), "attattr" and "entropy" (runner.prune.attribution; the most
    diffuse heads first, so the order is minus the entropy)."""
    if how == "random":
        atts = arch._encoder_attentions(model)
        return random_order(len(atts), atts[0].num_heads, seed)
    if how == "attattr":
        return attribution.attattr(model, batches, examples, steps)
    if how == "entropy":
        return -attribution.attention_entropy(model, batches, examples)
    raise UserError(f"method.head_importance={how} re-scores every round; it has no fixed order")


def mask_heads(model: nn.Module, batches: Batches | None, fraction: float, step: float, how: str = "gradient",
               allow_empty: bool = False, log: Callable[[str], None] = print,
               on_round: Callable[[int], None] | None = None, seed: int = 0, order: Tensor | None = None
               ) -> list[list[int]]:
    """Set to 0 the gates of the least important heads until `fraction` of all heads are masked; returns
    the masked head ids per layer. "gradient" (Michel et al.): `step` of all heads per round, re-scored
    after each round with the new mask. "magnitude": one round by head_magnitude. "random", "attattr",
    "entropy": an order scored once on the unmasked model (`order`, else fixed_order with `seed` and the
    default example counts), masked `step` of all heads per round like "gradient", so every curve has the
    same points.
    `on_round(masked)` runs after each round on the gated model (e.g. to score it: the
    accuracy-vs-heads-removed curve)."""
    atts = arch._encoder_attentions(model)
    layers, heads = len(atts), atts[0].num_heads
    target = int(round(fraction * layers * heads))
    _check_heads(layers, heads, target, allow_empty)
    if how not in ORDERS:
        raise UserError(f"method.head_importance must be one of {', '.join(ORDERS)}, got '{how}'")
    per_round = target if how == "magnitude" else max(1, int(round(step * layers * heads)))
    gates = head_gates(model)
    if how in ("gradient", "magnitude"):
        order = None
    elif order is None and target > 0:
        order = fixed_order(model, batches, how, seed)
    while int((gates == 0).sum()) < target:
        if order is not None:
            imp = order.clone()
        else:
            imp = head_magnitude(model) if how == "magnitude" else head_importance(model, batches)
        imp = imp.to(gates.device)
        imp[gates == 0] = float("inf")
        _mask_lowest(imp, gates, min(per_round, target - int((gates == 0).sum())), allow_empty)
        set_head_gates(model, gates)
        log(f"heads: {int((gates == 0).sum())}/{layers * heads} masked ({how})")
        if on_round is not None:
            on_round(int((gates == 0).sum()))
    return [[h for h in range(heads) if gates[i, h] == 0] for i in range(layers)]


def ffn_importance(model: nn.Module, how: str, batches: Batches | None = None) -> list[Tensor]:
    """Per encoder FFN, a (d_ff,) importance: "magnitude" or "taylor" (|activation x gradient|)."""
    ffns = arch.ffns(model, stack="encoder")
    if how == "magnitude":
        return [(f.w_in.weight.detach().norm(dim=1) * f.w_out.weight.detach().norm(dim=0)) for f in ffns]
    if how == "taylor":
        gates = [(None, lambda g, f=f: arch.set_neuron_gate(f, g), arch.neuron_gate(f)) for f in ffns]
        return _gate_gradients(model, gates, batches)
    raise UserError(f"method.ffn_importance must be magnitude or taylor, got '{how}'")


def select_neurons(importance: list[Tensor], fraction: float, scope: str = "layer",
                   layers: list[int] | None = None) -> list[list[int]]:
    """Neurons to keep per layer: the top (1 - fraction) of each layer ("layer"), or over all layers with
    at least one neuron per layer ("global"). `layers`: only these layers lose neurons (None = all); the
    others keep every neuron."""
    chosen = list(range(len(importance))) if layers is None else sorted(set(layers))
    out = [list(range(imp.numel())) for imp in importance]
    if scope == "layer":
        for i in chosen:
            imp = importance[i]
            out[i] = sorted(torch.topk(imp, imp.numel() - int(round(fraction * imp.numel()))).indices.tolist())
        return out
    if scope != "global":
        raise UserError(f"method.ffn_scope must be layer or global, got '{scope}'")
    parts = [importance[i] for i in chosen]
    flat = torch.cat([imp / imp.clamp(min=0).sum().clamp(min=1e-20) for imp in parts])  # comparable across layers
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, flat.numel() - int(round(fraction * flat.numel()))).indices] = True
    start = 0
    for i, imp in zip(chosen, parts, strict=True):
        k = keep[start:start + imp.numel()]
        out[i] = k.nonzero().flatten().tolist() or [int(imp.argmax())]
        start += imp.numel()
    return out


def gate_neurons(model: nn.Module, keep: list[list[int]]) -> None:
    """The reference for FFN pruning: neuron gates 1 on kept neurons, 0 elsewhere."""
    for ffn, ids in zip(arch.ffns(model, stack="encoder"), keep, strict=True):
        gate = torch.zeros(ffn.w_out.in_features, dtype=ffn.w_out.weight.dtype, device=ffn.w_out.weight.device)
        gate[ids] = 1
        arch.set_neuron_gate(ffn, gate)


def prune_masked(model: nn.Module, heads: list[list[int]] | None, neurons: list[list[int]] | None,
                 allow_empty: bool = False) -> None:
    """Physically remove the masked heads and the unkept neurons (arch), gates folded in."""
    if heads is not None:
        arch.prune_heads(model, {i: h for i, h in enumerate(heads) if h}, allow_empty=allow_empty)
    if neurons is not None:
        arch.prune_ffn(model, dict(enumerate(neurons)))
    arch.fold_gates(model)
