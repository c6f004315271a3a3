"""The inheritance rate alpha_t: the weight of the teacher's KD term at optimiser step t.

    linear    alpha_0 * max(0, 1 - t / N)        the anchor's default (fairseq masked_lm_distil): KD fades
                                                 out over the first N steps, then pure self-learning (MLM)
    step      alpha_0 if t < N else 0            the anchor's --distil_then_mlm: a hard switch at step N
    constant  alpha_0 at every step              the anchor's masked_lm_distil_H_half (alpha_0 = 0.5):
                                                 the teacher is never let go of

N is `inherit_steps`. The anchor starts at alpha_0 = 1 (pure KD at step 0).
"""

from __future__ import annotations

SCHEDULES = ("linear", "step", "constant")


def inheritance_rate(step: int, schedule: str, alpha0: float, inherit_steps: int) -> float:
    """alpha_t at global optimiser step `step` (0 for the first batch)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if not 0 <= alpha0 <= 1:
        raise ValueError(f"alpha0 must be in [0, 1], got {alpha0}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if schedule == "constant":
        return float(alpha0)
    if inherit_steps <= 0:
        return 0.0
    if schedule == "step":
        return float(alpha0) if step < inherit_steps else 0.0
    return float(alpha0) * max(0.0, 1.0 - step / inherit_steps)
