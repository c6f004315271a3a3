"""The cubic sparsity schedule of Zhu & Gupta (2017, arXiv 1710.01878), as used by movement pruning:

    s_t = s_i                                                  for t <= t0            (warm-up: dense)
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3     for t0 < t < t1        (prune fast, then slowly)
    s_t = s_f                                                  for t >= t1            (fixed to the end)

with t0 = warmup * T and t1 = end * T for T training steps (fractions, so a schedule scales with the run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    final: float             # target value at and after t1 (sparsity, or soft movement's threshold)
    total_steps: int         # T: the trainer's max_steps
    warmup: float = 0.1      # t0 / T: steps at the initial value before pruning starts
    end: float = 0.7         # t1 / T: the final value is reached here, then held
    initial: float = 0.0     # value up to t0

    def __post_init__(self):
        if not 0 <= self.warmup < self.end <= 1:
            raise ValueError(f"schedule needs 0 <= warmup < end <= 1, got warmup={self.warmup}, end={self.end}")
        if self.total_steps < 1:
            raise ValueError(f"schedule needs total_steps >= 1, got {self.total_steps}")

    def progress(self, step: int) -> float:
        """1 - (1 - x)^3 with x the position of `step` in [t0, t1], clipped to [0, 1]."""
        t0, t1 = self.warmup * self.total_steps, self.end * self.total_steps
        x = min(max((step - t0) / max(t1 - t0, 1e-9), 0.0), 1.0)
        return 1.0 - (1.0 - x) ** 3

    def __call__(self, step: int) -> float:
        return self.initial + (self.final - self.initial) * self.progress(step)
