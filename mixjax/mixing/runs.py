"""The run table: one row per training run, tokens and validation loss per domain.

Columns ``tokens.<domain>`` (numbers >= 0, any unit; budgets use the same unit) and
``loss.<domain>``. A ``loss.<name>`` column without a ``tokens.<name>`` column is a
*target*: a validation set no run trains on (a held-out benchmark, a downstream task's
loss, a source that is not a training domain); it gets a law of every domain's tokens
and can be (part of) the objective. An empty loss cell means "not measured"; a literal NaN is an error. A
domain with a ``tokens.`` column but no ``loss.`` column (or only empty cells) was trained
but never measured: its tokens count in the other domains' transfer and it gets no law of
its own (RegMix's tables train 17 Pile domains and measure 13). A token count of 0 is a
run without that domain: the law there is the transfer-only loss.
CSV or JSONL (one object per line, same keys). A CSV is read as pandas reads it with its
defaults, or refused with file:line: names and cells stripped of surrounding spaces, a
byte-order mark and blank lines ignored, quoted cells, a short row's missing losses not
measured; a repeated column, a row longer than the header, and a loss that is negative,
infinite or NaN are errors. The base run is the row where every
domain has its most common token count, all positive; domain i's series is the base run
plus every run that changes only domain i (repeats averaged over the runs where loss.i
was measured). Every other run with a measured loss.i is a "cross" point (it varies the
other-domain tokens M).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np



class RunTableError(ValueError):
    """A malformed run table; the message names the file, line and column."""


@dataclasses.dataclass(frozen=True)
class RunTable:
    """Runs (R) of k training domains: tokens (R, k) and the losses (R, k + T) of the
    domains then the T targets (:attr:`outputs`), NaN where not measured."""

    domains: tuple[str, ...]
    tokens: np.ndarray  # (R, k)
    losses: np.ndarray  # (R, k + T), NaN where not measured
    lines: tuple[int, ...]  # source line of each row
    source: str = "<table>"
    targets: tuple[str, ...] = ()  # loss columns with no tokens column

    @property
    def outputs(self) -> tuple[str, ...]:
        """The loss columns: every domain, then every target."""
        return self.domains + self.targets

    @property
    def output_tokens(self) -> np.ndarray:
        """(R, k + T) tokens with a zero column per target (no run trains on a target)."""
        return np.concatenate([self.tokens, np.zeros((len(self.tokens), len(self.targets)))], axis=1)

    @property
    def base_tokens(self) -> np.ndarray:
        return np.array([Counter(col.tolist()).most_common(1)[0][0] for col in self.tokens.T])

    @property
    def measured(self) -> np.ndarray:
        """(k + T,) bool: outputs with at least one measured loss (the others get no law)."""
        return ~np.all(np.isnan(self.losses), axis=0)


def _parse_number(text, where: str, what: str, allow_empty: bool) -> float:
    """``text`` as a float (surrounding spaces ignored, as pandas does); NaN for an empty
    cell when ``allow_empty``.

    Raises:
      RunTableError: naming ``where`` and ``what``: an empty required cell, a value that is
        not a number, a literal NaN.
    """
    if isinstance(text, str):
        text = text.strip()
    if text is None or text == "":
        if allow_empty:
            return math.nan
        raise RunTableError(f"{where}: {what} is empty")
    if isinstance(text, bool):
        raise RunTableError(f"{where}: {what} is not a number: {text!r}")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RunTableError(f"{where}: {what} is not a number: {text!r}") from None
    if math.isnan(value):
        raise RunTableError(f"{where}: {what} is NaN (leave the cell empty for a loss that was not measured)")
    return value


def _header(names: list, where: str) -> list[str]:
    """Column names stripped of surrounding spaces (``a, loss.b`` names ``loss.b``).

    Raises:
      RunTableError: an empty or repeated name (pandas would rename it ``x.1``).
    """
    stripped = [str(n).strip() for n in names]
    for i, name in enumerate(stripped):
        if name in stripped[:i]:
            raise RunTableError(f"{where}: column {name!r} appears twice (rename one)")
    return stripped


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line, {column: cell}) of every non-blank CSV row, with the row's own line number."""
    reader = csv.reader(text.splitlines(keepends=True), skipinitialspace=True)
    header, rows = None, []
    for cells in reader:
        if not any(c.strip() for c in cells):  # blank lines, as pandas skips them
            continue
        line = reader.line_num
        if header is None:
            header = _header(cells, f"{path}:{line}")
            continue
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            raise RunTableError(f"{path}:{line}: {len(cells)} cells but the header has {len(header)} columns")
        rows.append((line, dict(zip(header, cells + [""] * (len(header) - len(cells))))))  # a short row's missing cells are empty
    return rows


