"""Shared test helpers: offline environment, config composition, and the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Hub calls hang ~23 s without network: every test runs offline.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("PLM_DATA_DIR", ROOT.parent / "shared" / "data"))
# CLI runs in subprocesses find the data as CI's do (.ci/run exports PLM_DATA_DIR): also under a plain
# `make test` on a machine with ../shared beside the checkout
if SHARED_DATA.is_dir():
    os.environ.setdefault("PLM_DATA_DIR", str(SHARED_DATA))


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """The composed config for `python -m runner <overrides>` (no run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.results import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [],
                             return_hydra_config=return_hydra_config)


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600, env: dict | None = None,
            module: str = "runner") -> subprocess.CompletedProcess:
    """`python -m runner <args>` in a subprocess; returns the completed process (never raises on status)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "glue" / "sst2" / "train.tsv").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# Settings that make a tiny-bert SST-2 run take a few seconds.
TINY_SST2 = [
    "model=tiny-bert", "task=glue/sst2", "task.max_train_samples=256", "task.max_eval_samples=64",
    "task.max_length=32", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=64",
    "train.logging_steps=5", "train.save_steps=8", "train.lr=1e-3",
]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM (tests/slurm_cluster.py) for the `slurm` tests, started once per session and
    stopped by PID afterwards; skips with the reason when the daemons cannot be installed or started."""
    import shutil
    import tempfile

    from tests.slurm_cluster import LocalSlurm

    root = Path(tempfile.mkdtemp(prefix="plm-slurm-"))  # not under pytest's 0700 tmp: munged must reach it
    cluster = LocalSlurm(root)
    reason = cluster.start()
    if reason:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(reason)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def safe_rglob(root: Path, pattern: str) -> list[Path]:
    """rglob over a tree that a running job is changing (temp dirs renamed, checkpoints rotated):
    a directory vanishing mid-walk means "look again", not an error."""
    for _ in range(50):
        try:
            return list(root.rglob(pattern))
        except FileNotFoundError:
            continue
    return []


def kill_when(args: list[str], ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Start `python -m runner *args`, SIGKILL it as soon as `ready()` holds and wait for it: the kill -9 of
    the resume tests. Fails when the run ends before (`what`: the point it should have reached)."""
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before {what}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def checkpoint_reached(root: Path, step: int, where: Callable[[Path], bool] = lambda p: True) -> Callable[[], bool]:
    """A `kill_when` condition: a complete checkpoint (trainer_state.json written) at `step` or later under
    `root`, among those `where` accepts."""
    def ready() -> bool:
        return any(int(p.name.split("-")[1]) >= step for p in safe_rglob(root, "checkpoint-*")
                   if (p / "trainer_state.json").exists() and where(p))
    return ready
