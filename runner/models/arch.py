"""Where each model family keeps its FFNs, attention heads, LayerNorms, embeddings and classifier.

Methods (MoEfication, head pruning, LN-tuning, distillation, skill neurons ...) ask this module instead of
hard-coding paths like `model.bert.encoder.layer[i].intermediate.dense`, so adding a family means adding
one small table below, not editing every method. Models may be a task model
(`*ForSequenceClassification`, `*ForMaskedLM`, `T5ForConditionalGeneration`) or a bare backbone
(`BertModel`, `T5Model`, `T5EncoderModel`); every name returned is a real module path of the model given,
so `model.get_submodule(name)` works.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.activations import ACT2CLS, ACT2FN
from transformers.models.t5.modeling_t5 import T5LayerNorm

from runner.errors import UserError

SUPPORTED_FAMILIES = ("bert", "roberta", "electra", "t5")
STACKS = ("encoder", "decoder")
GATE = "head_gate"  # buffer/parameter name of the per-head gate on an attention module


class UnsupportedModelError(UserError, ValueError):
    """A model whose family this module does not know; a UserError so the CLI prints it as one line."""


# ---------------------------------------------------------------------------------------------------------
# Public records


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


# ---------------------------------------------------------------------------------------------------------
# Per-family knowledge. A layer table maps one transformer layer to its parts; paths are relative to it.


def _bert_ffn(layer: nn.Module) -> dict:
    if isinstance(layer.output.dense, nn.Identity):
        return {}
    return dict(w_in=layer.intermediate.dense, w_gate=None, w_out=layer.output.dense,
                input_module=layer.intermediate, inner_dropout=None,
                act=(layer.intermediate, "intermediate_act_fn"))


def _bert_replace(layer: nn.Module, module: nn.Module) -> None:
    layer.intermediate = module          # BertLayer: output(intermediate(x), x)
    layer.output.dense = nn.Identity()   # BertOutput: LayerNorm(dropout(dense(h)) + x)


def _bert_attentions(layer: nn.Module) -> list[tuple]:
    att = layer.attention
    return [("self", "attention", att, att.self.query, att.self.key, att.self.value, att.output.dense,
             att.self.num_attention_heads, att.self.attention_head_size)]


def _t5_ffn(block: nn.Module) -> dict:
    dense = block.layer[-1].DenseReluDense
    if not hasattr(dense, "wo"):
        return {}
    gated = hasattr(dense, "wi_0")  # T5DenseGatedActDense: act(wi_0 x) * wi_1 x
    return dict(w_in=dense.wi_1 if gated else dense.wi, w_gate=dense.wi_0 if gated else None, w_out=dense.wo,
                input_module=dense, inner_dropout=dense.dropout, act=(dense, "act"))


def _t5_replace(block: nn.Module, module: nn.Module) -> None:
    # T5LayerFF: x + dropout(DenseReluDense(layer_norm(x))); the outer dropout stays untouched.
    block.layer[-1].DenseReluDense = module


def _t5_attentions(block: nn.Module) -> list[tuple]:
    found = []
    for kind, i, attr in (("self", 0, "SelfAttention"), ("cross", 1, "EncDecAttention")):
        att = getattr(block.layer[i], attr, None) if i < len(block.layer) else None
        if att is not None:
            found.append((kind, f"layer.{i}.{attr}", att, att.q, att.k, att.v, att.o,
                          att.n_heads, att.key_value_proj_dim))
    return found


@dataclass(frozen=True)
class _Family:
    stacks: tuple[tuple[str, str], ...]        # (stack, path of its layer list inside the backbone)
    ffn: Callable[[nn.Module], dict]
    replace: Callable[[nn.Module, nn.Module], None]
    attentions: Callable[[nn.Module], list[tuple]]
    act_key: str                               # config key naming the FFN activation
    width_key: str                             # config key of d_ff
    layernorms: tuple[type, ...]
    heads: tuple[tuple[str, ...], ...]         # task-head attribute names on the top model, first match wins


_BERT_LIKE = _Family(
    stacks=(("encoder", "encoder.layer"),), ffn=_bert_ffn, replace=_bert_replace, attentions=_bert_attentions,
    act_key="hidden_act", width_key="intermediate_size", layernorms=(nn.LayerNorm,),
    heads=(("classifier",), ("cls",), ("lm_head",), ("generator_predictions", "generator_lm_head"),
           ("discriminator_predictions",), ("qa_outputs",)),
)
_FAMILIES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "t5": _Family(
        stacks=(("encoder", "encoder.block"), ("decoder", "decoder.block")), ffn=_t5_ffn, replace=_t5_replace,
        attentions=_t5_attentions, act_key="dense_act_fn", width_key="d_ff", layernorms=(T5LayerNorm,),
        heads=(("classification_head",), ("classifier",), ("lm_head",), ("qa_outputs",)),
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Public API


def family(model: nn.Module) -> str:
    """The family name from model.config.model_type (MiniLM checkpoints are "bert")."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(f"model type '{model_type}' is not supported; "
                                    f"supported families: {', '.join(SUPPORTED_FAMILIES)}")
    return model_type


