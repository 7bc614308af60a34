"""Run fingerprints: everything that decides a run's result, as a JSON-able nested dict.

A finished run is reused only when its recorded fingerprint equals the one the current
config gives; :func:`differences` names the fields that changed (dotted paths).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixjax.data.domain import DomainSpec

# Keys that do not change what a run computes (left out of the fingerprint).
NEUTRAL_TRAIN_KEYS = ("profile",)


def file_stamp(path: str | Path) -> dict:
    """Path, size and modification time of a file (a cheap stand-in for its content)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def directory_stamp(path: str | Path) -> dict:
    """Stamps of the regular files directly in a directory (e.g. an HF model directory)."""
    p = Path(path)
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()}
    return {"path": str(p.resolve()), "files": files}


def source_stamp(source: str) -> str | dict:
    """A data source: generated ones (synthetic:, tfds:) by name, files by stamp."""
    if source.startswith(("synthetic:", "tfds:")):
        return source
    return file_stamp(source)


def data_stamp(domains: Sequence[DomainSpec]) -> dict:
    return {
        d.name: {**{k: v for k, v in dataclasses.asdict(d).items() if k not in ("name", "sources")}, "sources": [source_stamp(s) for s in d.sources]}
        for d in domains
    }


def config_dict(obj: Any, drop: Sequence[str] = ()) -> dict:
    d = dataclasses.asdict(obj)
    return {k: v for k, v in d.items() if k not in drop}


def normalise(fingerprint: Mapping) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def digest(fingerprint: Mapping) -> str:
    return hashlib.sha256(json.dumps(normalise(fingerprint), sort_keys=True).encode()).hexdigest()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and any(isinstance(v, (Mapping, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def flatten(fingerprint: Mapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten(normalise(fingerprint), "", out)
    return out


def differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every field that differs. The examples hash
    follows from the other fields, so it is named only when nothing else explains a change."""
    a, b = flatten(old), flatten(new)
    missing = object()
    diffs = [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
    diffs = [(k, None if x is missing else x, None if y is missing else y) for k, x, y in diffs]
    explained = [d for d in diffs if d[0] != "examples"]
    return explained or diffs


def describe(diffs: Sequence[tuple[str, Any, Any]], limit: int = 3) -> str:
    shown = [f"{k}: {_short(x)} -> {_short(y)}" for k, x, y in diffs[:limit]]
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(shown) + more


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]
