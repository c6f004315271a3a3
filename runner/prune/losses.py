"""The losses pruning trains with: the task loss with KD from the dense model, and CAP's contrastive terms on top.

    (1 - alpha_kd) * task + alpha_kd * KD                  KD = T^2 KL(teacher || student); one output: MSE
    + sum over banks of (w_unsup * L_unsup + w_sup * L_sup)   runner.prune.contrastive (CAP), when banks are given

The teacher's logits come from the cached stage when every row is in it (runner.teacher_logits). The contrastive
terms draw their extra candidates from a generator seeded by (seed, step), so a resumed run draws the same ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.distill.losses import soft_kl
from runner.prune import contrastive
from runner.teacher_logits import LogitCache, teacher_targets


def kd_term(cache: LogitCache | None, teacher, inputs: dict, outputs, temperature: float):
    target = teacher_targets(cache, teacher, {k: v for k, v in inputs.items() if k != "labels"})
    if outputs.logits.shape[-1] == 1:
        return F.mse_loss(outputs.logits.float().squeeze(-1), target.float().squeeze(-1))
    return soft_kl(outputs.logits, target, temperature)


def pruning_loss(cfg, cache: LogitCache | None, banks: contrastive.Banks | None = None, seed: int = 0):
    """A fit() loss_fn: (1 - alpha_kd) task + alpha_kd KD (cfg.alpha_kd, cfg.temperature), plus CAP's terms
    against every bank (cfg.cap_unsup, cfg.cap_sup, cfg.cap_tau, cfg.cap_extra, cfg.cap_pooling); each term
    logged."""
    use_banks = banks is not None

    def loss_fn(model, inputs, teacher, state):
        outputs = model(**inputs, output_hidden_states=use_banks)
        loss = outputs.loss
        if cfg.alpha_kd > 0:
            kd = kd_term(cache, teacher, inputs, outputs, cfg.temperature)
            state.log(task=outputs.loss, kd=kd)
            loss = (1 - cfg.alpha_kd) * outputs.loss + cfg.alpha_kd * kd
        if use_banks and banks.vectors:
            rows = banks.rows(inputs["input_ids"], inputs.get("attention_mask"))
            if rows is not None:  # rows outside the training set (none in practice) get no contrastive term
                z = contrastive.sentence(outputs.hidden_states[-1], inputs.get("attention_mask"), cfg.cap_pooling)
                generator = torch.Generator().manual_seed(seed * 1_000_003 + int(state.step))
                for name, bank in banks.vectors.items():
                    unsup, sup = contrastive.terms(z, rows, inputs["labels"], bank, banks.labels, cfg.cap_extra,
                                                   cfg.cap_tau, generator)
                    state.log(**{f"{name}_unsup": unsup, f"{name}_sup": sup})
                    loss = loss + cfg.cap_unsup * unsup + cfg.cap_sup * sup
        return loss, outputs
    return loss_fn