def backbone(model: nn.Module) -> nn.Module:
    """The transformer itself (BertModel, T5Model ...), whatever head is on top."""
    family(model)
    return model.base_model


def _backbone_prefix(model: nn.Module) -> str:
    body = backbone(model)
    name = next(name for name, module in model.named_modules() if module is body)
    return f"{name}." if name else ""


def _layers(model: nn.Module, stack: str | None):
    """(stack, index, qualified name, layer) for every layer, encoder first."""
    if stack is not None and stack not in STACKS:
        raise ValueError(f"stack must be one of {STACKS} or None, got '{stack}'")
    fam, body, prefix = _FAMILIES[family(model)], backbone(model), _backbone_prefix(model)
    for name, path in fam.stacks:
        if stack not in (None, name):
            continue
        try:
            layers = body.get_submodule(path)
        except AttributeError:  # T5EncoderModel has no decoder
            continue
        for i, layer in enumerate(layers):
            yield name, i, f"{prefix}{path}.{i}", layer


def _activation_name(act: Callable, config_name: str | None) -> str:
    """Canonical ACT2FN name of a live activation module; the config's name when it matches."""
    def cls_of(entry):
        return entry[0] if isinstance(entry, tuple) else entry

    if config_name in ACT2CLS and type(act) is cls_of(ACT2CLS[config_name]):
        return config_name
    names = [n for n, entry in ACT2CLS.items() if type(act) is cls_of(entry)]
    plain = [n for n in names if not isinstance(ACT2CLS[n], tuple)]
    return (plain or names or [getattr(act, "__name__", type(act).__name__)])[0]


def ffns(model: nn.Module, stack: str | None = None) -> list[FFN]:
    """Every FFN block, encoder first then decoder; `stack` keeps only "encoder" or "decoder"."""
    fam = _FAMILIES[family(model)]
    config_act = getattr(model.config, fam.act_key, None)
    found = []
    for stack_name, index, name, layer in _layers(model, stack):
        parts = fam.ffn(layer)
        if not parts:
            raise ValueError(f"the FFN of {name} was already replaced; arch reads only original FFN blocks "
                             "(read ffns() before calling FFN.replace)")
        owner, attr = parts.pop("act")
        found.append(FFN(name=name, stack=stack_name, index=index, gated=parts["w_gate"] is not None,
                         activation=_activation_name(getattr(owner, attr), config_act),
                         _act_owner=owner, _act_attr=attr,
                         _replace=functools.partial(fam.replace, layer), **parts))
    return found


