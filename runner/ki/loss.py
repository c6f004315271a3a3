"""The KI loss on an MLM batch:

    L_t = (1 - alpha_t) * MLM + alpha_t * KD,   KD = T^2 * KL(softmax(z_T / T) || softmax(z_S / T))

both terms averaged over the masked positions only (labels != -100), as the anchor's
`--restrict_ce_to_mask` does. The vocabulary projection is applied to the masked positions only
(runner/mlm.py). With alpha_t = 0 the teacher is not run and L is plain MLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runner.distill.losses import soft_kl
from runner.mlm import IGNORE, cross_entropy, masked_logits


@dataclass
class KITerms:
    loss: Tensor  # the trained objective
    mlm: Tensor   # cross-entropy on the masked positions
    kd: Tensor    # T^2 * KL(teacher || student) on the masked positions; 0 when alpha = 0
    alpha: float


def ki_terms(model: nn.Module, inputs: dict[str, Tensor], alpha: float, temperature: float = 2.0,
             teacher: nn.Module | None = None) -> KITerms:
    """The loss and its terms for one batch with `labels` (-100 = not masked)."""
    labels = inputs["labels"]
    mask = labels != IGNORE
    logits = masked_logits(model, inputs, mask)
    mlm = cross_entropy(logits, labels[mask])
    if alpha == 0:
        return KITerms(loss=mlm, mlm=mlm, kd=torch.zeros((), device=mlm.device), alpha=0.0)
    if teacher is None:
        raise ValueError(f"alpha_t = {alpha} needs a teacher")
    with torch.no_grad():
        teacher_logits = masked_logits(teacher, inputs, mask)
    kd = soft_kl(logits, teacher_logits, temperature)
    return KITerms(loss=(1 - alpha) * mlm + alpha * kd, mlm=mlm, kd=kd, alpha=float(alpha))
