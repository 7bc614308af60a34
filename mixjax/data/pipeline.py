"""grain input pipelines: mixed, shuffled, multi-epoch, packed batches; per-domain eval.

Every batch is a dict of (batch, seq_len) arrays:

- ``inputs``, ``targets``: int32 next-token pairs (targets = inputs shifted by one
  within each example, so no target crosses an example boundary);
- ``weights``: float32 loss weight, 1 on response tokens only, 0 on prompts and padding;
- ``segment_ids``: int32, 1.. per packed example, 0 on padding; attention must stay
  within a segment (the model builds its mask from these);
- ``positions``: int32 position within the example (for RoPE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from mixjax.data.budget import sample_to_budget
from mixjax.data.domain import Domain, Example

FEATURES = ("inputs", "targets", "weights")


def next_token_features(example: Example) -> dict[str, np.ndarray]:
    return {
        "inputs": example.tokens[:-1],
        "targets": example.tokens[1:],
        "weights": example.loss_mask[1:].astype(np.float32),
    }


def mixture_selection(domains: Mapping[str, Domain], budgets: Mapping[str, int], seed: int) -> list[tuple[str, Example]]:
    """The training examples of a mixture, each with its domain: THE selection, used by the
    pipeline's runs and by ``mixjax.mix`` alike. Each domain with a positive budget gives
    exactly its token budget (within one example), chosen by a seeded draw that does not
    depend on the other domains' examples: ``sample_to_budget`` with seed
    ``seed + 7919 * index``, ``index`` the domain's position among the sorted names of the
    domains with a positive budget. Domains in sorted-name order.

    Raises:
      ValueError: ``budgets`` names a domain not in ``domains``.
      BudgetError: a budget exceeds its domain's training tokens.
    """
    unknown = set(budgets) - set(domains)
    if unknown:
        raise ValueError(f"budgets name unknown domains {sorted(unknown)} (have: {sorted(domains)})")
    selected = []
    positive = sorted((n, int(b)) for n, b in budgets.items() if b > 0)
    for index, (name, budget) in enumerate(positive):
        train = domains[name].train
        picks = sample_to_budget([e.num_tokens for e in train], budget, seed + 7919 * index, name)
        selected += [(name, train[i]) for i in picks]
    return selected


def select_mixture(domains: Mapping[str, Domain], budgets: Mapping[str, int], seed: int) -> list[Example]:
    """The examples of :func:`mixture_selection`, without their domain names."""
    return [e for _, e in mixture_selection(domains, budgets, seed)]


def _pack_and_batch(ds: grain.IterDataset, seq_len: int, batch_size: int, seed: int, shuffle: bool) -> grain.IterDataset:
    ds = ds.map(lambda f: {k: v[:seq_len] for k, v in f.items()})  # an example longer than a row is cut to it
    packed = FirstFitPackIterDataset(
        ds,
        length_struct={k: seq_len for k in FEATURES},
        num_packing_bins=batch_size,
        seed=seed,
        shuffle_bins=shuffle,
    )
    return packed.batch(batch_size, drop_remainder=False).map(lambda b: _finish_batch(b, batch_size))


def _finish_batch(packed: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    batch = {
        "inputs": packed["inputs"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "weights": packed["weights"].astype(np.float32),
        "segment_ids": packed["inputs_segment_ids"].astype(np.int32),
        "positions": packed["inputs_positions"].astype(np.int32),
    }
    short = batch_size - batch["inputs"].shape[0]
    if short:  # pad the last batch with empty rows (weight 0) to keep shapes static
        batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    return batch


def training_dataset(
    examples: Sequence[Example],
    *,
    seq_len: int,
    batch_size: int,
    epochs: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Shuffled (a new order each epoch), packed batches over ``epochs`` passes.

    With several processes each takes every ``process_count``-th example of the shuffled
    stream; ``batch_size`` is per process here. The trainer does not use that split: it
    builds the global stream (``optimizer_step_batches``) on every process. The iterator is
    checkpointable (get_state).
    """
    if not examples:
        raise ValueError("the mixture selected no training examples")
    ds = (
        grain.MapDataset.source(list(examples))
        .shuffle(seed=seed)
        .repeat(epochs)
        .slice(slice(process_index, None, process_count))
        .map(next_token_features)
        .to_iter_dataset()
    )
    return _pack_and_batch(ds, seq_len, batch_size, seed, shuffle=True)


def weighted_stream(domains: Mapping[str, Domain], weights: Mapping[str, float], *, seq_len: int, batch_size: int, seed: int) -> grain.IterDataset:
    """An endless stream mixing domains by example weights (grain mix), packed."""
    names = sorted(weights)
    parts = [grain.MapDataset.source(list(domains[n].train)).shuffle(seed=seed + i).repeat() for i, n in enumerate(names)]
    mixed = grain.MapDataset.mix(parts, [weights[n] for n in names]).map(next_token_features)
    return _pack_and_batch(mixed.to_iter_dataset(), seq_len, batch_size, seed, shuffle=True)


def eval_batches(examples: Sequence[Example], *, seq_len: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Deterministic packed batches covering every validation token once."""
    ds = grain.MapDataset.source(list(examples)).map(next_token_features).to_iter_dataset()
    return list(_pack_and_batch(ds, seq_len, batch_size, seed=0, shuffle=False))


def multi_domain_eval_batches(
    val_sets: Mapping[str, Sequence[Example]], *, seq_len: int, batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Every domain's packed validation rows in one list of batches, each row tagged with
    its domain's index (``domain``, (B,) int32, in ``val_sets`` order): one compiled eval
    call per batch covers all domains. Padding rows carry weight 0."""
    rows: list[dict[str, np.ndarray]] = []
    for index, examples in enumerate(val_sets.values()):
        for batch in eval_batches(examples, seq_len=seq_len, batch_size=batch_size):
            keep = batch["segment_ids"].any(axis=1)
            rows.append(dict({k: v[keep] for k, v in batch.items()}, domain=np.full(int(keep.sum()), index, np.int32)))
    if not rows:
        return []
    flat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    n = len(flat["domain"])
    out = []
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in flat.items()}
        short = batch_size - len(batch["domain"])
        if short:
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        out.append(batch)
    return out


def trained_positions(examples: Sequence[Example], seq_len: int | None = None) -> int:
    """Next-token positions an epoch over ``examples`` trains: sum of (num_tokens - 1), each
    at most ``seq_len`` (longer examples are cut to one packed row)."""
    cap = seq_len if seq_len is not None else float("inf")
    return int(sum(min(e.num_tokens - 1, cap) for e in examples))


def optimizer_step_batches(
    examples: Sequence[Example], *, seq_len: int, batch_size: int, grad_accum: int, epochs: int, seed: int, prefetch: int = 2
) -> grain.IterDataset:
    """The GLOBAL training stream of optimizer steps: each element stacks ``grad_accum``
    packed (batch_size, seq_len) micro-batches into (grad_accum, batch_size, seq_len) arrays.
    Every process builds this same stream (and puts its own rows on its devices), so all
    processes run the same steps. A background thread packs ``prefetch`` steps ahead; the
    iterator's state (get_state/set_state) is the position of the steps consumed."""
    ds = training_dataset(examples, seq_len=seq_len, batch_size=batch_size, epochs=epochs, seed=seed)
    ds = ds.batch(grad_accum, drop_remainder=True)
    if prefetch:
        from grain.experimental import ThreadPrefetchIterDataset

        ds = ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return ds

