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
