"""The errors that stop one training run (the pipeline records them and moves on)."""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """A train or eval loss (or the gradient norm) of a run was NaN or infinite."""

    def __init__(self, run: str, step: int, what: str, value: float | None = None) -> None:
        self.run, self.step, self.what = run, step, what
        super().__init__(f"run {run!r}: non-finite {what} loss ({value}) at step {step}")


class DataExhaustedError(RuntimeError):
    """The run's data ended before its schedule did."""

    def __init__(self, run: str, step: int, total_steps: int) -> None:
        self.run, self.step, self.total_steps = run, step, total_steps
        super().__init__(
            f"run {run!r}: training data exhausted at step {step} of {total_steps} "
            "(lower max_steps, raise epochs, or give the run more data)"
        )


class Preempted(SystemExit):
    """SLURM (or anyone) sent SIGTERM / SIGUSR1: the run saved its full state and stops.

    A SystemExit, not a RuntimeError: the pipeline must not record the run as failed and
    go on to the next one; the process ends (exit code 1, this one-line message) and a
    rerun (``sbatch --requeue`` or by hand) resumes the run from the state just saved."""

    def __init__(self, run: str, step: int, signal_name: str) -> None:
        self.run, self.step = run, step
        super().__init__(f"run {run!r}: {signal_name} received; full state saved at step {step}; rerun the same command to resume")
