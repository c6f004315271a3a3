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
