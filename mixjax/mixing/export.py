"""The optimal weights in the form other training tools take, in the unit each one samples.

mixjax's weights are token shares: domain i gives ``w_i N`` of the N trained tokens. A tool
that samples *examples* (documents, conversations) by probability ``p_i`` trains the token
shares ``p_i t_i / sum_j p_j t_j``, with ``t_i`` the mean tokens per example of domain i, so
its probabilities are the token shares converted (:func:`example_probabilities`)::

    p_i = (w_i / t_i) / sum_j (w_j / t_j)

Each format, its sampling unit (:data:`SAMPLING_UNIT`) and what it is given:

- ``levanter``: ``data.train_weights`` (LMMixtureDatasetConfig), YAML; samples packed
  sequences of ``seq_len`` tokens, so it is given the token shares;
- ``maxtext``: ``grain_train_files`` as ``"path,weight;path,weight"``, YAML; grain mixes
  records (examples) before packing: example probabilities;
- ``llama-factory``: ``dataset`` + ``mix_strategy: interleave_under`` + ``interleave_probs``,
  YAML; ``datasets.interleave_datasets`` samples examples: example probabilities;
- ``hf-datasets``: the keyword arguments of ``datasets.interleave_datasets``
  (``probabilities``, ``seed``, ``stopping_strategy``, ``datasets``: the names, in order),
  JSON, plus a ``mixjax`` entry to pop before the call (the unit, the token shares, the
  tokens per example used); example probabilities;
- ``json``: ``{budget: {domain: weight}}``, the token shares themselves.

An example-level export needs the mean tokens per example of every domain (``python -m
mixjax.fit --tokens-per-example D=T ...``) and is refused without them. YAML is written by
hand (flat mappings of names and numbers), so no YAML library is needed; several budgets give
several YAML documents (``---``); every YAML document states its unit in a comment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from mixjax.cli import per_domain_values

FORMATS = ("levanter", "maxtext", "llama-factory", "hf-datasets", "json")
SAMPLING_UNIT = {"levanter": "tokens", "maxtext": "examples", "llama-factory": "examples", "hf-datasets": "examples", "json": "tokens"}


def example_probabilities(token_shares: Sequence[float], tokens_per_example: Sequence[float]) -> np.ndarray:
    """Example-sampling probabilities that train the given token shares.

    Args:
      token_shares: (k,) weights, each >= 0, summing to 1 (mixjax's unit).
      tokens_per_example: (k,) mean tokens per example of each domain, > 0 (any one unit).
    Returns:
      (k,) float64 ``(w / t) / sum(w / t)``: sampling examples with these probabilities gives
      the token shares in expectation.
    Raises:
      ValueError: a mean that is not finite and positive.
    """
    w, t = np.asarray(token_shares, np.float64), np.asarray(tokens_per_example, np.float64)
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"tokens per example must be finite and > 0, got {t.tolist()}")
    p = w / t
    return p / p.sum()


def _missing_means(fmt: str, domains: Sequence[str]) -> str:
    return (
        f"--export {fmt} samples examples, not tokens: give the mean tokens per example of every domain,"
        f" --tokens-per-example {' '.join(f'{d}=T' for d in domains)} (the mean length of its examples in the"
        " model's tokens, e.g. from mixjax.mix's input_ids), to convert mixjax's token shares"
    )


def export_tokens_per_example(fmt: str | None, domains: Sequence[str], items: Sequence[str] | None) -> dict[str, float] | None:
    """The ``--tokens-per-example D=T`` values of a CLI ({domain: mean tokens}), None when
    not given and the export does not need them.

    Raises:
      ValueError: one line saying how: an example-level export without them, a domain left
        out, a value that is not a finite number > 0.
    """
    if not items and fmt is not None and SAMPLING_UNIT.get(fmt) == "examples":
        raise ValueError(_missing_means(fmt, domains))
    return per_domain_values(items, domains, "--tokens-per-example", required=True) if items else None


def _round(weights, digits: int = 6) -> list[float]:
    """Rounded weights that still sum to 1 (the rounding error goes to the largest)."""
    w = np.round(np.asarray(weights, np.float64), digits)
    w[int(np.argmax(w))] += round(1.0 - float(w.sum()), digits)
    return [round(float(v), digits) for v in w]


def _quote(name: str) -> str:
    return json.dumps(str(name))  # a JSON string is a valid YAML scalar


def _unit_comment(fmt: str, domains: Sequence[str], per_example: Mapping[str, float] | None) -> str:
    if SAMPLING_UNIT[fmt] == "tokens":
        return "# sampling unit: tokens (packed sequences); the weights are mixjax's token shares\n"
    means = ", ".join(f"{d}={per_example[d]:g}" for d in domains)
    return f"# sampling unit: examples; probabilities = token share / mean tokens per example ({means}), renormalised\n"


def _yaml_doc(fmt: str, domains: Sequence[str], weights: list[float], budget: float, per_example) -> str:
    head = f"# mixjax optimal weights at N={budget:g}\n" + _unit_comment(fmt, domains, per_example)
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


def export_weights(
    fmt: str, domains: Sequence[str], weights: Mapping[float, Sequence[float]], seed: int = 0,
    tokens_per_example: Mapping[str, float] | None = None,
) -> str:
    """Render ``{budget: token shares}`` in ``fmt`` (one of :data:`FORMATS`), converted into
    the format's sampling unit (module docstring).

    Args:
      tokens_per_example: {domain: mean tokens per example}; required by the example-level
        formats (maxtext, llama-factory, hf-datasets), unused by the others.
    Raises:
      ValueError: an unknown format, or an example-level one without ``tokens_per_example``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    examples = SAMPLING_UNIT[fmt] == "examples"
    if examples and (tokens_per_example is None or any(d not in tokens_per_example for d in domains)):
        raise ValueError(_missing_means(fmt, domains))
    means = [tokens_per_example[d] for d in domains] if examples else None
    convert = (lambda w: example_probabilities(w, means)) if examples else (lambda w: w)
    rounded = {float(b): _round(convert(w)) for b, w in weights.items()}
    if fmt == "json":
        return json.dumps({f"{b:g}": dict(zip(domains, w)) for b, w in rounded.items()}, indent=2)
    if fmt == "hf-datasets":
        shares = {float(b): _round(w) for b, w in weights.items()}
        note = lambda b: {"sampling_unit": "examples", "token_shares": shares[b], "tokens_per_example": dict(tokens_per_example)}
        kwargs = lambda b, w: {"probabilities": w, "seed": seed, "stopping_strategy": "all_exhausted", "datasets": list(domains), "mixjax": note(b)}
        if len(rounded) == 1:
            return json.dumps(kwargs(*next(iter(rounded.items()))), indent=2)
        return json.dumps({f"{b:g}": kwargs(b, w) for b, w in rounded.items()}, indent=2)
    return "---\n".join(_yaml_doc(fmt, domains, w, b, tokens_per_example) for b, w in rounded.items())
