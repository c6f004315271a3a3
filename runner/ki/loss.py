"""The KI loss on an MLM batch:

    L_t = (1 - alpha_t) * MLM + alpha_t * KD,   KD = T^2 * KL(softmax(z_T / T) || softmax(z_S / T))

both terms averaged over the masked positions only (labels != -100), as the anchor's
`--restrict_ce_to_mask` does. The vocabulary projection is applied to the masked positions only (the
anchor's `masked_tokens`): with 15% masking that is ~7x less work in the 30k-way output layer, which
dominates a small model's step on a CPU. With alpha_t = 0 the teacher is not run and L is plain MLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runner.distill.losses import soft_kl
from runner.models import arch

IGNORE = -100  # label of positions the MLM loss skips (the HF collators' convention)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class KITerms:
    loss: Tensor  # the trained objective
    mlm: Tensor   # cross-entropy on the masked positions
    kd: Tensor    # T^2 * KL(teacher || student) on the masked positions; 0 when alpha = 0
    alpha: float


def masked_logits(model: nn.Module, inputs: dict[str, Tensor], mask: Tensor) -> Tensor:
    """(n_masked, vocab) MLM logits at the positions where `mask` is True: the backbone on the whole
    batch, the MLM head (arch.classifier) on the selected hidden states only.

    A wrapped model (DistributedDataParallel: no `config`) is called whole, through the wrapper, which
    synchronises its gradients; the head then runs on every position."""
    features = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
    if not hasattr(model, "config"):
        return model(**features).logits[mask]
    hidden = arch.backbone(model)(**features)[0]
    return arch.classifier(model)(hidden[mask])


def ki_terms(model: nn.Module, inputs: dict[str, Tensor], alpha: float, temperature: float = 2.0,
             teacher: nn.Module | None = None) -> KITerms:
    """The loss and its terms for one batch with `labels` (-100 = not masked)."""
    labels = inputs["labels"]
    mask = labels != IGNORE
    logits = masked_logits(model, inputs, mask)
    mlm = F.cross_entropy(logits.float(), labels[mask]) if mask.any() else logits.sum() * 0.0
    if alpha == 0:
        return KITerms(loss=mlm, mlm=mlm, kd=torch.zeros((), device=mlm.device), alpha=0.0)
    if teacher is None:
        raise ValueError(f"alpha_t = {alpha} needs a teacher")
    with torch.no_grad():
        teacher_logits = masked_logits(teacher, inputs, mask)
    kd = soft_kl(logits, teacher_logits, temperature)
    return KITerms(loss=(1 - alpha) * mlm + alpha * kd, mlm=mlm, kd=kd, alpha=float(alpha))
