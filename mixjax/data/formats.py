"""SFT record formats and file readers.

A conversation is a list of ``(role, content)`` with role in {system, user, assistant}.
Recognised record formats (JSON objects):

- Alpaca: ``instruction`` [+ ``input``] + ``output``
- ShareGPT: ``conversations``: [{``from``: human|gpt|system, ``value``}]
- OpenAI: ``messages``: [{``role``: system|user|assistant, ``content``}]

Files: ``.jsonl`` (one record per line), ``.json`` (a list of records), ``.parquet``
(one record per row; needs pyarrow). Malformed records are counted and reported with
``file:line``; loading fails when they exceed ``max_bad_fraction`` of the file.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

Conversation = list[tuple[str, str]]

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")
EXPECTED = (
    "expected one of: Alpaca {instruction, [input], output}; ShareGPT {conversations: [{from, value}]};"
    " OpenAI {messages: [{role, content}]}"
)


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


class RecordError(ValueError):
    """One malformed record (reported with its file:line by the reader)."""


def parse_record(record: object) -> Conversation:
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not an object; {EXPECTED}")
    if "messages" in record:
        turns = [(_field(m, "role"), _field(m, "content")) for m in _list(record, "messages")]
    elif "conversations" in record:
        turns = []
        for m in _list(record, "conversations"):
            who = _field(m, "from")
            if who not in _SHAREGPT_ROLES:
                raise RecordError(f"unknown ShareGPT speaker {who!r} (expected human, gpt or system)")
            turns.append((_SHAREGPT_ROLES[who], _field(m, "value")))
    elif "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], "instruction")
        extra = record.get("input") or ""
        turns = [("user", f"{prompt}\n\n{_text(extra, 'input')}" if extra else prompt), ("assistant", _text(record["output"], "output"))]
    else:
        raise RecordError(f"unknown format with keys {sorted(record)}; {EXPECTED}")
    for role, _ in turns:
        if role not in _ROLES:
            raise RecordError(f"unknown role {role!r} (expected {', '.join(_ROLES)})")
    if not any(role == "assistant" and text for role, text in turns):
        raise RecordError("no non-empty assistant turn to train on")
    return turns


def _list(record: dict, key: str) -> list:
    value = record[key]
    if not isinstance(value, list) or not value:
        raise RecordError(f"{key!r} must be a non-empty list")
    return value


def _field(message: object, key: str) -> str:
    if not isinstance(message, dict) or key not in message:
        raise RecordError(f"a turn lacks {key!r}")
    return _text(message[key], key)


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class ReadReport:
    path: str
    total: int  # records in the file, malformed ones included
    bad: tuple[str, ...]  # "file:line: reason"


@dataclasses.dataclass(frozen=True)
class Record:
    """One parsed record and where it came from: its ``source`` (a file, or a generated
    source's name) and ``where`` (``file:line``, or ``source#index``)."""

    conversation: Conversation
    source: str
    where: str


def _raw_records(path: Path):
    """Yield (line, record-or-exception) for every record of the file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install mixjax[parquet])") from err
        for row, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield row, record
    elif path.suffix == ".json":
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json file must hold a list of records")
        for i, record in enumerate(records, start=1):
            yield i, record
    else:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    yield number, RecordError(f"invalid JSON ({err.msg})")


def read_records(path: str | Path) -> tuple[list[Record], ReadReport]:
    """Every well-formed record of a file with its ``file:line``, and the malformed ones as
    ``file:line: reason`` (bad JSON, unknown format or role, no assistant turn). Raises
    DataError only for the file as a whole (missing, no records, a .json that is no list)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    records, bad, total = [], [], 0
    for line, record in _raw_records(path):
        total += 1
        try:
            if isinstance(record, Exception):
                raise record
            records.append(Record(parse_record(record), str(path), f"{path}:{line}"))
        except RecordError as err:
            bad.append(f"{path}:{line}: {err}")
    if total == 0:
        raise DataError(f"{path}: no records")
    return records, ReadReport(str(path), total, tuple(bad))


def check_bad_fraction(bad: list[str] | tuple[str, ...], total: int, max_bad_fraction: float, what: str, shown: int = 3) -> None:
    """Raise DataError naming the first ``shown`` offenders when more than ``max_bad_fraction``
    of ``total`` records are unusable; warn (with the same ``file:line: reason`` list) when
    some are."""
    if len(bad) > max_bad_fraction * total:
        raise DataError(
            f"{what}: {len(bad)} of {total} records malformed or unusable (max_bad_fraction {max_bad_fraction:.1%}): "
            + "; ".join(bad[:shown]) + (f" (and {len(bad) - shown} more)" if len(bad) > shown else "")
        )
    if bad:
        warnings.warn(f"{what}: skipped {len(bad)} malformed or unusable records of {total}: {'; '.join(bad[:shown])}", stacklevel=3)


def read_conversations(path: str | Path, max_bad_fraction: float = 0.01) -> tuple[list[Conversation], ReadReport]:
    """The conversations of one file; malformed records are skipped and reported (warning)
    up to ``max_bad_fraction`` of the file, a DataError beyond it."""
    records, report = read_records(path)
    check_bad_fraction(report.bad, report.total, max_bad_fraction, str(path))
    return [r.conversation for r in records], report
