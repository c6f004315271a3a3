"""Module and parameter names for parameter-efficient tuning (runner/peft). HF peft picks the modules it
adapts (target_modules) and the ones it trains whole (modules_to_save) by qualified name; these give the
names per family so that no method spells out a module path."""

from __future__ import annotations

from torch import nn

from runner.errors import UserError
from runner.models.arch.families import (
    _FAMILIES,
    _backbone_prefix,
    _layers,
    attentions,
    family,
    ffns,
    layernorms,
)

LINEAR_PARTS = ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out")


def _qualified_names(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    wanted = {id(m) for m in modules}
    return [name for name, m in model.named_modules() if id(m) in wanted]


def linear_names(model: nn.Module, parts: list[str] | tuple[str, ...]) -> list[str]:
    """Qualified names of the linears named in `parts`: attention projections q, k, v, o (self and, in T5's
    decoder, cross attention) and FFN linears ffn_in, ffn_gate (gated FFNs only), ffn_out."""
    unknown = sorted(set(parts) - set(LINEAR_PARTS))
    if unknown:
        raise UserError(f"unknown linear part(s) {', '.join(unknown)}; known: {', '.join(LINEAR_PARTS)}")
    modules = [getattr(att, p) for att in attentions(model) for p in parts if p in ("q", "k", "v", "o")]
    ffn_attr = {"ffn_in": "w_in", "ffn_gate": "w_gate", "ffn_out": "w_out"}
    modules += [getattr(f, ffn_attr[p]) for f in ffns(model) for p in parts if p in ffn_attr]
    return _qualified_names(model, [m for m in modules if m is not None])


def backbone_layernorm_names(model: nn.Module) -> list[str]:
    """Qualified names of the backbone's LayerNorms (embeddings, every layer, final), not the task head's."""
    prefix = _backbone_prefix(model)
    return [name for name, _ in layernorms(model) if name.startswith(prefix)]


def head_names(model: nn.Module) -> list[str]:
    """Attribute names of the task head's modules on the top model ([] for a bare backbone): what must stay
    trainable (peft's modules_to_save) when everything else is frozen."""
    for attrs in _FAMILIES[family(model)].heads:
        if all(isinstance(getattr(model, a, None), nn.Module) for a in attrs):
            return list(attrs)
    return []


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every transformer layer (encoder first, then decoder)."""
    return [name for _, _, name, _ in _layers(model, None)]
