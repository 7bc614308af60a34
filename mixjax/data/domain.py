"""Domains: named collections of SFT examples with a fixed, disjoint validation set.

A source is a file path (.jsonl/.json/.parquet), ``synthetic:<name>[:<count>]`` (the
embedded domains) or ``tfds:<name>[/<config>]:<split>`` (tensorflow-datasets from a local
``data_dir``; never downloads). Examples are tokenised with the chat template; the
validation set is the ``val_examples`` distinct examples with the smallest content hash, and any
training example with the same content as a validation example of ANY domain is dropped
(``load_domains``), so training and validation are disjoint across domains, whatever the
order of the sources. Unusable records are skipped and reported (``Domain.skipped``,
``DomainSpec.max_bad_fraction``); a domain whose training or validation examples all lose
their answer to truncation is a DataError (nothing could be measured). Every data error
names the domain, and the file and line where one record is at fault.
``encode_documents`` turns plain-text documents (pretraining) into examples whose loss
mask is all ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from mixjax.config_fields import neutral
from mixjax.data import synthetic
from mixjax.data.chat_template import ConversationTemplateError
from mixjax.data.formats import AnyConversation, DataError, Record, RecordError, check_bad_fraction, parse_record, read_records
from mixjax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    name: str
    sources: tuple[str, ...]
    val_examples: int = 128
    # Records that cannot be used (bad JSON, unknown format, no assistant turn, refused by the
    # chat template) are skipped and reported as file:line: reason, up to this fraction of
    # the domain's records; beyond it loading the domain is a DataError listing the first few.
    max_bad_fraction: float = neutral(0.01, "decides only whether loading stops; the examples kept are the same")
    tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class TargetSpec(DomainSpec):
    """A validation set no run trains on (a held-out benchmark, a downstream task, a source
    that is not a training domain), in any format a domain takes: its ``val_examples``
    examples are evaluated in every run and held out of every domain's training data like
    the domains' validation sets; the fit gives it a law of the domains' tokens and the
    objective may weigh it (:mod:`mixjax.mixing.objective`)."""


@dataclasses.dataclass(frozen=True)
class Example:
    tokens: np.ndarray  # int32 (n,)
    loss_mask: np.ndarray  # int32 (n,), 1 where the token is a training target

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def examples_hash(examples: Sequence[Example]) -> str:
    """sha256 hex digest of the examples' tokens and loss masks, in order: for each example
    its length (int64), tokens (int32) and loss mask (int32). The run fingerprint's
    ``examples`` field and a run's ``trained_examples_hash`` (result.json)."""
    digest = hashlib.sha256()
    for e in examples:
        tokens, mask = np.asarray(e.tokens, np.int32), np.asarray(e.loss_mask, np.int32)
        digest.update(np.int64(tokens.size).tobytes() + tokens.tobytes() + mask.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    skipped: tuple[str, ...] = ()  # records that could not be used, as "file:line: reason"

    @property
    def train_tokens(self) -> int:
        return sum(e.num_tokens for e in self.train)

    @property
    def tokens_per_example(self) -> float:
        """Mean tokens per training example (what an example-level export converts by:
        :func:`mixjax.mixing.export.example_probabilities`)."""
        return self.train_tokens / len(self.train)


def _records(source: str, spec: DomainSpec) -> tuple[list[Record], list[str], int]:
    """(records, malformed ``where: reason``, total records) of one source."""
    if source.startswith("synthetic:"):
        _, name, *count = source.split(":")
        conversations = synthetic.generate(name, int(count[0]) if count else 4096)
        return [Record(c, source, f"{source}#{i}") for i, c in enumerate(conversations, start=1)], [], len(conversations)
    if source.startswith("tfds:"):
        return _tfds_records(source.removeprefix("tfds:"), spec.tfds_data_dir)
    records, report = read_records(source)
    return records, list(report.bad), report.total


def _tfds_records(source: str, data_dir: str | None) -> tuple[list[Record], list[str], int]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError("tfds sources need tensorflow-datasets (pip install mixjax[tfds])") from err

    name, _, split = source.partition(":")
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split or "train")
    decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
    records, bad, total = [], [], 0
    for row, ex in enumerate(tfds.as_numpy(ds), start=1):
        total += 1
        try:
            records.append(Record(parse_record({k: decode(v) for k, v in ex.items()}), f"tfds:{source}", f"tfds:{source}#{row}"))
        except RecordError as err:
            bad.append(f"tfds:{source}#{row}: {err}")
    return records, bad, total


