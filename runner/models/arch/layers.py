"""Smaller students cut from a model: some of its layers kept (DistilBERT, PKD) or a fresh model of another
shape of the same family and head."""

from __future__ import annotations

from torch import nn

from runner.errors import UserError
from runner.models.arch.families import _backbone_prefix, _check_encoder_only, backbone, num_layers
from runner.models.arch.pooling import MeanPooler, set_pooling
from runner.models.arch.surgery import apply_plan, pruning_plan


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
    plan = pruning_plan(model)  # a structurally pruned source: its kept layers keep their own shapes
    apply_plan(new, {part: {str(j): plan[part][str(i)] for j, i in enumerate(indices) if str(i) in plan[part]}
                     for part in ("heads", "ffn")})
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