def _loss(text, where: str, domain: str) -> float:
    """One ``loss.<domain>`` cell: NaN when empty (not measured), else a finite number >= 0.

    Raises:
      RunTableError: a value that cannot be a cross-entropy (negative, inf, NaN, not a number).
    """
    value = _parse_number(text, where, f"loss.{domain}", allow_empty=True)
    if not math.isnan(value) and not (math.isfinite(value) and value >= 0):
        raise RunTableError(
            f"{where}: loss.{domain} must be a finite number >= 0 (a mean cross-entropy in nats), got {value:g};"
            " leave the cell empty if it was not measured"
        )
    return value


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of a CSV or JSONL run table as (line number, {column: value}).

    Raises:
      RunTableError: a missing file, invalid JSON, a repeated column or a row with more
        cells than the header, naming file:line.
    """
    if not path.exists():
        raise RunTableError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of the first column's name
    if path.suffix not in (".jsonl", ".json", ".ndjson"):
        return _csv_rows(path, text)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunTableError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise RunTableError(f"{path}:{number}: a row must be a JSON object, got {type(record).__name__}")
            rows.append((number, dict(zip(_header(list(record), f"{path}:{number}"), record.values()))))
    return rows


def _check_target_names(targets: tuple[str, ...], domains: tuple[str, ...], source: str) -> None:
    """RunTableError for a target named like a domain up to case, spaces, '-' and '_' (a
    typo in a loss column would make a domain "never measured" and a target of its loss)."""
    key = lambda name: "".join(ch for ch in name.lower() if ch not in " -_")
    for t in targets:
        near = [d for d in domains if key(d) == key(t)]
        if near:
            raise RunTableError(f"{source}: column loss.{t} has no tokens.{t} column but matches domain {near[0]!r}: rename it"
                                f" loss.{near[0]} (a loss column without a tokens column is a target no run trains on)")


def parse_run_table(rows: list[tuple[int, dict]], source: str = "<table>", require_losses: bool = True) -> RunTable:
    """The run table of parsed rows ``(line number, {column: value})``.

    ``require_losses=False`` reads a table of mixtures to predict (loss columns optional).

    Raises:
      RunTableError: naming the file, line and column.
    """
    if not rows:
        raise RunTableError(f"{source}: the table has no runs")
    columns = list(rows[0][1].keys())
    domains = tuple(c.removeprefix("tokens.") for c in columns if c.startswith("tokens."))
    if not domains:
        raise RunTableError(f"{source}: no tokens.<domain> columns (have: {', '.join(columns)})")
    if require_losses and not any(f"loss.{d}" in columns for d in domains):
        raise RunTableError(f"{source}: no loss.<domain> column (have: {', '.join(columns)})")
    targets = tuple(c.removeprefix("loss.") for c in columns if c.startswith("loss.") and c.removeprefix("loss.") not in domains)
    _check_target_names(targets, domains, source)
    outputs = domains + targets
    tokens, losses, lines = [], [], []
    for number, row in rows:
        where = f"{source}:{number}"
        t = [_parse_number(row.get(f"tokens.{d}"), where, f"tokens.{d}", allow_empty=False) for d in domains]
        for d, v in zip(domains, t):
            if not (math.isfinite(v) and v >= 0):
                raise RunTableError(f"{where}: tokens.{d} must be a finite number >= 0, got {v:g}")
        if not sum(t) > 0:
            raise RunTableError(f"{where}: the run trains no tokens (every tokens.<domain> is 0)")
        tokens.append(t)
        losses.append([_loss(row.get(f"loss.{d}"), where, d) for d in outputs])
        lines.append(number)
    losses = np.asarray(losses)
    for d, column in zip(outputs, losses.T):
        measured = column[~np.isnan(column)]
        if measured.size and np.all(measured == 0):  # cross-entropy over real tokens is > 0
            raise RunTableError(
                f"{source}: loss.{d} is 0 in every run: no loss was measured (a mean over zero trained tokens,"
                f" e.g. every {d} example longer than seq_len); refusing to fit it"
            )
    if targets and not (~np.isnan(losses[:, len(domains):])).any(axis=0).all():
        empty = [t for t, col in zip(targets, losses[:, len(domains):].T) if np.all(np.isnan(col))][0]
        raise RunTableError(f"{source}: target loss.{empty} (no tokens.{empty} column) is empty in every run; fill it or drop the column")
    return RunTable(domains, np.asarray(tokens), losses, tuple(lines), source, targets)


def read_run_table(path: str | Path, require_losses: bool = True) -> RunTable:
    """Read a CSV or JSONL run table (see the module docstring). Raises RunTableError."""
    path = Path(path)
    return parse_run_table(_read_rows(path), str(path), require_losses)


@dataclasses.dataclass(frozen=True)
class DomainData:
    """What the fit of one domain sees, in the user's token units.

    ``in_domain``/``loss``: the runs that perturb only this domain (its own series, base
    run included), all at the same other-domain tokens ``other`` (may be empty when the
    table has no base run, e.g. a random swarm). ``cross_*``: every other run where this
    domain's loss was measured (they vary ``M`` and so identify ``alpha``).

    Token counts may be zero (a run without this domain measures the transfer-only loss
    ``c (gamma M^alpha)^-beta + e``, or one that trains only this domain ``M = 0``), but
    not negative, and every run trains some tokens.

    Raises:
      ValueError: fewer than 3 points, negative or all-zero tokens, non-finite losses.
    """

    name: str
    in_domain: np.ndarray
    other: float
    loss: np.ndarray
    cross_in_domain: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_other: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        order = np.argsort(self.in_domain)
        object.__setattr__(self, "in_domain", np.asarray(self.in_domain, np.float64)[order])
        object.__setattr__(self, "loss", np.asarray(self.loss, np.float64)[order])
        for name in ("cross_in_domain", "cross_other", "cross_loss"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float64))
        total = len(self.in_domain) + len(self.cross_loss)
        if len(self.in_domain) < 3 and (len(self.in_domain) > 0 or total < 3):
            raise ValueError(f"domain {self.name!r}: {len(self.in_domain)} points, the fit needs >= 3")
        x, m, loss = self.points()
        if not (np.all(x >= 0) and np.all(m >= 0) and np.all(x + m > 0)):
            raise ValueError(f"domain {self.name!r}: token counts must be >= 0 and every run must train some tokens")
        if len(self.in_domain) and not self.other > 0:
            raise ValueError(f"domain {self.name!r}: the own series needs positive other-domain tokens, got {self.other}")
        if not np.all(np.isfinite(loss)):
            raise ValueError(f"domain {self.name!r}: losses must be finite")

    @property
    def has_series(self) -> bool:
        return len(self.in_domain) >= 3

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every run of this domain: (in-domain tokens, other tokens, loss), series first."""
        x = np.concatenate([self.in_domain, self.cross_in_domain])
        m = np.concatenate([np.full(len(self.in_domain), self.other), self.cross_other])
        return x, m, np.concatenate([self.loss, self.cross_loss])