def content_hash(conversation: AnyConversation) -> str:
    return hashlib.sha256(repr(conversation).encode("utf-8")).hexdigest()


def _encode(tokenizer: Tokenizer, conversations: Sequence[AnyConversation]) -> list[tuple[np.ndarray, np.ndarray] | str]:
    """Untruncated (ids, mask) of each conversation, or the reason it cannot be encoded (the
    template refuses it, or cannot place its assistant turns). One batch when all encode."""
    try:
        return list(tokenizer.encode_conversations(conversations, None))
    except ConversationTemplateError:
        pass
    out: list[tuple[np.ndarray, np.ndarray] | str] = []
    for c in conversations:
        try:
            out.append(tokenizer.encode_conversation(c, None))
        except ConversationTemplateError as err:
            out.append(str(err))
    return out


@dataclasses.dataclass(frozen=True)
class _Split:
    """A domain's usable records, their untruncated encodings and content hashes, its
    validation indices and the records it skipped (``where: reason``)."""

    records: list[Record]
    encoded: list[tuple[np.ndarray, np.ndarray]]
    hashes: list[str]
    val_ids: np.ndarray
    skipped: tuple[str, ...]


def _split(spec: DomainSpec, tokenizer: Tokenizer) -> _Split:
    """Read, parse and encode every record of the domain's sources; a record that cannot be
    used (bad JSON, unknown format, no assistant turn, refused by the chat template, nothing
    to train once rendered) is skipped and reported as ``where: reason``; beyond
    ``spec.max_bad_fraction`` of the domain's records the domain is a DataError."""
    records, bad, total = [], [], 0
    for source in spec.sources:
        try:
            got, malformed, count = _records(source, spec)
        except DataError as err:
            raise DataError(f"domain {spec.name}: {err}") from None
        records += got
        bad += malformed
        total += count
    if not total:
        raise DataError(f"domain {spec.name}: its sources {list(spec.sources)} hold no examples")
    try:
        encodings = _encode(tokenizer, [r.conversation for r in records])
    except DataError as err:  # the tokenizer itself (no chat template, one that does not parse)
        raise DataError(f"domain {spec.name}: {err}") from None
    usable, encoded = [], []
    for record, enc in zip(records, encodings):
        if isinstance(enc, str):
            bad.append(f"{record.where}: {enc}")
        elif not enc[1].any():
            bad.append(f"{record.where}: nothing to train: the chat template renders no assistant content")
        else:
            usable.append(record)
            encoded.append(enc)
    check_bad_fraction(bad, total, spec.max_bad_fraction, f"domain {spec.name}")
    if not usable:
        raise DataError(f"domain {spec.name}: no usable records in {list(spec.sources)}")
    hashes = [content_hash(r.conversation) for r in usable]
    order = np.argsort(hashes, kind="stable")
    # One copy per content: a source that repeats a conversation must not fill the validation
    # set with copies of a few (their training copies are dropped by _build either way).
    first = order[np.r_[True, np.asarray(hashes)[order[1:]] != np.asarray(hashes)[order[:-1]]]]
    return _Split(usable, encoded, hashes, first[: spec.val_examples], tuple(bad))


def _first_trained(mask: np.ndarray) -> int:
    """Index of the first trained token (the row must hold it: train.seq_len >= this)."""
    return int(np.argmax(mask != 0))