def attentions(model: nn.Module, kind: str | None = None, stack: str | None = None) -> list[Attention]:
    """Attention blocks, encoder first; per layer self then (T5 decoder) cross. `kind` keeps "self"/"cross"."""
    if kind not in (None, "self", "cross"):
        raise ValueError(f"kind must be 'self', 'cross' or None, got '{kind}'")
    fam = _FAMILIES[family(model)]
    found = []
    for stack_name, index, name, layer in _layers(model, stack):
        for att_kind, path, module, q, k, v, o, heads, head_dim in fam.attentions(layer):
            if kind in (None, att_kind):
                found.append(Attention(name=f"{name}.{path}", stack=stack_name, index=index, kind=att_kind,
                                       q=q, k=k, v=v, o=o, num_heads=heads, head_dim=head_dim, module=module))
    return found


def layernorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every LayerNorm of the model (backbone and head), with its qualified name, for LN-tuning."""
    types = _FAMILIES[family(model)].layernorms
    return [(name, module) for name, module in model.named_modules() if isinstance(module, types)]


def embeddings(model: nn.Module) -> nn.Embedding:
    """The word (token) embedding table; ELECTRA's may be narrower than hidden_size (embedding_size)."""
    return backbone(model).get_input_embeddings()


def classifier(model: nn.Module) -> nn.Module | None:
    """The task head on top of the backbone, or None for a bare backbone.

    ELECTRA's MLM head is two sibling modules; they come back as one nn.Sequential (not registered in
    the model) that computes the logits. MLM decoders usually share their weight with embeddings().
    """
    for attrs in _FAMILIES[family(model)].heads:
        parts = [getattr(model, a, None) for a in attrs]
        if all(isinstance(p, nn.Module) for p in parts):
            return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    return None


def hidden_size(model: nn.Module) -> int:
    family(model)
    return model.config.hidden_size


def ffn_width(model: nn.Module) -> int:
    """d_ff as configured (intermediate_size / d_ff)."""
    return getattr(model.config, _FAMILIES[family(model)].width_key)


def set_ffn_activation(model: nn.Module, name: str) -> None:
    """Every FFN's activation becomes `name` (e.g. "relu" for ReLU-fication), in the modules and in the
    config, so that save_pretrained / from_pretrained keep it."""
    for ffn in ffns(model):
        ffn.set_activation(name)
    config = model.config
    setattr(config, _FAMILIES[family(model)].act_key, name)
    if family(model) == "t5":  # T5Config re-derives dense_act_fn from feed_forward_proj when it is loaded
        config.feed_forward_proj = f"gated-{name}" if config.is_gated_act else name


def num_layers(model: nn.Module) -> dict[str, int]:
    """Layer count per stack present in this model, e.g. {"encoder": 12} or {"encoder": 6, "decoder": 6}."""
    counts: dict[str, int] = {}
    for stack, *_ in _layers(model, None):
        counts[stack] = counts.get(stack, 0) + 1
    return counts


class MeanPooler(nn.Module):
    """Masked mean over tokens in place of BERT's [CLS] pooler: sentence-transformers checkpoints (such
    as all-MiniLM-L6-v2) were trained for mean pooling, so their [CLS] vector carries little. The mask
    is read from the backbone's call by a pre-hook, since BertPooler only receives hidden states."""

    def __init__(self, replaced: nn.Module | None = None):
        super().__init__()
        self._mask: Tensor | None = None
        # The replaced pooler's weights stay, unused, so that a saved checkpoint keeps the family's keys
        # and reloads without "newly initialized" warnings. Buffers, not parameters: nothing (a method's
        # freeze patterns, the optimizer, DDP, the trainable count) can take them for trainable weights.
        if replaced is not None:
            self.dense = nn.Module()
            for name, tensor in replaced.dense.named_parameters():
                self.dense.register_buffer(name, tensor.detach())

    def capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

    def forward(self, hidden_states: Tensor) -> Tensor:
        mask = self._mask
        if mask is not None and mask.shape[1] > hidden_states.shape[1]:
            mask = mask[:, -hidden_states.shape[1]:]  # prefix tuning prepends its virtual keys to the mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        mask = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


POOLINGS = ("cls", "mean")


