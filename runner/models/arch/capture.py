"""Attention scores and hidden states per encoder layer during a forward (what TinyBERT distils).

transformers 5 runs attention through sdpa and returns no scores, so hooks keep the q and k projections'
outputs and the scores are recomputed from them: exact, whatever the attention kernel.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from runner.models.arch.blocks import Attention
from runner.models.arch.families import _check_encoder_only, _layers, attentions, backbone


class AttentionCapture:
    """What one forward of the model left behind (filled by `attention_scores`).

    `scores[i]`: layer i's pre-softmax scores (B, H, L, L) = Q K^T / sqrt(d_head), plus -10000 at padded keys,
    the additive mask of BERT's original code that TinyBERT distils (its loss then zeroes entries <= -100).
    `hidden[0]` is the input of layer 0 (embeddings output, after ELECTRA's projection); `hidden[i + 1]` is
    layer i's output, the same tensors as `output_hidden_states=True`.
    """

    MASKED = -10000.0

    def __init__(self, layers: list[Attention]):
        self._layers = layers
        self._q: dict[int, Tensor] = {}
        self._k: dict[int, Tensor] = {}
        self.hidden: list[Tensor] = []
        self.mask: Tensor | None = None

    def clear(self) -> None:
        self._q.clear()  # in place: the hooks hold these very dicts
        self._k.clear()
        self.hidden.clear()
        self.mask = None

    @property
    def scores(self) -> list[Tensor]:
        out = []
        for i, att in enumerate(self._layers):
            if i not in self._q or i not in self._k:
                raise RuntimeError("attention_scores: no forward pass recorded for layer "
                                   f"{i}; call the model inside the `with` block")
            q = self._q[i].unflatten(-1, (att.num_heads, att.head_dim)).transpose(1, 2)
            k = self._k[i].unflatten(-1, (att.num_heads, att.head_dim)).transpose(1, 2)
            s = torch.matmul(q, k.transpose(-1, -2)) * att.head_dim**-0.5
            if self.mask is not None:
                s = s + (1.0 - self.mask[:, None, None, :].to(s.dtype)) * self.MASKED
            out.append(s)
        return out


class attention_scores:  # noqa: N801 - used as a context manager: `with arch.attention_scores(m) as cap:`
    """Record every encoder layer's pre-softmax attention scores and hidden states during forwards.

        with arch.attention_scores(model) as cap:
            out = model(**inputs)
        cap.scores, cap.hidden   # lists over layers; cleared at the start of each forward

    transformers 5 runs attention through sdpa and returns no scores, so forward hooks on the q and k
    projections keep their outputs and the scores are recomputed from them: exact, whatever the kernel.
    """

    def __init__(self, model: nn.Module):
        _check_encoder_only(model, "attention_scores")
        self.model = model
        self.layers = attentions(model, kind="self", stack="encoder")
        self.capture = AttentionCapture(self.layers)
        self._handles: list = []

    def __enter__(self) -> AttentionCapture:
        cap = self.capture
        body = backbone(self.model)

        def start(module, args, kwargs):
            cap.clear()
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            cap.mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

        def keep(store: dict, i: int, module, args, output):
            store[i] = output

        def first_input(module, args, kwargs):
            if not cap.hidden:
                cap.hidden.append(args[0] if args else kwargs["hidden_states"])

        def layer_output(module, args, output):
            cap.hidden.append(output[0] if isinstance(output, tuple) else output)

        self._handles.append(body.register_forward_pre_hook(start, with_kwargs=True))
        layers = [layer for _, _, _, layer in _layers(self.model, "encoder")]
        self._handles.append(layers[0].register_forward_pre_hook(first_input, with_kwargs=True))
        for i, (att, layer) in enumerate(zip(self.layers, layers, strict=True)):
            self._handles.append(att.q.register_forward_hook(functools.partial(keep, cap._q, i)))
            self._handles.append(att.k.register_forward_hook(functools.partial(keep, cap._k, i)))
            self._handles.append(layer.register_forward_hook(layer_output))
        return cap

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class attention_override:  # noqa: N801 - a context manager: `with arch.attention_override(m, layer) as sub:`
    """Run encoder layer `layer`'s self-attention with given probabilities instead of softmax(QK^T):

        with arch.attention_override(model, 2) as sub:
            sub.probs = alpha * A          # (B, H, L, L), e.g. a leaf with requires_grad
            out = model(**inputs)          # layer 2's context = sub.probs @ V; the other layers as they are

    A BERT-family layer's context (the input of its output dense `o`) is A @ V per head, concatenated, so a
    forward hook keeps V (the value projection's output) and a pre-hook on `o` replaces its input by
    probs @ V. Installed before the head-gate hook, so gates still apply. Exact in eval mode (attention-prob
    dropout is off); what AttAttr's integrated gradients over the attention map need (runner.prune.attribution).
    """

    def __init__(self, model: nn.Module, layer: int):
        _check_encoder_only(model, "attention_override")
        self.att = attentions(model, kind="self", stack="encoder")[layer]
        self.probs: Tensor | None = None
        self._v: Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> attention_override:
        att = self.att

        def keep_v(module, args, output):
            self._v = output

        def replace_context(module, args):
            if self.probs is None:
                return None  # nothing set: the layer's own context
            x, *rest = args
            v = self._v.unflatten(-1, (att.num_heads, att.head_dim)).transpose(1, 2)  # (B, H, L, d)
            if self.probs.shape != (v.shape[0], att.num_heads, v.shape[2], v.shape[2]):
                raise ValueError(f"attention_override: probs must be (batch, {att.num_heads}, {v.shape[2]}, "
                                 f"{v.shape[2]}), got {tuple(self.probs.shape)}")
            context = torch.matmul(self.probs.to(v.dtype), v).transpose(1, 2).flatten(-2)
            return (context.to(x.dtype), *rest)

        self._handles.append(att.v.register_forward_hook(keep_v))
        self._handles.append(att.o.register_forward_pre_hook(replace_context, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._v = None
