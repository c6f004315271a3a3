"""Distillation losses. Conventions (decided once, see conf/method/distill.yaml):

- KD is T^2 * KL(p_teacher^T || p_student^T) (Hinton et al. 2015): the T^2 factor keeps the gradient scale
  when the temperature changes, so alpha and T can be swept independently.
- Reduction is the mean over rows (examples, or masked token positions for MLM): "batchmean".
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
            mask: Tensor | None = None) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes and averaged over rows.

    Logits are (..., C); `mask` (...,) keeps only some rows (e.g. the masked positions of an MLM batch).
    Returns 0 (with a graph to the student) when no row is kept.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = student_logits.float(), teacher_logits.float()
    if mask is not None:
        s, t = s[mask], t[mask]
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * temperature**2


def soft_kl_reference(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """The same value through torch's kl_div (for tests): batchmean KL times T^2."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).reshape(-1, student_logits.shape[-1])
    t = F.softmax(teacher_logits.float() / temperature, dim=-1).reshape(-1, teacher_logits.shape[-1])
    return F.kl_div(s, t, reduction="batchmean") * temperature**2


__all__ = ["soft_kl", "soft_kl_reference"]
