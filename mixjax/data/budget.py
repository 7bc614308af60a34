"""Token-budget sampling: give a domain exactly its share ``w_i * N`` of tokens."""

from __future__ import annotations

import numpy as np


class BudgetError(ValueError):
    """A budget a domain cannot supply."""


def sample_to_budget(num_tokens, budget: int, seed: int, name: str = "domain") -> np.ndarray:
    """Indices of a seeded random subset of examples whose tokens total ``budget``
    within one example (the prefix of a permutation that ends closest to the budget)."""
    num_tokens = np.asarray(num_tokens, np.int64)
    total = int(num_tokens.sum())
    if budget < 0:
        raise BudgetError(f"domain {name}: negative budget {budget}")
    if budget > total:
        raise BudgetError(
            f"domain {name}: budget of {budget:,} tokens exceeds the {total:,} available ({len(num_tokens):,} examples)"
        )
    order = np.random.default_rng(seed).permutation(len(num_tokens))
    cumulative = np.concatenate([[0], np.cumsum(num_tokens[order])])
    after = int(np.searchsorted(cumulative, budget))  # first prefix length reaching the budget
    before = max(after - 1, 0)
    take = after if cumulative[after] - budget <= budget - cumulative[before] else before
    return order[:take]


def token_budgets(weights, total_tokens: int, names) -> dict[str, int]:
    """Integer per-domain budgets that sum to ``total_tokens`` (largest remainder rounding)."""
    weights = np.asarray(weights, np.float64)
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, atol=1e-6):
        raise BudgetError(f"weights must be non-negative and sum to 1, got {weights.tolist()}")
    raw = weights / weights.sum() * total_tokens
    budgets = np.floor(raw).astype(np.int64)
    budgets[np.argsort(raw - budgets)[::-1][: total_tokens - budgets.sum()]] += 1
    return dict(zip(names, budgets.tolist()))
