"""Progress display: tqdm bars on a terminal, plain lines everywhere else.

A bar redraws itself with carriage returns; written to a file (CI logs, SLURM output,
``2> log``) it leaves hundreds of ``\\r``-joined fragments. Off a terminal, progress is
therefore a few whole lines: one per finished item of an outer loop, and a periodic
"step s/n" line (at most one per ``interval_s``) inside a run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def is_terminal(stream: IO[str]) -> bool:
    """True when ``stream`` is an interactive terminal (bars are drawn only there)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_iter(items: Iterable[T], label: str, *, enabled: bool = True, stream: IO[str] | None = None) -> Iterator[T]:
    """``items``, reporting progress: a tqdm bar on a terminal; otherwise one line
    ``"{label}: i/n done"`` after each item (nothing when ``enabled`` is False)."""
    stream = sys.stderr if stream is None else stream
    items = list(items)
    if not enabled:
        yield from items
    elif is_terminal(stream):
        yield from tqdm(items, desc=label, file=stream)
    else:
        for i, item in enumerate(items, 1):
            yield item
            print(f"{label}: {i}/{len(items)} done", file=stream, flush=True)


class StepProgress:
    """Progress of one run's optimizer steps: ``update(step)`` after each step.

    On a terminal a tqdm bar (left behind no line when closed); elsewhere a line
    ``"[run] step s/n (p%)"`` at most every ``interval_s`` seconds, so a log gets
    at most wall-time / ``interval_s`` lines from a run however many steps it has.
    """

    def __init__(
        self, run: str, total: int, *, initial: int = 0, stream: IO[str] | None = None, interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run, self.total, self.interval_s, self.clock = run, total, interval_s, clock
        self.stream = sys.stderr if stream is None else stream
        self.bar = tqdm(total=total, initial=initial, desc=run, leave=False, file=self.stream) if is_terminal(self.stream) else None
        self._last = clock()

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            return
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            print(f"[{self.run}] step {step}/{self.total} ({step / max(self.total, 1):.0%})", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
