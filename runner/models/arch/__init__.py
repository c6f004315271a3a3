"""Where each model family keeps its FFNs, attention heads, LayerNorms, embeddings and classifier, and what
methods do to them.

Methods (MoEfication, head pruning, LN-tuning, distillation, skill neurons ...) ask this package instead of
hard-coding paths like `model.bert.encoder.layer[i].intermediate.dense`, so adding a family means adding
one small table (families.py), not editing every method. Callers use one flat API, `arch.<name>`:

    blocks.py    the FFN and Attention records (with the per-head gate)
    families.py  each family's module map and the accessors: family, backbone, ffns, attentions,
                 layernorms, embeddings, classifier, hidden_size, ffn_width, num_layers, set_ffn_activation
    pooling.py   MeanPooler, set_pooling
    capture.py   attention_scores: pre-softmax scores and hidden states per layer (TinyBERT);
                 attention_override: one layer run with given attention probabilities (AttAttr)
    layers.py    keep_layers, new_like: smaller students cut from a model
    names.py     qualified module names for parameter-efficient tuning (peft targets, heads, LayerNorms)
    surgery.py   neuron gates, physical removal of heads and FFN neurons, the pruning plan, fold_gates

Every name returned is a real module path of the model given, so `model.get_submodule(name)` works.
"""

from transformers.models.t5.modeling_t5 import T5LayerNorm  # the LayerNorm type of the T5 family

from runner.models.arch.blocks import FFN, GATE, Attention, _apply_gate
from runner.models.arch.capture import AttentionCapture, attention_override, attention_scores
from runner.models.arch.families import (
    _FAMILIES,
    STACKS,
    SUPPORTED_FAMILIES,
    UnsupportedModelError,
    _activation_name,
    _backbone_prefix,
    _check_encoder_only,
    _Family,
    _layers,
    attentions,
    backbone,
    classifier,
    embeddings,
    family,
    ffn_width,
    ffns,
    hidden_size,
    layernorms,
    num_layers,
    set_ffn_activation,
)
from runner.models.arch.layers import _rebuilt, keep_layers, new_like
from runner.models.arch.names import (
    LINEAR_PARTS,
    _qualified_names,
    backbone_layernorm_names,
    head_names,
    layer_names,
    linear_names,
)
from runner.models.arch.pooling import POOLINGS, MeanPooler, set_pooling
from runner.models.arch.surgery import (
    KEPT_HEADS,
    KEPT_NEURONS,
    NEURON_GATE,
    PLAN_FILE,
    EmptySelfAttention,
    _apply_neuron_gate,
    _drop_hooks,
    _encoder_attentions,
    _set_child,
    _slice_linear,
    _take_gate,
    apply_plan,
    fold_gates,
    kept_heads,
    kept_neurons,
    layer_sizes,
    neuron_gate,
    prune_ffn,
    prune_heads,
    pruning_plan,
    set_neuron_gate,
)

__all__ = [
    "FFN", "GATE", "Attention", "AttentionCapture", "attention_override", "attention_scores", "STACKS", "SUPPORTED_FAMILIES",
    "UnsupportedModelError", "attentions", "backbone", "classifier", "embeddings", "family", "ffn_width", "ffns",
    "hidden_size", "layernorms", "num_layers", "set_ffn_activation", "keep_layers", "new_like", "LINEAR_PARTS",
    "backbone_layernorm_names", "head_names", "layer_names", "linear_names", "POOLINGS", "MeanPooler",
    "set_pooling", "KEPT_HEADS", "KEPT_NEURONS", "NEURON_GATE", "PLAN_FILE", "EmptySelfAttention", "apply_plan",
    "fold_gates", "kept_heads", "kept_neurons", "layer_sizes", "neuron_gate", "prune_ffn", "prune_heads",
    "pruning_plan", "set_neuron_gate", "T5LayerNorm",
    # private helpers that callers and tests reach as arch._<name>
    "_FAMILIES", "_Family", "_activation_name", "_apply_gate", "_apply_neuron_gate", "_backbone_prefix",
    "_check_encoder_only", "_drop_hooks", "_encoder_attentions", "_layers", "_qualified_names", "_rebuilt",
    "_set_child", "_slice_linear", "_take_gate",
]