def _check_answers(spec: DomainSpec, split: _Split, train_ids: Sequence[int], val_ids: Sequence[int], max_len: int) -> None:
    """DataError when the training or the validation examples of the domain have no trained
    token left once cut to ``max_len`` tokens (nothing could be measured: a loss over zero
    tokens); a warning when only some do. Both name the files, the count and the
    ``train.seq_len`` (= max_len - 1) that keeps a trained token in every example."""
    lost = {part: [i for i in ids if _first_trained(split.encoded[i][1]) >= max_len] for part, ids in (("training", train_ids), ("validation", val_ids))}
    every = [i for ids in lost.values() for i in ids]
    if not every:
        return
    files = sorted({split.records[i].source for i in every})
    need = max(_first_trained(split.encoded[i][1]) for i in every)
    counts = ", ".join(f"{len(lost[part])} of {len(ids)} {part} examples" for part, ids in (("training", train_ids), ("validation", val_ids)))
    message = (
        f"domain {spec.name} ({', '.join(files)}): {counts} lost their answer: the chat template and prompt fill"
        f" the {max_len} tokens of a row (train.seq_len={max_len - 1}), first at {split.records[every[0]].where};"
        f" train.seq_len >= {need} keeps a trained token in every example"
    )
    if any(len(lost[part]) == len(ids) for part, ids in (("training", train_ids), ("validation", val_ids))):
        raise DataError(message + " (a loss over no trained token is undefined)")
    warnings.warn(message, stacklevel=4)


def _build(spec: DomainSpec, split: _Split, held_out: set[str], max_len: int) -> Domain:
    """The domain with every conversation whose content is in ``held_out`` dropped from training."""
    train_ids = [i for i, h in enumerate(split.hashes) if h not in held_out]
    if not train_ids:
        raise DataError(f"domain {spec.name}: no training examples left after holding out {spec.val_examples} for validation")
    val_ids = sorted(split.val_ids.tolist())
    if not val_ids:
        raise DataError(
            f"domain {spec.name}: no validation examples (val_examples={spec.val_examples}): its loss could not be"
            " measured; set val_examples >= 1"
        )
    _check_answers(spec, split, train_ids, val_ids, max_len)
    example = lambda i: _cut_example(split, i, max_len)
    return Domain(spec.name, tuple(map(example, train_ids)), tuple(map(example, val_ids)), split.skipped)


def _cut_example(split: _Split, i: int, max_len: int) -> Example:
    """Encoded record ``i`` as an Example of at most ``max_len`` tokens (a copy when cut:
    the full encoding is let go)."""
    cut = lambda a: a[:max_len].copy() if len(a) > max_len else a
    return Example(cut(split.encoded[i][0]), cut(split.encoded[i][1]))


def load_domain(spec: DomainSpec, tokenizer: Tokenizer, max_len: int) -> Domain:
    """One domain on its own (validation deduplicated against its own training data only)."""
    split = _split(spec, tokenizer)
    return _build(spec, split, {split.hashes[i] for i in split.val_ids}, max_len)


def load_domains(specs: Sequence[DomainSpec], tokenizer: Tokenizer, max_len: int,
                 targets: Sequence[TargetSpec] = ()) -> dict[str, Domain]:
    """All domains, then the targets (a :class:`Domain` with no training examples); a
    conversation in ANY domain's or target's validation set is dropped from EVERY domain's
    training data, so no validation loss is measured on a trained example.

    Raises:
      DataError: a repeated name, a domain left without training or validation examples, a
        target without validation examples.
    """
    names = [s.name for s in (*specs, *targets)]
    if len(set(names)) != len(names):
        raise DataError(f"duplicate domain or target names: {names}")
    splits = [_split(s, tokenizer) for s in (*specs, *targets)]
    held_out = {split.hashes[i] for split in splits for i in split.val_ids}
    domains = {s.name: _build(s, split, held_out, max_len) for s, split in zip(specs, splits)}
    return domains | {t.name: _build_target(t, split, max_len) for t, split in zip(targets, splits[len(specs):])}


def _build_target(spec: TargetSpec, split: _Split, max_len: int) -> Domain:
    """A target: its validation examples only (cut to ``max_len`` tokens)."""
    val = [i for i in sorted(split.val_ids.tolist()) if _first_trained(split.encoded[i][1]) < max_len]
    if not val:
        raise DataError(f"target {spec.name}: no validation example keeps an answer within {max_len} tokens (train.seq_len={max_len - 1})")
    return Domain(spec.name, (), tuple(_cut_example(split, i, max_len) for i in val), split.skipped)


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
