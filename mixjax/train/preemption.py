"""SLURM's preemption / time-limit warning as a flag the training loop reads between steps.

SLURM sends SIGTERM when it preempts or cancels a job (then SIGKILL after ``KillWait``,
30 s by default) and, with ``#SBATCH --signal=USR1@300``, SIGUSR1 five minutes before the
time limit. Inside :class:`PreemptionSignal` both only set a flag; the checkpoint hook
(:class:`mixjax.train.hooks.Checkpointing`) then saves the full state after the current
step and stops the run with :class:`mixjax.train.errors.Preempted`. Outside it the
previous handlers are back (a signal between runs ends the process as before).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionSignal:
    """Context manager: while inside, SIGTERM and SIGUSR1 set :attr:`received` (the
    signal's name) instead of ending the process. Off the main thread (where Python cannot
    install handlers) it does nothing and :attr:`received` stays None."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals, self.received = signals, None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> PreemptionSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def any_process(wanted: bool) -> bool:
    """True on every process when any process passes True (one tiny all-gather per call
    with several processes; no communication with one). Timers and signals differ between
    hosts; a save is a collective that all of them must enter at the same step."""
    import jax

    if jax.process_count() == 1:
        return wanted
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(wanted, np.int32))))
