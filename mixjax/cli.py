"""Command-line helpers shared by ``mixjax.fit``, ``mixjax.mix`` and ``mixjax.run``: per-domain
``name=number`` flags checked against the values they can take, and the one-line error
that a CLI prints (exit code 2) instead of a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import re
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Allowed:
    """The values a per-domain number may take: finite, ``low <= v`` (``low < v`` when
    ``open_low``), ``v <= high``, and what it means (for the error message)."""

    low: float
    high: float = math.inf
    open_low: bool = False
    meaning: str = ""

    def __str__(self) -> str:
        left = f"({self.low:g}" if self.open_low else f"[{self.low:g}"
        right = "inf)" if math.isinf(self.high) else f"{self.high:g}]"
        return f"a finite number in {left}, {right}" + (f" ({self.meaning})" if self.meaning else "")

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return math.isfinite(value) and above and value <= self.high


WEIGHT_BOUND = Allowed(0.0, 1.0, meaning="a bound on a weight, the domain's share of the budget")
AVAILABLE = Allowed(0.0, open_low=True, meaning="tokens the domain has, in the budget's unit; leave a domain out for unlimited")
IMPORTANCE = Allowed(0.0, meaning="the weight of the domain's loss in the objective; 0 ignores it")
WEIGHT = Allowed(0.0, meaning="a mixture weight; the weights are normalised to sum 1")
TOKENS_PER_EXAMPLE = Allowed(0.0, open_low=True, meaning="mean tokens per training example of the domain")
BUDGET = Allowed(0.0, open_low=True, meaning="total training tokens N, in the run table's unit")

# What each per-domain flag may hold; a flag not named here takes any finite number.
FLAG_VALUES: Mapping[str, Allowed] = {
    "--lower": WEIGHT_BOUND, "--upper": WEIGHT_BOUND, "--available": AVAILABLE, "--importance": IMPORTANCE,
    "--weights": WEIGHT, "--tokens-per-example": TOKENS_PER_EXAMPLE, "--objective": IMPORTANCE,
    "lower": WEIGHT_BOUND, "upper": WEIGHT_BOUND, "importance": IMPORTANCE,
}


def check_value(value: object, allowed: Allowed, what: str) -> float:
    """``value`` as a float when ``allowed`` admits it.

    Raises:
      ValueError: one line naming ``what``, the value and what is allowed.
    """
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not allowed.admits(number):
        raise ValueError(f"{what}={value!r}: expected {allowed}")
    return number


def per_domain_values(items: Sequence[str], domains: Sequence[str], flag: str, *, required: bool = False) -> dict[str, float]:
    """``name=number`` pairs of the flag ``flag`` as {domain: value}, each checked against
    :data:`FLAG_VALUES` ``[flag]`` (any finite number for other flags).

    Raises:
      ValueError: naming ``flag``: an unknown domain, a value that is not a number or
        outside what the flag allows (NaN, inf, a bound outside [0, 1], ...), or (with
        ``required``) a domain left out.
    """
    allowed = FLAG_VALUES.get(flag, Allowed(-math.inf))
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag}: {item!r} is not name=number")
        if name not in domains:
            raise ValueError(f"{flag}: unknown domain {name!r} (have: {', '.join(domains)})")
        out[name] = check_value(value, allowed, f"{flag} {name}")
    missing = [d for d in domains if d not in out]
    if required and missing:
        raise ValueError(f"{flag}: missing domains {', '.join(missing)}")
    return out


def check_budgets(budgets: Sequence[float], flag: str = "--budget") -> None:
    """Each budget against :data:`BUDGET` (finite, > 0).

    Raises:
      ValueError: one line naming the flag, the value and what is allowed.
    """
    for budget in budgets:
        check_value(budget, BUDGET, flag)


def check_per_domain(values: Mapping[str, object], field: str) -> None:
    """Each value of a config's per-domain mapping (``lower``, ``upper``, ``importance``)
    against :data:`FLAG_VALUES` ``[field]``.

    Raises:
      ValueError: one line naming ``field.<domain>``, the value and what is allowed.
    """
    for name, value in values.items():
        check_value(value, FLAG_VALUES[field], f"{field}.{name}")


def report_error(prog: str, err: BaseException, debug: bool = False, log: Path | None = None) -> int:
    """Print ``prog: error: <one line>`` to stderr and return the exit code: 2 for bad input
    and known causes (:func:`dependency_error`: a full disk), 1 for anything else. The
    traceback goes to stderr first with ``debug``, else to ``log`` (named in the line)."""
    known = dependency_error(err)
    line = known or f"{type(err).__name__}: {one_line(err)}"
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    elif log is not None:  # the experiment's disk may be the full one: then the temporary directory's
        text = "".join(traceback.format_exception(err))
        written = next((p for p in (log, Path(tempfile.gettempdir()) / f"mixjax-{log.name}") if _append(p, text)), None)
        line += f" (traceback in {written}; --debug prints it)" if written else ""
    print(f"{prog}: error: {line}", file=sys.stderr)
    return 2 if known else 1


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace runs joined; the type when empty)."""
    if isinstance(err, KeyError) and err.args:
        return f"missing key {err.args[0]!r}"
    return " ".join(str(err).split()) or type(err).__name__


