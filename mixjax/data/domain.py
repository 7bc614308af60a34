"""Domains: named collections of SFT examples with a fixed, disjoint validation set.

A source is a file path (.jsonl/.json/.parquet), ``synthetic:<name>[:<count>]`` (the
embedded domains) or ``tfds:<name>[/<config>]:<split>`` (tensorflow-datasets from a local
``data_dir``; never downloads). Examples are tokenised with the chat template; the
validation set is the ``val_examples`` distinct examples with the smallest content hash, and any
training example with the same content as a validation example of ANY domain is dropped
(``load_domains``), so training and validation are disjoint across domains, whatever the
order of the sources. ``encode_documents`` turns plain-text documents (pretraining) into
examples whose loss mask is all ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from mixjax.data import synthetic
from mixjax.data.formats import Conversation, DataError, read_conversations
from mixjax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    name: str
    sources: tuple[str, ...]
    val_examples: int = 128
    max_bad_fraction: float = 0.01
    tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Example:
    tokens: np.ndarray  # int32 (n,)
    loss_mask: np.ndarray  # int32 (n,), 1 where the token is a training target

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    train: tuple[Example, ...]
    val: tuple[Example, ...]

    @property
    def train_tokens(self) -> int:
        return sum(e.num_tokens for e in self.train)


def _conversations(source: str, spec: DomainSpec) -> list[Conversation]:
    if source.startswith("synthetic:"):
        _, name, *count = source.split(":")
        return synthetic.generate(name, int(count[0]) if count else 4096)
    if source.startswith("tfds:"):
        return _tfds_conversations(source.removeprefix("tfds:"), spec.tfds_data_dir)
    return read_conversations(source, spec.max_bad_fraction)[0]


def _tfds_conversations(source: str, data_dir: str | None) -> list[Conversation]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError("tfds sources need tensorflow-datasets (pip install mixjax[tfds])") from err
    from mixjax.data.formats import parse_record

    name, _, split = source.partition(":")
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split or "train")
    decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
    return [parse_record({k: decode(v) for k, v in ex.items()}) for ex in tfds.as_numpy(ds)]


def content_hash(conversation: Conversation) -> str:
    return hashlib.sha256(repr(conversation).encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Split:
    """A domain's conversations, their content hashes and its validation indices."""

    conversations: list[Conversation]
    hashes: list[str]
    val_ids: np.ndarray


def _split(spec: DomainSpec) -> _Split:
    conversations = [c for source in spec.sources for c in _conversations(source, spec)]
    if not conversations:
        raise DataError(f"domain {spec.name}: its sources {list(spec.sources)} hold no examples")
    hashes = [content_hash(c) for c in conversations]
    order = np.argsort(hashes, kind="stable")
    # One copy per content: a source that repeats a conversation must not fill the validation
    # set with copies of a few (their training copies are dropped by _build either way).
    first = order[np.r_[True, np.asarray(hashes)[order[1:]] != np.asarray(hashes)[order[:-1]]]]
    return _Split(conversations, hashes, first[: spec.val_examples])


def _build(spec: DomainSpec, split: _Split, held_out: set[str], tokenizer: Tokenizer, max_len: int) -> Domain:
    """The domain with every conversation whose content is in ``held_out`` dropped from training."""
    train_ids = [i for i, h in enumerate(split.hashes) if h not in held_out]
    if not train_ids:
        raise DataError(f"domain {spec.name}: no training examples left after holding out {spec.val_examples} for validation")
    encode = lambda ids: tuple(Example(*e) for e in tokenizer.encode_conversations([split.conversations[i] for i in ids], max_len))
    domain = Domain(spec.name, encode(train_ids), encode(sorted(split.val_ids)))
    untrained = sum(not e.loss_mask.any() for e in domain.train + domain.val)
    if untrained:
        warnings.warn(
            f"domain {spec.name}: {untrained} of {len(domain.train) + len(domain.val)} examples have no trained token"
            f" within {max_len} tokens (the chat template's header and the prompt fill them); raise seq_len",
            stacklevel=3,
        )
    return domain


def load_domain(spec: DomainSpec, tokenizer: Tokenizer, max_len: int) -> Domain:
    """One domain on its own (validation deduplicated against its own training data only)."""
    split = _split(spec)
    return _build(spec, split, {split.hashes[i] for i in split.val_ids}, tokenizer, max_len)


def load_domains(specs: Sequence[DomainSpec], tokenizer: Tokenizer, max_len: int) -> dict[str, Domain]:
    """All domains; a conversation in ANY domain's validation set is dropped from EVERY domain's
    training data, so no validation loss is measured on a trained example."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"duplicate domain names: {names}")
    splits = [_split(s) for s in specs]
    held_out = {split.hashes[i] for split in splits for i in split.val_ids}
    return {s.name: _build(s, split, held_out, tokenizer, max_len) for s, split in zip(specs, splits)}


def encode_documents(tokenizer: Tokenizer, texts: Iterable[str], max_len: int) -> list[Example]:
    """Plain-text documents as pretraining examples: ``[bos] + encode(text) + [eos]`` (each where
    the tokenizer has one), cut into pieces of at most ``max_len`` tokens, loss mask all ones."""
    bos, eos = ([i] if i is not None else [] for i in (tokenizer.bos_id, tokenizer.eos_id))
    examples = []
    for text in texts:
        ids = np.asarray(bos + tokenizer.encode(text) + eos, np.int32)
        for start in range(0, len(ids), max_len):
            piece = ids[start : start + max_len]
            if len(piece) >= 2:  # a single token has no next-token target
                examples.append(Example(piece, np.ones_like(piece)))
    return examples
