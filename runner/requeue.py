"""Save a checkpoint and requeue when SLURM says time is up (or the job is preempted).

How a submitit job ends early, step by step (hydra/launcher=slurm or local, hydra_plugins/plm_runner/launchers.py):

1. SLURM sends the job's tasks SIGUSR2 `signal_delay_s` before the time limit (`--signal`), or on
   preemption when the cluster is set up to (submitit's docs/checkpointing.md); `scancel --signal=USR2 <id>`
   sends the same by hand. submitit's own handler would checkpoint, `scontrol requeue` and exit at once,
   wherever the training loop is; `SignalGuard` stands in front of it instead and only sets the stop flag.
2. The Trainer callback `runner.train.StopOnRequest` sees the flag at the next optimizer step's end:
   it saves a checkpoint (`control.should_save`) and, once it is written, raises `Requeue`.
3. `Requeue` is a BaseException, so no method's `except Exception` swallows it and Hydra's run_job lets
   it through; runner/run.py marks results.json `requeued`; the launcher's job wrapper catches it and calls
   submitit's handler, which requeues the same job (`BaseSubmititLauncher.checkpoint`: same overrides,
   hence the same deterministic run directory) and exits.
4. The requeued job starts over, finds its run directory and resumes from the newest complete
   checkpoint (runner/train.py `last_checkpoint`).

If no step end comes within `grace_s` (the job is evaluating, tokenizing, or in a stage without a
Trainer), or a second signal arrives, `Requeue` is raised where the main thread is and the job resumes
from its last periodic checkpoint. Light module: no torch import.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

log = logging.getLogger("runner")

_stop = threading.Event()


class Requeue(BaseException):  # noqa: N818  (not an error: the job stops to be requeued)
    """Raised in the job to leave training once a checkpoint is saved; the launcher requeues the job."""


def stop_requested() -> bool:
    """True once this process was asked to stop (SLURM's pre-timeout or preemption signal)."""
    return _stop.is_set()


def request_stop() -> None:
    _stop.set()


def clear() -> None:
    _stop.clear()


class SignalGuard:
    """In a submitit job: turn submitit's checkpoint signal into a stop request and requeue afterwards.

        with SignalGuard(grace_s=90) as guard:
            try:
                return run_the_job()
            except Requeue:
                guard.requeue()      # submitit: checkpoint() -> dump -> scontrol requeue -> exit
    """

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.signum = None
        self.original = None
        self._timer: threading.Timer | None = None
        self._main = threading.main_thread().ident
        self._done = False

    def __enter__(self) -> SignalGuard:
        import submitit

        self.signum = submitit.JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        self.original = signal.getsignal(self.signum)  # submitit's SignalHandler.checkpoint_and_try_requeue
        signal.signal(self.signum, self._on_signal)
        clear()
        return self

    def __exit__(self, *exc) -> None:
        self._done = True  # a signal still in flight from the timer must not interrupt the way out
        if self._timer is not None:
            self._timer.cancel()
        signal.signal(self.signum, self.original)

    def _on_signal(self, signum, frame) -> None:
        if self._done:
            return
        if not stop_requested():
            request_stop()
            self._since = time.time()
            log.warning("caught %s: saving a checkpoint at the next step, then requeueing (grace %.0f s)",
                        signal.Signals(signum).name, self.grace_s)
            self._timer = threading.Timer(self.grace_s, signal.pthread_kill, (self._main, signum))
            self._timer.daemon = True
            self._timer.start()
            return
        # A second signal, or the grace period is over: stop wherever the main thread is.
        raise Requeue(f"no checkpoint saved within {time.time() - self._since:.0f} s of the signal; "
                      "the job resumes from its last periodic checkpoint")

    def requeue(self) -> None:
        """Hand over to submitit's handler: checkpoint (same job, same overrides), requeue, exit."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if callable(self.original):
            self.original(self.signum, None)
