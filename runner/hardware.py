"""Hardware settings (conf/hardware/*.yaml) and the torchrun re-launch behind hardware=multi_gpu."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

from runner.errors import UserError


@dataclass
class HardwareConfig:
    """Mirror of conf/hardware/*.yaml."""

    name: str
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16", "auto"] = "fp32"
    num_gpus: int | str = 0
    threads: int | None = None


def apply(hw: HardwareConfig) -> None:
    """Set process-wide knobs before any model is built."""
    import torch

    if hw.threads:
        torch.set_num_threads(hw.threads)
    if hw.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"hardware={hw.name} needs a CUDA GPU and none is visible; use hardware=cpu")


def gpus_per_node(hw: HardwareConfig) -> int:
    if hw.num_gpus == "auto":
        import torch

        return torch.cuda.device_count()
    return int(hw.num_gpus)


def in_distributed_child() -> bool:
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_all() -> None:
    """A barrier across the ranks of a torchrun job (after rank 0 wrote files the others read); no-op alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def relaunch_under_torchrun(hw: HardwareConfig, overrides: list[str]) -> int:
    """Run this same job as `torchrun --nproc_per_node N -m runner <overrides>` on this node and wait.

    The children compute the same deterministic run directory from the same overrides; rank 0 writes
    results.json. Multi-node SLURM jobs call torchrun through srun instead (see README).
    """
    n = gpus_per_node(hw)
    if n < 1:
        raise UserError(f"hardware={hw.name}: no GPUs found for torchrun; use hardware=cpu or hardware=gpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "runner", *overrides]
    # Under SLURM the pre-timeout signal (USR2) reaches every process of the job step, and its default
    # action would kill torchrun and the ranks at once: they ignore it, this process handles it (requeue).
    return subprocess.call(cmd, preexec_fn=_ignore_requeue_signal)


def _ignore_requeue_signal() -> None:
    import signal

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
