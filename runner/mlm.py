"""Masked-LM logits and loss with the vocabulary projection on the masked positions only.

With 15% masking that is ~7x less work in the 30k-way output layer, which dominates a small model's step
and its evaluation on a CPU (the anchor KI implementation's `masked_tokens`). The loss equals the HF
models' own MLM loss (cross-entropy averaged over the positions whose label is not -100).
Used by every MLM training and evaluation: fit's default for MLM tasks, the KI loss, evaluate().
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from runner.models import arch

IGNORE = -100  # label of positions the MLM loss skips (the HF collators' convention)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MLM_FAMILIES = ("bert", "roberta", "electra")  # arch families with a masked-LM head (T5 has none)


def masked_logits(model: nn.Module, inputs: dict[str, Tensor], mask: Tensor) -> Tensor:
    """(n_masked, vocab) MLM logits at the positions where `mask` is True: the backbone on the whole
    batch, the MLM head (arch.classifier) on the selected hidden states only.

    Anything but a plain HF model of a known family (DistributedDataParallel without `config`, a peft
    wrapper whose base_model is the tuner) is called whole, through its own forward (a DDP wrapper
    synchronises its gradients there); the head then runs on every position."""
    features = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
    if not isinstance(model, PreTrainedModel) or model.config.model_type not in MLM_FAMILIES:
        return model(**features).logits[mask]
    hidden = arch.backbone(model)(**features)[0]
    return arch.classifier(model)(hidden[mask])


def masked_lm_loss(model: nn.Module, inputs: dict[str, Tensor], reduction: str = "mean") -> Tensor:
    """Cross-entropy over the masked positions of a batch with `labels` (-100 = not masked): their mean,
    or with reduction="sum" their sum (token-weighted evaluation)."""
    mask = inputs["labels"] != IGNORE
    return cross_entropy(masked_logits(model, inputs, mask), inputs["labels"][mask], reduction)


def cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """fp32 cross-entropy of the masked positions' logits; 0 (still in the graph) when nothing is masked."""
    return F.cross_entropy(logits.float(), targets, reduction=reduction) if len(targets) else logits.sum() * 0.0


def loss_and_count(model: nn.Module, inputs: dict[str, Tensor]) -> tuple[float, int]:
    """(summed cross-entropy, number of masked tokens) of one batch, for token-weighted evaluation."""
    with torch.no_grad():
        total = masked_lm_loss(model, inputs, reduction="sum")
    return total.item(), int((inputs["labels"] != IGNORE).sum())