_DISK_FULL = ("No space left on device", "Disk quota exceeded")
_WRITTEN = re.compile(r'(?:local file|writing|opening) "(/[^"]+)"')


def dependency_error(err: BaseException) -> str | None:
    """One line for an error from a dependency with a known cause and way out, else None.

    Known: a full disk (``OSError`` ENOSPC/EDQUOT, or tensorstore's ``RESOURCE_EXHAUSTED``
    while writing, as an orbax checkpoint save reports it) anywhere in the exception's
    chain; the line names the directory being written (from any error of the chain) and
    what to do.
    """
    chain = _chain(err)
    if not any(_disk_full(e) for e in chain):
        return None
    paths = [p for e in chain for p in (getattr(e, "filename", None), *_WRITTEN.findall(str(e))) if p]
    paths += [p for e in chain for p in [_path_in_frames(e)] if p]
    where = f" of {_written_dir(str(paths[0]))}" if paths else ""
    return (
        f"no space left on the device{where} (while writing a checkpoint or result): free space there or give"
        " the experiment another disk (--set workdir=<dir>); rerunning resumes from the last complete checkpoint"
    )


def _chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and its causes and contexts, outermost first."""
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out):
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _path_in_frames(err: BaseException) -> str | None:
    """The absolute path a failed write was on, from the innermost frame of ``err``'s
    traceback that holds one (``self`` of a path object's ``write_text``, or a local named
    ``path``, ``directory`` or ``filename``): an ``OSError`` raised on close has no filename."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        for name in ("self", "path", "directory", "filename"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and os.fspath(value).startswith("/"):
                return os.fspath(value)
    return None


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` says a disk is full (tensorstore's RESOURCE_EXHAUSTED is also an
    accelerator out of memory: only while writing)."""
    text = str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(m in text for m in _DISK_FULL) or ("RESOURCE_EXHAUSTED" in text and "rror writing" in text)


def _written_dir(path: str) -> str:
    """The directory an orbax save writes into: ``path`` up to its first ``*.orbax-checkpoint-tmp``."""
    parts = Path(path).parts
    cut = next((i for i, p in enumerate(parts) if p.endswith("orbax-checkpoint-tmp")), len(parts) - 1)
    return str(Path(*parts[:cut])) if cut else path


def _append(log: Path, text: str) -> bool:
    """Append ``text`` to ``log``; False when it cannot be written (e.g. the full disk)."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(text)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def logged_dependencies(log: Path | None, restore_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Within the block, what the dependencies report on their own goes to ``log`` instead
    of one traceback each on stderr: absl's and asyncio's log records (orbax and tensorstore
    report each failed background write there), exceptions of threads and of callbacks, and
    exceptions the interpreter can only ignore (an orbax save still pending at exit); what
    cannot be written (a full disk) is dropped. When the block raises anything but
    ``restore_on`` (bad input, found before any dependency ran) it is left in place, since
    the dependencies' threads go on reporting until the process ends. ``log=None`` changes
    nothing (``--debug``)."""
    if log is None:
        yield
        return

    def write(*exc) -> None:
        _append(log, "".join(traceback.format_exception(*exc)))

    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    saved = [(g, g.propagate) for g in loggers], (sys.excepthook, threading.excepthook, sys.unraisablehook, logging.raiseExceptions)
    handler = _log_handler(log)
    for g in loggers:
        g.addHandler(handler)
        g.propagate = False
    logging.raiseExceptions = False  # a log on a full disk prints no tracebacks of its own
    sys.excepthook = write
    threading.excepthook = lambda args: write(args.exc_type, args.exc_value, args.exc_traceback)
    sys.unraisablehook = lambda u: write(type(u.exc_value), u.exc_value, u.exc_traceback) if u.exc_value else None
    try:
        yield
    except restore_on:
        _restore(saved, handler)
        raise
    _restore(saved, handler)


def _restore(saved, handler: logging.Handler) -> None:
    for g, propagate in saved[0]:
        g.removeHandler(handler)
        g.propagate = propagate
    handler.close()
    sys.excepthook, threading.excepthook, sys.unraisablehook, logging.raiseExceptions = saved[1]


def _log_handler(log: Path) -> logging.Handler:
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log, encoding="utf-8", delay=True)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler
