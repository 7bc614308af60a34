"""SFT record formats and file readers.

A conversation is a list of ``(role, content)`` with role in {system, user, assistant}, or,
for a record with what plain turns cannot hold (tool calls, tool results, a ``tools`` list),
a :class:`Chat`: the messages as transformers' ``apply_chat_template`` takes them plus the
tools. Recognised record formats (JSON objects; docs/data.md shows each):

- Alpaca (LLaMA-Factory's): ``instruction`` [+ ``input``] + ``output`` [+ ``system``]
  [+ ``history``: [[user, assistant], ...], the turns before the instruction];
- ShareGPT: ``conversations``: [{``from``: human|gpt|system|function_call|observation,
  ``value``}] (or {``role``, ``content``}) [+ ``system``] [+ ``tools``]; a
  ``function_call`` value is the JSON ``{name, arguments}`` of an assistant tool call, an
  ``observation`` is a tool result;
- OpenAI: ``messages``: [{``role``: system|user|assistant|tool, ``content``,
  [``tool_calls``], [``tool_call_id``], [``weight``: 0|1], any other field the template
  reads (``name``, ``reasoning_content``, ...)}] [+ ``tools``]; a content given as a list
  of text parts is joined; an assistant turn with ``weight`` 0 is shown, not trained.

A record whose content mixjax cannot train (images, audio, video, a part that is not text)
is malformed, never half-used. Files: ``.jsonl`` (one record per line), ``.json`` (a list
of records), ``.parquet`` (one record per row; needs pyarrow). Malformed records are
counted and reported with ``file:line``; loading fails when they exceed
``max_bad_fraction`` of the file.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

Conversation = list[tuple[str, str]]

_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}
_ROLES = ("system", "user", "assistant", "tool")
# Keys that carry what a text model cannot be trained on: a record with one is malformed.
_UNTRAINABLE = ("images", "videos", "audios", "image", "video", "audio")
# Message keys that change nothing the template writes: role, content, and OpenAI's
# fine-tuning ``weight`` (0: an assistant turn shown but not trained).
PLAIN_KEYS = frozenset({"role", "content", "weight"})
EXPECTED = (
    "expected one of: Alpaca {instruction, [input], output} (+ [system], [history]);"
    " ShareGPT {conversations: [{from, value}]} (+ [system], [tools]); OpenAI {messages: [{role, content}]} (+ [tools])"
)


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


class RecordError(ValueError):
    """One malformed record (reported with its file:line by the reader)."""


@dataclasses.dataclass(frozen=True)
class Chat:
    """A conversation with more than roles and contents: ``messages`` as
    ``apply_chat_template(messages, tools=tools)`` takes them (``role``, ``content`` (str, or
    None beside ``tool_calls``), and every other field of the record's message:
    ``tool_calls``, ``tool_call_id``, ``name``, ``reasoning_content``, ``weight``, ...).
    Iterating gives ``(role, content text)`` like a plain conversation."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Any, ...] | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([(m["role"], m.get("content") or "") for m in self.messages])

    def __len__(self) -> int:
        return len(self.messages)


AnyConversation = Conversation | Chat


def parse_record(record: object) -> AnyConversation:
    """The conversation of one record (module docstring: the formats); a :class:`Chat` when
    the record has tool calls, tool results or tools, else ``[(role, content), ...]``.

    Raises:
      RecordError: an unknown format or role, a field of the wrong type, content a text
        model cannot train on, no non-empty assistant turn.
    """
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not an object; {EXPECTED}")
    for key in _UNTRAINABLE:
        if record.get(key):
            raise RecordError(f"record has {key!r}: mixjax trains text-only models; drop the record or the field")
    if "messages" in record:
        messages = [_openai_message(m) for m in _list(record, "messages")]
    elif "conversations" in record:
        messages = _system(record) + [_sharegpt_message(m) for m in _list(record, "conversations")]
    elif "instruction" in record and "output" in record:
        messages = _system(record) + _history(record) + _alpaca_turns(record)
    else:
        raise RecordError(f"unknown format with keys {sorted(record)}; {EXPECTED}")
    for m in messages:
        if m["role"] not in _ROLES:
            raise RecordError(f"unknown role {m['role']!r} (expected {', '.join(_ROLES)})")
    if not any(is_trained(m) and (m.get("content") or set(m) - PLAIN_KEYS) for m in messages):
        raise RecordError("no non-empty assistant turn to train on")
    tools = _tools(record)
    if tools is None and all(set(m) == {"role", "content"} for m in messages):
        return [(m["role"], m["content"]) for m in messages]
    return Chat(tuple(messages), tools)


# The top-level fields each format renders (any other is reported by read_records).
_FORMAT_KEYS = (
    ("messages", frozenset({"messages", "tools"})),
    ("conversations", frozenset({"conversations", "system", "tools"})),
    ("instruction", frozenset({"instruction", "input", "output", "system", "history"})),
)


