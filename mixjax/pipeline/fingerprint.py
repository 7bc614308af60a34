"""Run fingerprints: everything that decides a run's result, as a JSON-able nested dict.

A finished run is reused only when its recorded fingerprint equals the one the current
config gives; :func:`differences` names the fields that changed (dotted paths). Config
sections enter through :func:`config_dict`, which leaves out the fields their dataclass
declares neutral (speed, memory, logging, I/O: ``mixjax.config_fields.neutral``, e.g.
``train.prefetch``, ``train.async_checkpoints``, ``train.mesh_shape``). Records written
before a field was declared neutral still hold it; :func:`differences` ignores it there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixjax.config_fields import neutral_fields, result_dict
from mixjax.data.domain import DomainSpec
from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig

# The fingerprint's config sections (as the pipeline writes them) and their dataclasses;
# "data" holds one DomainSpec per domain name.
SECTIONS: dict[str, type] = {"train": TrainConfig, "model": ModelConfig}
PER_DOMAIN: dict[str, type] = {"data": DomainSpec}


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
        d.name: {**{k: v for k, v in result_dict(d).items() if k not in ("name", "sources")}, "sources": [source_stamp(s) for s in d.sources]}
        for d in domains
    }


def config_dict(obj: Any, drop: Sequence[str] = ()) -> dict:
    """A config dataclass as a dict of the fields that can change a result (neutral fields
    left out, at every level), without the top-level keys in ``drop``."""
    return {k: v for k, v in result_dict(obj).items() if k not in drop}


def is_neutral(key: str) -> bool:
    """Whether a dotted fingerprint key is a neutral field (``train.prefetch``,
    ``data.<domain>.max_bad_fraction``, ...)."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in SECTIONS:
        return parts[1] in neutral_fields(SECTIONS[parts[0]])
    return len(parts) == 3 and parts[0] in PER_DOMAIN and parts[2] in neutral_fields(PER_DOMAIN[parts[0]])


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
    a, b = ({k: v for k, v in flatten(f).items() if not is_neutral(k)} for f in (old, new))
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
