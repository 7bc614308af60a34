"""Domains: named collections of SFT examples with a fixed, disjoint validation set.

A source is a file path (.jsonl/.json/.parquet), ``synthetic:<name>[:<count>]`` (the
embedded domains) or ``tfds:<name>[/<config>]:<split>`` (tensorflow-datasets from a local
``data_dir``; never downloads). Examples are tokenised with the chat template; the
validation set is the ``val_examples`` examples with the smallest content hash, and any
training example with the same content is dropped, so train and validation are disjoint
whatever the order of the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from mixjax.data import synthetic
from mixjax.data.formats import Conversation, DataError, read_conversations
from mixjax.data.tokenizer import Tokenizer, encode_conversation


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


def load_domain(spec: DomainSpec, tokenizer: Tokenizer, max_len: int) -> Domain:
    conversations = [c for source in spec.sources for c in _conversations(source, spec)]
    if not conversations:
        raise DataError(f"domain {spec.name}: its sources {list(spec.sources)} hold no examples")
    hashes = [content_hash(c) for c in conversations]
    order = np.argsort(hashes, kind="stable")
    val_ids = order[: spec.val_examples]
    val_hashes = {hashes[i] for i in val_ids}
    train_ids = [i for i in range(len(conversations)) if hashes[i] not in val_hashes]
    if not train_ids:
        raise DataError(f"domain {spec.name}: no training examples left after holding out {spec.val_examples} for validation")
    encode = lambda i: Example(*encode_conversation(tokenizer, conversations[i], max_len))
    return Domain(spec.name, tuple(encode(i) for i in train_ids), tuple(encode(i) for i in sorted(val_ids)))


def load_domains(specs: Sequence[DomainSpec], tokenizer: Tokenizer, max_len: int) -> dict[str, Domain]:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"duplicate domain names: {names}")
    return {s.name: load_domain(s, tokenizer, max_len) for s in specs}
