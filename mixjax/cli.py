"""Command-line helpers shared by ``mixjax.fit``, ``mixjax.mix`` and ``mixjax.run``: per-domain
``name=number`` flags checked against the values they can take, and the one-line error
that a CLI prints (exit code 2) instead of a traceback."""

from __future__ import annotations

import dataclasses
import math
import sys
import traceback
from collections.abc import Mapping, Sequence


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

# What each per-domain flag may hold; a flag not named here takes any finite number.
FLAG_VALUES: Mapping[str, Allowed] = {
    "--lower": WEIGHT_BOUND, "--upper": WEIGHT_BOUND, "--available": AVAILABLE, "--importance": IMPORTANCE,
    "--weights": WEIGHT, "--tokens-per-example": TOKENS_PER_EXAMPLE,
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
            raise ValueError(f"{flag}: unknown domain {name!r} (domains: {', '.join(domains)})")
        out[name] = check_value(value, allowed, f"{flag} {name}")
    missing = [d for d in domains if d not in out]
    if required and missing:
        raise ValueError(f"{flag}: missing domains {', '.join(missing)}")
    return out


def check_per_domain(values: Mapping[str, object], field: str) -> None:
    """Each value of a config's per-domain mapping (``lower``, ``upper``, ``importance``)
    against :data:`FLAG_VALUES` ``[field]``.

    Raises:
      ValueError: one line naming ``field.<domain>``, the value and what is allowed.
    """
    for name, value in values.items():
        check_value(value, FLAG_VALUES[field], f"{field}.{name}")


def report_error(prog: str, err: BaseException, debug: bool = False) -> int:
    """Print ``prog: error: <one line>`` to stderr (the traceback first with ``debug``) and
    return the CLI's exit code for bad input, 2."""
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return 2


def one_line(err: BaseException) -> str:
    """The error's message on one line (its first line, or the exception type when empty)."""
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = f"missing key {err.args[0]!r}"
    return text.splitlines()[0] if text else type(err).__name__
