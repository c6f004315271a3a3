"""Distillation losses. Conventions (decided once, see conf/method/distill.yaml):

- KD is T^2 * KL(p_teacher^T || p_student^T) (Hinton et al. 2015): the T^2 factor keeps the gradient scale
  when the temperature changes, so alpha and T can be swept independently.
- Reduction is the mean over rows (examples, or masked token positions for MLM): "batchmean".
- Regression (STS-B, one output): the KD term is MSE to the teacher's prediction and the gold term MSE to
  the label (no temperature; SinKD divides both by T, which only rescales the term by 1/T^2).

The registry (`LOSSES`) maps a method's `loss` name to a function of the student's and teacher's outputs
that returns every term separately ({"loss": total, "ce": ..., "kd": ...}), so the method logs each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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


# ---------------------------------------------------------------------------------------------------------
# Prediction layer: KD mixed with the gold labels


def kd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, *, alpha: float,
             temperature: float) -> dict[str, Tensor]:
    """(1 - alpha) * gold + alpha * kd. Classification: gold = CE, kd = T^2 KL; one output: both are MSE.
    Rows without a gold label (-100, or NaN for regression: a transfer set) count in kd only; gold is the mean
    over the labelled rows (0 when the batch has none)."""
    regression = student_logits.shape[-1] == 1
    if regression:
        kd = F.mse_loss(student_logits.float().squeeze(-1), teacher_logits.float().squeeze(-1))
    else:
        kd = soft_kl(student_logits, teacher_logits, temperature)
    terms = {"kd": kd}
    total = alpha * kd
    if labels is not None and alpha < 1:
        flat = labels.view(-1)
        known = ~torch.isnan(flat) if regression else flat != -100
        if not bool(known.any()):
            gold = student_logits.float().sum() * 0.0  # keeps the graph and the log's shape
        elif regression:
            gold = F.mse_loss(student_logits.float().view(-1)[known], flat.float()[known])
        else:
            gold = F.cross_entropy(student_logits.float().view(-1, student_logits.shape[-1])[known], flat[known])
        terms["ce"] = gold
        total = total + (1 - alpha) * gold
    terms["loss"] = total
    return terms


# ---------------------------------------------------------------------------------------------------------
# TinyBERT's intermediate layers


def attention_mse(student_scores: Tensor, teacher_scores: Tensor, masked_below: float = -100.0) -> Tensor:
    """MSE of pre-softmax attention scores, averaged over B*H*L*L; entries <= masked_below (padded keys
    carry -10000) are set to 0 in both first, as TinyBERT does."""
    s = torch.where(student_scores <= masked_below, torch.zeros_like(student_scores), student_scores)
    t = torch.where(teacher_scores <= masked_below, torch.zeros_like(teacher_scores), teacher_scores)
    return F.mse_loss(s.float(), t.float())


def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, projection: torch.nn.Module | None = None) -> Tensor:
    """MSE between hidden states, the student's mapped to the teacher's width by `projection` when given."""
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden sizes differ ({tuple(student_hidden.shape)} vs {tuple(teacher_hidden.shape)}) "
                         "and no projection was given")
    return F.mse_loss(student_hidden.float(), teacher_hidden.float())


def tinybert_terms(student_scores: list[Tensor], teacher_scores: list[Tensor], student_hidden: list[Tensor],
                   teacher_hidden: list[Tensor], layer_map: list[int],
                   projection: torch.nn.Module | None = None) -> dict[str, Tensor]:
    """TinyBERT's intermediate loss: student layer i matches teacher layer layer_map[i].

    att    = sum_i MSE(scores_S[i], scores_T[map[i]])
    embed  = MSE(W h_S[0], h_T[0])                   (embedding output; rep 0 of TinyBERT's rep_loss)
    hidden = sum_i MSE(W h_S[i+1], h_T[map[i]+1])    (layer outputs)
    """
    att = sum(attention_mse(student_scores[i], teacher_scores[j]) for i, j in enumerate(layer_map))
    embed = hidden_mse(student_hidden[0], teacher_hidden[0], projection)
    hidden = sum(hidden_mse(student_hidden[i + 1], teacher_hidden[j + 1], projection)
                 for i, j in enumerate(layer_map))
    return {"att": att, "embed": embed, "hidden": hidden, "loss": att + embed + hidden}


# ---------------------------------------------------------------------------------------------------------
# SinKD: a Sinkhorn distance between the batch's student and teacher class distributions


def sinkhorn_plan(cost: Tensor, epsilon: float, iterations: int) -> Tensor:
    """The entropic transport plan for `cost` (n, m), computed in the log domain.

    Each iteration normalises rows, then columns, of K = exp(-cost / epsilon), as SinKD does in the linear
    domain; in log space (logsumexp) small epsilon cannot underflow. Marginals are ones (every row and
    column sums to 1 after enough iterations; columns exactly after each one), SinKD's normalisation.
    """
    if epsilon <= 0:
        raise ValueError(f"sinkhorn epsilon must be > 0, got {epsilon}")
    log_k = -cost / epsilon
    log_u = torch.zeros(cost.shape[0], dtype=cost.dtype, device=cost.device)
    log_v = torch.zeros(cost.shape[1], dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):
        log_u = -torch.logsumexp(log_k + log_v[None, :], dim=1)
        log_v = -torch.logsumexp(log_k + log_u[:, None], dim=0)
    return torch.exp(log_u[:, None] + log_k + log_v[None, :])


def sinkhorn_distance(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 2.0,
                      epsilon: float = 0.1, iterations: int = 20, scale: float = 1e-3) -> Tensor:
    """scale * sum_ij P_ij W_ij with W_ij = ||p_S^i - p_T^j||_1 over the batch (SinKD's batch-wise form).

    p = softmax(logits / temperature). Gradients flow through both W and P, as in SinKD.
    For one output (regression) the "distribution" is the prediction itself.
    """
    s, t = student_logits.float(), teacher_logits.float()
    if s.shape[-1] > 1:
        s, t = F.softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    cost = torch.cdist(s.reshape(len(s), -1), t.reshape(len(t), -1), p=1)
    return scale * (sinkhorn_plan(cost, epsilon, iterations) * cost).sum()


def sinkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, *, alpha: float,
                temperature: float, beta: float, sinkhorn: dict) -> dict[str, Tensor]:
    """kd_terms plus beta * the Sinkhorn distance (SinKD: alpha KD + (1 - alpha) CE + beta L_sink)."""
    terms = kd_terms(student_logits, teacher_logits, labels, alpha=alpha, temperature=temperature)
    terms["sinkhorn"] = sinkhorn_distance(student_logits, teacher_logits, **sinkhorn)
    terms["loss"] = terms["loss"] + beta * terms["sinkhorn"]
    return terms


# ---------------------------------------------------------------------------------------------------------
# The registry: method.loss -> fn(student, teacher, labels, params) -> {"loss": total, <term>: value, ...}


@dataclass
class Forward:
    """What one model's forward gives a loss: logits, and (intermediate losses) per-layer scores and hidden."""

    logits: Tensor
    scores: list[Tensor] | None = None
    hidden: list[Tensor] | None = None


@dataclass
class LossParams:
    alpha: float = 0.5
    temperature: float = 2.0
    beta: float = 0.8
    sinkhorn: dict = field(default_factory=dict)  # sinkhorn_distance's keyword arguments
    layer_map: list[int] = field(default_factory=list)  # teacher layer of each student layer (tinybert)
    projection: torch.nn.Module | None = None  # student width -> teacher width (tinybert)
    intermediate: bool = True  # tinybert: the attention/hidden terms (off in a prediction-only stage)
    prediction: bool = True  # tinybert: the KD term on the logits (off in an intermediate-only stage)


def kd(student: Forward, teacher: Forward, labels: Tensor | None, p: LossParams) -> dict[str, Tensor]:
    return kd_terms(student.logits, teacher.logits, labels, alpha=p.alpha, temperature=p.temperature)


def tinybert(student: Forward, teacher: Forward, labels: Tensor | None, p: LossParams) -> dict[str, Tensor]:
    terms: dict[str, Tensor] = {}
    total = 0.0
    if p.intermediate:
        inter = tinybert_terms(student.scores, teacher.scores, student.hidden, teacher.hidden, p.layer_map,
                               p.projection)
        total = inter.pop("loss")
        terms.update(inter)
    if p.prediction:
        pred = kd(student, teacher, labels, p)
        total = total + pred.pop("loss")
        terms.update(pred)
    terms["loss"] = total
    return terms


def sinkd(student: Forward, teacher: Forward, labels: Tensor | None, p: LossParams) -> dict[str, Tensor]:
    return sinkd_terms(student.logits, teacher.logits, labels, alpha=p.alpha, temperature=p.temperature,
                       beta=p.beta, sinkhorn=p.sinkhorn)


LOSSES = {"kd": kd, "tinybert": tinybert, "sinkd": sinkd}
INTERMEDIATE = {"tinybert"}  # losses that need attention scores and hidden states


__all__ = ["INTERMEDIATE", "LOSSES", "Forward", "LossParams", "attention_mse", "hidden_mse", "kd", "kd_terms",
           "sinkd", "sinkd_terms", "sinkhorn_distance", "sinkhorn_plan", "soft_kl", "soft_kl_reference",
           "tinybert", "tinybert_terms"]