def domain_data(table: RunTable) -> list[DomainData]:
    """Split the table into per-domain fit inputs, one per measured domain (table order).

    With a base run (every domain at its most common token count, all positive), domain
    i's own series is the base run plus the runs that change only domain i, repeats
    averaged over the runs where loss.i was measured; every other run with a measured
    loss.i is a cross point. Without one (e.g. a random swarm of mixtures), every run with
    a measured loss.i is a cross point. Domains never measured (:attr:`RunTable.measured`)
    get no entry; their tokens still count in the others' ``M``.

    Raises:
      RunTableError: a measured domain with fewer than 3 usable runs.
    """
    base = table.base_tokens
    at_base = np.isclose(table.tokens, base[None], rtol=1e-9)
    has_base = bool(np.all(base > 0) and np.any(np.all(at_base, axis=1)))
    result = []
    for i, name in enumerate(table.domains):
        measured = ~np.isnan(table.losses[:, i])
        if not measured.any():
            continue
        others_at_base = np.all(np.delete(at_base, i, axis=1), axis=1) if has_base else np.zeros(len(at_base), bool)
        series = np.flatnonzero(others_at_base & measured)
        x, loss = _average_repeats(table.tokens[series, i], table.losses[series, i])
        if len(x) < 3:
            if measured.sum() < 3 and not has_base:
                raise RunTableError(
                    f"{table.source}: no base run (no row has every domain at its most common token count:"
                    f" {', '.join(f'{d}={b:g}' for d, b in zip(table.domains, base))}) and domain {name}"
                    f" has {int(measured.sum())} runs with a measured loss; the fit needs >= 3"
                )
            if measured.sum() < 3:
                raise RunTableError(
                    f"{table.source}: domain {name} has {len(x)} distinct token counts in its series"
                    f" (runs that change only {name}, with loss.{name} measured); the fit needs >= 3"
                )
            x, loss, series = np.zeros(0), np.zeros(0), np.zeros(0, int)
        cross = np.flatnonzero(measured & ~np.isin(np.arange(len(measured)), series))
        other = lambda rows: table.tokens[rows].sum(axis=1) - table.tokens[rows, i]
        result.append(
            DomainData(
                name=name,
                in_domain=x,
                other=float(base.sum() - base[i]) if len(x) else 0.0,
                loss=loss,
                cross_in_domain=table.tokens[cross, i],
                cross_other=other(cross),
                cross_loss=table.losses[cross, i],
            )
        )
    return result


def _average_repeats(x: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs repeated at the same token count (e.g. seeds) are averaged."""
    keys = np.unique(x)
    return keys, np.array([loss[x == k].mean() for k in keys])


def write_run_table(path: str | Path, domains, tokens, losses, extra: dict[str, list] | None = None, targets=()) -> None:
    """Write a CSV run table (empty cells for NaN losses): tokens (R, k), losses (R, k + T)
    of ``domains`` then ``targets``; ``extra``: columns written first, one value per run
    (a run's name, label, seed; the reader ignores them)."""
    extra = extra or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*extra, *(f"tokens.{d}" for d in domains), *(f"loss.{d}" for d in (*domains, *targets))])
        for r, (t, l) in enumerate(zip(np.asarray(tokens), np.asarray(losses))):
            writer.writerow([v[r] for v in extra.values()] + [repr(float(v)) for v in t]
                            + ["" if np.isnan(v) else repr(float(v)) for v in l])
