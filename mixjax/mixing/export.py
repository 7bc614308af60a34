"""The optimal weights in the form other training tools take.

- ``levanter``: ``data.train_weights`` (LMMixtureDatasetConfig), YAML;
- ``maxtext``: ``grain_train_files`` as ``"path,weight;path,weight"`` (grain mixtures), YAML;
- ``llama-factory``: ``dataset`` + ``mix_strategy: interleave_under`` + ``interleave_probs``, YAML;
- ``hf-datasets``: the keyword arguments of ``datasets.interleave_datasets``
  (``probabilities``, ``seed``, ``stopping_strategy``), JSON;
- ``json``: ``{budget: {domain: weight}}``.

YAML is written by hand (flat mappings of names and numbers), so no YAML library is
needed; several budgets give several YAML documents (``---``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

FORMATS = ("levanter", "maxtext", "llama-factory", "hf-datasets", "json")


def _round(weights, digits: int = 6) -> list[float]:
    """Rounded weights that still sum to 1 (the rounding error goes to the largest)."""
    w = np.round(np.asarray(weights, np.float64), digits)
    w[int(np.argmax(w))] += round(1.0 - float(w.sum()), digits)
    return [round(float(v), digits) for v in w]


def _quote(name: str) -> str:
    return json.dumps(str(name))  # a JSON string is a valid YAML scalar


def _yaml_doc(fmt: str, domains: Sequence[str], weights: list[float], budget: float) -> str:
    head = f"# mixjax optimal weights at N={budget:g}\n"
    if fmt == "levanter":
        body = "data:\n  train_weights:\n" + "".join(f"    {_quote(d)}: {w!r}\n" for d, w in zip(domains, weights))
    elif fmt == "maxtext":
        spec = ";".join(f"{d},{w!r}" for d, w in zip(domains, weights))
        body = f"# replace each domain name by its ArrayRecord file pattern\ngrain_train_files: {_quote(spec)}\n"
    else:  # llama-factory
        body = (
            f"dataset: {_quote(','.join(domains))}\nmix_strategy: interleave_under\n"
            f"interleave_probs: {_quote(','.join(repr(w) for w in weights))}\n"
        )
    return head + body


def export_weights(fmt: str, domains: Sequence[str], weights: Mapping[float, Sequence[float]], seed: int = 0) -> str:
    """Render ``{budget: weights}`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rounded = {float(b): _round(w) for b, w in weights.items()}
    if fmt == "json":
        return json.dumps({f"{b:g}": dict(zip(domains, w)) for b, w in rounded.items()}, indent=2)
    if fmt == "hf-datasets":
        kwargs = lambda w: {"probabilities": w, "seed": seed, "stopping_strategy": "all_exhausted", "datasets": list(domains)}
        if len(rounded) == 1:
            return json.dumps(kwargs(next(iter(rounded.values()))), indent=2)
        return json.dumps({f"{b:g}": kwargs(w) for b, w in rounded.items()}, indent=2)
    return "---\n".join(_yaml_doc(fmt, domains, w, b) for b, w in rounded.items())
