"""The records runner.models.arch hands out: one FFN block and one attention block of a model, with the
per-head gate every head-importance score and head pruning goes through.

FFN and Attention hold references to the model's own modules (found by runner.models.arch.families), so
what a method does through them (swap an activation, replace an FFN, gate heads) happens in the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.activations import ACT2CLS, ACT2FN

GATE = "head_gate"  # buffer/parameter name of the per-head gate on an attention module


@dataclass(eq=False)
class FFN:
    """One feed-forward block: act(w_in x) (gated: act(w_gate x) * w_in x), then w_out.

    `replace` puts the new module where `input_module` was, so activation hooks keep working after it.
    `inner_dropout` is the dropout the original applies between activation and w_out (T5 only; BERT-family
    FFNs have none): a replacing module that wants the original training-time behaviour applies it itself.
    """

    name: str
    stack: str
    index: int
    w_in: nn.Linear
    w_gate: nn.Linear | None
    w_out: nn.Linear
    gated: bool
    activation: str
    input_module: nn.Module
    inner_dropout: nn.Module | None = None
    _act_owner: nn.Module = field(default=None, repr=False)
    _act_attr: str = field(default="", repr=False)
    _replace: Callable[[nn.Module], None] = field(default=None, repr=False)

    def act_fn(self) -> Callable[[Tensor], Tensor]:
        """The live activation module (so a later set_activation is seen)."""
        return getattr(self._act_owner, self._act_attr)

    def set_activation(self, name: str) -> None:
        """Swap this layer's activation in place, e.g. "relu" for ReLU-fication before MoEfication."""
        if name not in ACT2CLS:
            raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACT2CLS)}")
        setattr(self._act_owner, self._act_attr, ACT2FN[name])
        self.activation = name

    def hidden(self, x: Tensor) -> Tensor:
        """The inner activations, shape (..., d_ff): what MoEfication clusters and skill neurons score."""
        h = self.act_fn()(self.w_gate(x) if self.gated else self.w_in(x))
        return h * self.w_in(x) if self.gated else h

    def forward(self, x: Tensor) -> Tensor:
        """The FFN output before dropout/residual/LayerNorm, computed from the weights (exact reference)."""
        h = self.hidden(x)
        if h.dtype != self.w_out.weight.dtype and self.w_out.weight.dtype != torch.int8:
            h = h.to(self.w_out.weight.dtype)  # as T5 does for an fp32 `wo` in a half-precision model
        return self.w_out(h)

    def replace(self, module: nn.Module) -> None:
        """Make the layer compute module(x) instead of w_out(act(w_in x)).

        Dropout, residual and LayerNorm around the FFN stay as they were (BERT: BertOutput's dropout +
        residual + LayerNorm; T5: T5LayerFF's layer_norm before and dropout + residual after).
        """
        self._replace(module)
        self.input_module = module


@dataclass(eq=False)
class Attention:
    """One attention block; `module` holds q, k, v, o and, once asked for, the per-head gate."""

    name: str
    stack: str
    index: int
    kind: str
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    head_dim: int
    module: nn.Module = field(default=None, repr=False)

    def head_gate(self) -> Tensor:
        """The (num_heads,) gate multiplied into each head's context before `o`; installed once, ones.

        transformers 5 dropped `head_mask`, so pruning and head-importance scores go through this gate.
        """
        if not hasattr(self.module, GATE):
            self.module.register_buffer(GATE, torch.ones(self.num_heads, dtype=self.o.weight.dtype,
                                                         device=self.o.weight.device))
        if not any(isinstance(h, functools.partial) and h.func is _apply_gate
                   for h in self.o._forward_pre_hooks.values()):
            # a partial (not a closure) so deepcopy/pickle of the model rebinds it to the copied module
            self.o.register_forward_pre_hook(functools.partial(_apply_gate, self.module, self.num_heads))
        return getattr(self.module, GATE)

    def set_head_gate(self, gate: Tensor) -> None:
        """Use `gate` (a tensor, or an nn.Parameter to learn it) as this layer's gate; saved in state_dict."""
        if tuple(gate.shape) != (self.num_heads,):
            raise ValueError(f"{self.name}: head gate must have shape ({self.num_heads},), got {tuple(gate.shape)}")
        self.head_gate()
        delattr(self.module, GATE)
        if isinstance(gate, nn.Parameter):
            self.module.register_parameter(GATE, gate)
        else:
            self.module.register_buffer(GATE, gate)


def _apply_gate(owner: nn.Module, num_heads: int, o: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on `o`: scale head h's slice of the concatenated context by gate[h]."""
    x, *rest = args
    gate = getattr(owner, GATE).to(x.dtype)
    heads = x.unflatten(-1, (num_heads, -1)) * gate[:, None]
    return (heads.flatten(-2), *rest)