def unrendered_fields(record: object) -> list[str]:
    """The top-level fields of a record that its format does not render (ids, metadata, or
    content under a name mixjax does not know), sorted."""
    if not isinstance(record, dict):
        return []
    used = next((keys for marker, keys in _FORMAT_KEYS if marker in record), frozenset(record))
    return sorted(set(record) - used)


def _system(record: dict) -> list[dict]:
    """A top-level ``system`` prompt as the first message (none when absent or empty)."""
    system = record.get("system")
    return [{"role": "system", "content": _text(system, "system")}] if system else []


def _history(record: dict) -> list[dict]:
    """Alpaca ``history``: [[user, assistant], ...], the turns before the instruction."""
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError(f"'history' must be a list of [user, assistant] pairs, got {type(history).__name__}")
    turns = []
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError(f"'history' must be a list of [user, assistant] pairs, got {pair!r:.60}")
        turns += [{"role": "user", "content": _text(pair[0], "history")}, {"role": "assistant", "content": _text(pair[1], "history")}]
    return turns


def _alpaca_turns(record: dict) -> list[dict]:
    prompt = _text(record["instruction"], "instruction")
    extra = record.get("input") or ""
    user = f"{prompt}\n\n{_text(extra, 'input')}" if extra else prompt
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]


def _sharegpt_message(m: object) -> dict:
    if isinstance(m, dict) and "from" not in m and "role" in m:
        return _openai_message(m)
    who = _field(m, "from")
    if who not in _SHAREGPT_ROLES:
        raise RecordError(f"unknown ShareGPT speaker {who!r} (expected {', '.join(_SHAREGPT_ROLES)})")
    value = _field(m, "value")
    if who != "function_call":
        return {"role": _SHAREGPT_ROLES[who], "content": value}
    try:
        call = json.loads(value)
    except json.JSONDecodeError:
        raise RecordError(f"a function_call value must be the JSON {{name, arguments}} of a call, got {value[:60]!r}") from None
    calls = call if isinstance(call, list) else [call]
    if not all(isinstance(c, dict) and "name" in c for c in calls):
        raise RecordError(f"a function_call value must be the JSON {{name, arguments}} of a call, got {value[:60]!r}")
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls]}


def _openai_message(m: object) -> dict:
    if not isinstance(m, dict) or "role" not in m:
        raise RecordError("a turn lacks 'role'")
    role = _text(m["role"], "role")
    calls = m.get("tool_calls")
    if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
        raise RecordError(f"'tool_calls' must be a list of objects, got {type(calls).__name__}")
    if "content" not in m and not calls:
        raise RecordError("a turn lacks 'content'")
    if m.get("weight", 1) not in (0, 1):
        raise RecordError(f"'weight' must be 0 (not trained) or 1, got {m['weight']!r}")
    content = m.get("content")
    message = {k: v for k, v in m.items() if v is not None}  # the template gets every field the record gives
    message.update(role=role, content=None if content is None and calls else _content(content))
    return message


def is_trained(message: Mapping[str, Any]) -> bool:
    """Whether a message is a training target: an assistant turn whose ``weight`` is not 0."""
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def _content(value: object) -> str:
    """A message's content as text: a string, or a list of text parts joined."""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RecordError(f"a content part of type {kind!r}: mixjax trains text-only models")
            parts.append(part["text"])
        return "".join(parts)
    return _text(value, "content")


def _tools(record: dict) -> tuple | None:
    """The record's ``tools`` (a list, or its JSON as ShareGPT files write it), or None."""
    tools = record.get("tools")
    if not tools:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RecordError(f"'tools' is a string that is not JSON: {tools[:60]!r}") from None
    if not isinstance(tools, list):
        raise RecordError(f"'tools' must be a list of tool schemas, got {type(tools).__name__}")
    return tuple(tools)


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

    conversation: AnyConversation
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
    ``file:line: reason`` (bad JSON, unknown format or role, no assistant turn); top-level
    fields that no conversation renders (ids, metadata) are named in one warning. Raises
    DataError only for the file as a whole (missing, no records, a .json that is no list)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    records, bad, total, unrendered = [], [], 0, {}
    for line, record in _raw_records(path):
        total += 1
        try:
            if isinstance(record, Exception):
                raise record
            records.append(Record(parse_record(record), str(path), f"{path}:{line}"))
            for key in unrendered_fields(record):
                unrendered.setdefault(key, f"{path}:{line}")
        except RecordError as err:
            bad.append(f"{path}:{line}: {err}")
    if total == 0:
        raise DataError(f"{path}: no records")
    if unrendered:
        warnings.warn(
            f"{path}: fields not rendered into the conversations (not part of their format):"
            f" {', '.join(f'{k!r} (first at {w})' for k, w in unrendered.items())}",
            stacklevel=2,
        )
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


def read_conversations(path: str | Path, max_bad_fraction: float = 0.01) -> tuple[list[AnyConversation], ReadReport]:
    """The conversations of one file; malformed records are skipped and reported (warning)
    up to ``max_bad_fraction`` of the file, a DataError beyond it."""
    records, report = read_records(path)
    check_bad_fraction(report.bad, report.total, max_bad_fraction, str(path))
    return [r.conversation for r in records], report
