"""Throughput of the grain training pipeline on CPU: packed tokens/s and packing efficiency,
next to a reference that pads each example to its own row (no packing), same data, same run.

    python benchmarks/data_pipeline.py [--seq-len 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import grain
import numpy as np

from mixjax.data.budget import token_budgets
from mixjax.data.domain import DomainSpec, load_domains
from mixjax.data.pipeline import next_token_features, select_mixture, training_dataset
from mixjax.data.tokenizer import ByteTokenizer


def padded_reference(examples, seq_len: int, batch_size: int, seed: int):
    """One example per row, padded: what you get without packing."""

    def pad(features):
        n = min(len(features["inputs"]), seq_len)
        return {k: np.pad(v[:n], (0, seq_len - n)) for k, v in features.items()} | {"segment_ids": np.pad(np.ones(n, np.int32), (0, seq_len - n))}

    return grain.MapDataset.source(list(examples)).shuffle(seed=seed).map(next_token_features).map(pad).batch(batch_size)


def measure(batches) -> tuple[float, int, int, float]:
    start = time.perf_counter()
    real = slots = count = 0
    for batch in batches:
        real += int((batch["segment_ids"] > 0).sum())
        slots += batch["segment_ids"].size
        count += 1
    return time.perf_counter() - start, real, slots, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=20000, help="per domain")
    args = parser.parse_args()
    names = ("instruct", "math", "code")
    t0 = time.perf_counter()
    domains = load_domains([DomainSpec(n, (f"synthetic:{n}:{args.examples}",)) for n in names], ByteTokenizer(), args.seq_len + 1)
    budget = int(0.9 * min(d.train_tokens for d in domains.values()) * len(names))
    examples = select_mixture(domains, token_budgets([0.4, 0.3, 0.3], budget, names), seed=0)
    print(f"loaded + tokenised {sum(len(d.train) for d in domains.values()):,} examples in {time.perf_counter() - t0:.1f}s;"
          f" mixture: {len(examples):,} examples, {sum(e.num_tokens for e in examples):,} tokens")
    print(f"{'pipeline':<34} {'tokens/s':>12} {'batches/s':>10} {'non-pad':>8}")
    rows = {
        "mixjax packed (grain FirstFit)": training_dataset(examples, seq_len=args.seq_len, batch_size=args.batch_size, epochs=1, seed=0),
        "reference: pad each example": padded_reference(examples, args.seq_len, args.batch_size, 0),
    }
    for label, batches in rows.items():
        seconds, real, slots, count = measure(batches)
        print(f"{label:<34} {real / seconds:12,.0f} {count / seconds:10.1f} {real / slots:8.1%}")


if __name__ == "__main__":
    main()
