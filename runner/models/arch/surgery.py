"""Structured pruning: FFN neuron gates and physical removal of heads and FFN neurons (method=prune).

Ids are always those of the dense model: a pruned module remembers which original heads/neurons it keeps
(KEPT_HEADS on the attention block, KEPT_NEURONS on w_out), so iterative pruning and the saved plan speak
the same language. Gates (head_gate, neuron_gate) are the exact reference: pruning folds the kept gate
values into `o` / `w_out` columns and drops the gate, so a pruned model equals the gated one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from runner.errors import UserError
from runner.models.arch.blocks import FFN, GATE, Attention, _apply_gate
from runner.models.arch.families import attentions, family, ffns

NEURON_GATE = "neuron_gate"   # buffer/parameter name of the per-neuron gate on an FFN's w_out
KEPT_HEADS = "kept_heads"     # python attribute on an attention block: original ids of its heads
KEPT_NEURONS = "kept_neurons"  # python attribute on an FFN's w_out: original ids of its neurons
PLAN_FILE = "pruning_plan.json"


def _apply_neuron_gate(owner: nn.Module, w_out: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on `w_out`: scale neuron j of the inner activations by gate[j]."""
    x, *rest = args
    return (x * getattr(owner, NEURON_GATE).to(x.dtype), *rest)


def neuron_gate(ffn: FFN) -> Tensor:
    """The (d_ff,) gate multiplied into the FFN's inner activations before w_out; installed once, ones.

    Its gradient at 1 is sum(h * dL/dh) per neuron: the first-order (Taylor, |activation x gradient|)
    importance of the neuron."""
    w_out = ffn.w_out
    if not hasattr(w_out, NEURON_GATE):
        w_out.register_buffer(NEURON_GATE, torch.ones(w_out.in_features, dtype=w_out.weight.dtype,
                                                      device=w_out.weight.device))
    if not any(isinstance(h, functools.partial) and h.func is _apply_neuron_gate
               for h in w_out._forward_pre_hooks.values()):
        w_out.register_forward_pre_hook(functools.partial(_apply_neuron_gate, w_out))
    return getattr(w_out, NEURON_GATE)


def set_neuron_gate(ffn: FFN, gate: Tensor) -> None:
    """Use `gate` (a tensor, or an nn.Parameter to take its gradient) as this FFN's neuron gate."""
    if tuple(gate.shape) != (ffn.w_out.in_features,):
        raise ValueError(f"{ffn.name}: neuron gate must have shape ({ffn.w_out.in_features},), "
                         f"got {tuple(gate.shape)}")
    neuron_gate(ffn)
    delattr(ffn.w_out, NEURON_GATE)
    if isinstance(gate, nn.Parameter):
        ffn.w_out.register_parameter(NEURON_GATE, gate)
    else:
        ffn.w_out.register_buffer(NEURON_GATE, gate)


def _drop_hooks(module: nn.Module, func: Callable) -> None:
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, functools.partial) and hook.func is func:
            del module._forward_pre_hooks[key]


def _take_gate(module: nn.Module, attr: str, hooked: nn.Module, func: Callable) -> Tensor | None:
    """Remove a gate (buffer or parameter) and its hook; return its values, or None if there was none."""
    _drop_hooks(hooked, func)
    if not hasattr(module, attr):
        return None
    gate = getattr(module, attr).detach().clone()
    delattr(module, attr)
    return gate