def set_pooling(model: nn.Module, mode: str) -> None:
    """Sentence representation for the classifier: "cls" (the family's own) or "mean" (masked mean of
    the last hidden states; BERT-family models with a pooler, e.g. BertForSequenceClassification)."""
    if mode not in POOLINGS:
        raise UserError(f"pooling '{mode}' is not one of {', '.join(POOLINGS)}")
    if mode == "cls":
        return
    body = backbone(model)
    if family(model) == "t5" or getattr(body, "pooler", None) is None:
        raise UserError(f"pooling=mean needs a BERT-style pooler; {type(model).__name__} has none "
                        "(use model.pooling=cls)")
    if isinstance(body.pooler, MeanPooler):
        return
    body.pooler = MeanPooler(body.pooler)
    body.register_forward_pre_hook(body.pooler.capture_mask, with_kwargs=True)


# ---------------------------------------------------------------------------------------------------------
# Distillation: attention scores and hidden states per layer, and smaller students cut from a model.


def _check_encoder_only(model: nn.Module, what: str) -> None:
    if family(model) == "t5":
        raise UnsupportedModelError(f"{what} supports bert, roberta and electra encoders; T5 attention adds a "
                                    "relative position bias this does not capture (use a BERT-family model)")


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


def _rebuilt(model: nn.Module, config) -> nn.Module:
    """A fresh model of `model`'s class for `config`, with the same pooling (MeanPooler or the family's)."""
    new = type(model)(config)
    if isinstance(getattr(backbone(model), "pooler", None), MeanPooler):
        set_pooling(new, "mean")
    return new.to(next(model.parameters()).device)


def keep_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """A new, smaller model holding a copy of `model`'s embeddings, encoder layers `indices` (in that order)
    and task head: the student initialisation of DistilBERT (every other layer) and PKD (the first k)."""
    _check_encoder_only(model, "keep_layers")
    total = num_layers(model)["encoder"]
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < total]
    if not indices or bad or len(set(indices)) != len(indices):
        raise UserError(f"layers {list(indices)}: give distinct layer indices in [0, {total - 1}]")
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_hidden_layers = len(indices)
    new = _rebuilt(model, config)
    prefix = f"{_backbone_prefix(model)}encoder.layer."
    source = model.state_dict()
    state = {}
    for key in new.state_dict():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            state[key] = source[f"{prefix}{indices[int(j)]}.{rest}"]
        else:
            state[key] = source[key]
    new.load_state_dict(state, strict=True)
    return new


def new_like(model: nn.Module, **config_changes) -> nn.Module:
    """A randomly initialised model of `model`'s family and head, with some config keys changed (e.g.
    num_hidden_layers, hidden_size, intermediate_size, num_attention_heads): a student of another shape."""
    _check_encoder_only(model, "new_like")
    config = model.config.__class__.from_dict(model.config.to_dict())
    for key, value in config_changes.items():
        if not hasattr(config, key):
            raise UserError(f"student config: {type(config).__name__} has no key '{key}'")
        setattr(config, key, value)
    if getattr(config, "embedding_size", None) is not None and "hidden_size" in config_changes \
            and "embedding_size" not in config_changes:
        config.embedding_size = config.hidden_size  # ELECTRA: keep embeddings as wide as the new hidden size
    return _rebuilt(model, config)


# ---------------------------------------------------------------------------------------------------------
# Module and parameter names for parameter-efficient tuning (runner/peft). HF peft picks the modules it
# adapts (target_modules) and the ones it trains whole (modules_to_save) by qualified name; these give the
# names per family so that no method spells out a module path.

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


# ---------------------------------------------------------------------------------------------------------
# Structured pruning: FFN neuron gates and physical removal of heads and FFN neurons (method=prune).
#
# Ids are always those of the dense model: a pruned module remembers which original heads/neurons it keeps
# (KEPT_HEADS on the attention block, KEPT_NEURONS on w_out), so iterative pruning and the saved plan speak
# the same language. Gates (head_gate, neuron_gate) are the exact reference: pruning folds the kept gate
# values into `o` / `w_out` columns and drops the gate, so a pruned model equals the gated one.

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
