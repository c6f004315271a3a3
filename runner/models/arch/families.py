"""Where each model family keeps its FFNs, attention heads, LayerNorms, embeddings and classifier.

One small table per family (below) maps a transformer layer to its parts; the accessors read models through
it, so adding a family means adding a table, not editing every method. Models may be a task model
(`*ForSequenceClassification`, `*ForMaskedLM`, `T5ForConditionalGeneration`) or a bare backbone
(`BertModel`, `T5Model`, `T5EncoderModel`); every name returned is a real module path of the model given,
so `model.get_submodule(name)` works.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers.activations import ACT2CLS
from transformers.models.t5.modeling_t5 import T5LayerNorm

from runner.errors import UserError
from runner.models.arch.blocks import FFN, Attention

SUPPORTED_FAMILIES = ("bert", "roberta", "electra", "t5")
STACKS = ("encoder", "decoder")


class UnsupportedModelError(UserError, ValueError):
    """A model whose family this module does not know; a UserError so the CLI prints it as one line."""


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


def _check_encoder_only(model: nn.Module, what: str) -> None:
    """Refuse T5 in one line for what reads BERT-family attention only (attention_scores, student cuts)."""
    if family(model) == "t5":
        raise UnsupportedModelError(f"{what} supports bert, roberta and electra encoders; T5 attention adds a "
                                    "relative position bias this does not capture (use a BERT-family model)")