def _slice_linear(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (dim 0: outputs, with their bias) or columns (dim 1: inputs) `index`."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device)).clone()
    with warnings.catch_warnings():  # a layer with every head removed: zero-element weights
        warnings.simplefilter("ignore", UserWarning)
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _set_child(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Replace the module object `old` wherever it hangs below `root` (FFN/Attention records hold references)."""
    for parent in root.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)


class EmptySelfAttention(nn.Module):
    """A BERT-family self-attention with every head removed: it outputs (batch, seq, 0) zeros, so the
    attention output dense gives its bias only (what zero head gates give). Zero-width q/k/v keep the
    arch accessors working."""

    def __init__(self, hidden: int, head_dim: int, like: nn.Linear):
        super().__init__()
        kw = dict(device=like.weight.device, dtype=like.weight.dtype)
        with warnings.catch_warnings():  # "initializing zero-element tensors is a no-op"
            warnings.simplefilter("ignore", UserWarning)
            self.query, self.key, self.value = (nn.Linear(hidden, 0, **kw) for _ in range(3))
        self.num_attention_heads, self.attention_head_size, self.all_head_size = 0, head_dim, 0

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> tuple[Tensor, None]:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _encoder_attentions(model: nn.Module) -> list[Attention]:
    if family(model) == "t5":
        raise UserError("head pruning is not supported for T5: its relative position bias is computed once "
                        "in layer 0 for all heads and shared by every layer (use method.pruner=ffn or an "
                        "unstructured pruner)")
    return attentions(model, kind="self", stack="encoder")


def kept_heads(att: Attention) -> list[int]:
    return list(getattr(att.module, KEPT_HEADS, range(att.num_heads)))


def kept_neurons(ffn: FFN) -> list[int]:
    return list(getattr(ffn.w_out, KEPT_NEURONS, range(ffn.w_out.in_features)))


def prune_heads(model: nn.Module, heads: dict[int, list[int]], allow_empty: bool = False) -> None:
    """Physically remove heads: {encoder layer: [original head ids to remove]}. Q, K, V lose the heads'
    rows, the attention output dense its columns. Kept heads' gate values are folded into those columns.
    A layer left without heads is refused unless `allow_empty` (then its attention yields its bias only)."""
    atts = _encoder_attentions(model)
    for layer, remove in heads.items():
        if not 0 <= int(layer) < len(atts):
            raise UserError(f"prune_heads: layer {layer} does not exist (the encoder has {len(atts)} layers)")
        att = atts[int(layer)]
        kept = kept_heads(att)
        unknown = set(remove) - set(kept)
        if unknown:
            raise UserError(f"prune_heads: layer {layer} has no head(s) {sorted(unknown)} (kept: {kept})")
        keep_pos = [i for i, h in enumerate(kept) if h not in set(remove)]
        if not keep_pos and not allow_empty:
            raise UserError(f"pruning every head of layer {layer} is not allowed; keep at least one head or "
                            "set method.allow_empty_layers=true")
        self_att, hd = att.module.self, att.head_dim
        gate = _take_gate(att.module, GATE, att.o, _apply_gate)
        rows = torch.tensor([h * hd + j for h in keep_pos for j in range(hd)], dtype=torch.long)
        cols_gate = None if gate is None else gate[keep_pos].repeat_interleave(hd)
        new_o = _slice_linear(att.o, rows, dim=1)
        if cols_gate is not None:
            with torch.no_grad():
                new_o.weight.mul_(cols_gate.to(new_o.weight.dtype))
        _set_child(model, att.o, new_o)
        if keep_pos:
            for name in ("query", "key", "value"):
                setattr(self_att, name, _slice_linear(getattr(self_att, name), rows, dim=0))
            self_att.num_attention_heads = len(keep_pos)
            self_att.all_head_size = len(keep_pos) * hd
        else:
            att.module.self = EmptySelfAttention(att.q.in_features, hd, att.q)
        setattr(att.module, KEPT_HEADS, [kept[i] for i in keep_pos])


def prune_ffn(model: nn.Module, keep: dict[int, list[int]], stack: str = "encoder") -> None:
    """Physically keep only some FFN neurons: {layer: [original neuron ids to keep]}. W_in (and W_gate)
    lose the other rows, W_out the other columns; kept neuron-gate values are folded into W_out."""
    blocks = ffns(model, stack=stack)
    for layer, ids in keep.items():
        if not 0 <= int(layer) < len(blocks):
            raise UserError(f"prune_ffn: layer {layer} does not exist ({len(blocks)} {stack} FFNs)")
        ffn = blocks[int(layer)]
        kept = kept_neurons(ffn)
        position = {n: i for i, n in enumerate(kept)}
        unknown = [n for n in ids if n not in position]
        if unknown:
            raise UserError(f"prune_ffn: layer {layer} has no neuron(s) {unknown[:5]} (already pruned?)")
        ids = sorted(set(ids))
        pos = torch.tensor([position[n] for n in ids], dtype=torch.long)
        gate = _take_gate(ffn.w_out, NEURON_GATE, ffn.w_out, _apply_neuron_gate)
        new_out = _slice_linear(ffn.w_out, pos, dim=1)
        if gate is not None:
            with torch.no_grad():
                new_out.weight.mul_(gate[pos].to(new_out.weight.dtype))
        for old, new in ((ffn.w_in, _slice_linear(ffn.w_in, pos, dim=0)), (ffn.w_out, new_out)) + (
                ((ffn.w_gate, _slice_linear(ffn.w_gate, pos, dim=0)),) if ffn.gated else ()):
            _set_child(model, old, new)
        setattr(new_out, KEPT_NEURONS, ids)


def pruning_plan(model: nn.Module) -> dict:
    """What was removed, in original ids: enough to rebuild the shapes of a pruned model from its config
    (whose num_attention_heads / intermediate_size are global and so cannot say it)."""
    plan: dict = {"family": family(model), "heads": {}, "ffn": {}}
    if family(model) != "t5":
        for i, att in enumerate(attentions(model, kind="self", stack="encoder")):
            if hasattr(att.module, KEPT_HEADS):
                plan["heads"][str(i)] = kept_heads(att)
    for i, ffn in enumerate(ffns(model, stack="encoder")):
        if hasattr(ffn.w_out, KEPT_NEURONS):
            plan["ffn"][str(i)] = kept_neurons(ffn)
    return plan


def apply_plan(model: nn.Module, plan: dict) -> None:
    """Shrink a dense model to a saved plan (then load the pruned state dict into it)."""
    if plan.get("heads"):
        atts = _encoder_attentions(model)
        prune_heads(model, {int(i): [h for h in range(atts[int(i)].num_heads) if h not in set(kept)]
                            for i, kept in plan["heads"].items()}, allow_empty=True)
    prune_ffn(model, {int(i): kept for i, kept in plan.get("ffn", {}).items()})


def layer_sizes(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN neurons per encoder layer, as they are now."""
    heads = [] if family(model) == "t5" else [a.num_heads for a in attentions(model, kind="self", stack="encoder")]
    return {"heads": heads, "ffn": [f.w_out.in_features for f in ffns(model, stack="encoder")]}


@torch.no_grad()
def fold_gates(model: nn.Module) -> None:
    """Fold every head and neuron gate into the `o` / `w_out` columns it scales and remove it, so the
    model computes the same without gates (and its state dict has no gate entries)."""
    for att in attentions(model):
        gate = _take_gate(att.module, GATE, att.o, _apply_gate)
        if gate is not None:
            att.o.weight.mul_(gate.repeat_interleave(att.head_dim).to(att.o.weight.dtype))
    for ffn in ffns(model):
        gate = _take_gate(ffn.w_out, NEURON_GATE, ffn.w_out, _apply_neuron_gate)
        if gate is not None:
            ffn.w_out.weight.mul_(gate.to(ffn.w_out.weight.dtype))
