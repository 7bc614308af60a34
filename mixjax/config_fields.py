"""What a config field means for a run's result: declared on the field itself.

A run's fingerprint (:mod:`mixjax.pipeline.fingerprint`) must cover exactly what can
change the numbers it produces. Each field of a config dataclass says which kind it is,
next to its type and default, through ``dataclasses.field`` metadata:

- :func:`result`: changes what the run computes (data, model, schedule, seed, ...);
- :func:`neutral`: speed, memory, logging or I/O only; two runs that differ only here
  give the same parameters up to float rounding of reductions (the order in which XLA
  sums partial results), which is below any run-to-run effect the fit can see. A neutral
  field is left out of the fingerprint, so changing it reuses finished runs.

A field without metadata counts as :func:`result` (the safe side: a stale run is
refused, never reused). ``TrainConfig`` classifies every field explicitly, and a test
fails when a new one is added without a classification (:func:`unclassified`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_KEY = "mixjax.fingerprint"


def result(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field whose value can change a run's result (kept in its fingerprint)."""
    return dataclasses.field(default=default, metadata={_KEY: "result"}, **kwargs)


def neutral(default: Any, why: str, **kwargs: Any) -> Any:
    """A speed / memory / logging / I/O field (left out of the fingerprint); ``why`` says why
    it cannot change the numbers (shown by :func:`neutral_fields`)."""
    return dataclasses.field(default=default, metadata={_KEY: "neutral", "why": why}, **kwargs)


def neutral_fields(cls: type) -> dict[str, str]:
    """``{name: why}`` of the neutral fields of a config dataclass."""
    return {f.name: f.metadata["why"] for f in dataclasses.fields(cls) if f.metadata.get(_KEY) == "neutral"}


def unclassified(cls: type) -> list[str]:
    """Fields of ``cls`` declared with neither :func:`result` nor :func:`neutral`."""
    return [f.name for f in dataclasses.fields(cls) if _KEY not in f.metadata]


def result_dict(obj: Any) -> Any:
    """``dataclasses.asdict(obj)`` without the neutral fields, at every level of nesting."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        drop = neutral_fields(type(obj))
        return {f.name: result_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in drop}
    if isinstance(obj, (list, tuple)):
        return type(obj)(result_dict(v) for v in obj)
    if isinstance(obj, dict):
        return {k: result_dict(v) for k, v in obj.items()}
    return obj
