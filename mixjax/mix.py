"""Write the optimised mixture itself: a seeded JSONL of training examples for any trainer.

    python -m mixjax.mix --config configs/demo.py --budget 200000 --out mixed.jsonl
        [--weights instruct=0.6 math=0.4 | --fit experiments/demo/fit.json] [--seed 0]

Weights: ``--weights`` as given, else the optimum at ``--budget`` of the experiment's
fitted law (``--fit``, default ``<workdir>/<name>/fit.json``) under the config's
constraints. Each domain gets ``round(w_i N)`` tokens (largest-remainder rounding) of
its training split, drawn by a seeded permutation, exact within one example; the rows
are shuffled together (seeded). One JSON object per line: ``domain``, ``input_ids``,
``loss_mask``, ``text`` (the decoded tokens, template included). Deterministic: the same
config, weights, budget and seed give the same file. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mixjax.io import atomic_path


def _parse_weights(items: list[str], names: tuple[str, ...]) -> np.ndarray:
    given = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names:
            raise ValueError(f"--weights: unknown domain {name!r} (domains: {', '.join(names)})")
        given[name] = float(value)
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"--weights: missing domains {', '.join(missing)}")
    w = np.array([given[n] for n in names], np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"--weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def optimal_weights(fit_path: Path, budget: float, names, constraints) -> np.ndarray:
    from mixjax.mixing.fit import FitResult
    from mixjax.mixing.solve import solve_sweep

    if not fit_path.exists():
        raise ValueError(f"{fit_path}: no fit.json (run the fit stage, or give --weights)")
    fit = FitResult.from_dict(json.loads(fit_path.read_text()))
    if tuple(fit.domains) != tuple(names):
        raise ValueError(f"{fit_path}: domains {list(fit.domains)} differ from the config's {list(names)}")
    return solve_sweep(fit.params, [budget], constraints, names)[0]


def mixture_rows(domains: dict, names, weights, budget: int, seed: int) -> list[dict]:
    """The rows of the mixed file (see the module docstring); pure given its inputs."""
    from mixjax.data.budget import sample_to_budget, token_budgets

    budgets = token_budgets(weights, int(budget), names)
    rows = []
    for i, name in enumerate(names):
        examples = domains[name].train
        picked = sample_to_budget([e.num_tokens for e in examples], budgets[name], seed + i, name)
        rows += [(name, examples[j]) for j in picked]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[j] for j in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixjax.mix", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--budget", required=True, type=int, help="total tokens N")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", nargs="*", metavar="D=W", help="weights to use instead of the fitted optimum")
    p.add_argument("--fit", help="fit.json to solve (default: the experiment's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from mixjax.data.budget import BudgetError
    from mixjax.data.domain import load_domains
    from mixjax.data.tokenizer import load_tokenizer
    from mixjax.pipeline.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        names = config.domain_names
        if args.budget <= 0:
            raise ValueError(f"--budget must be positive, got {args.budget}")
        tokenizer = load_tokenizer(config.tokenizer)
        domains = load_domains(config.domains, tokenizer, config.train.seq_len + 1)
        if args.weights:
            weights = _parse_weights(args.weights, names)
        else:
            constraints = config.constraints([domains[n].train_tokens for n in names])
            fit_path = Path(args.fit) if args.fit else config.experiment_dir / "fit.json"
            weights = optimal_weights(fit_path, args.budget, names, constraints)
        rows = mixture_rows(domains, names, weights, args.budget, args.seed)
    except (ConfigError, BudgetError, ValueError) as err:
        print(f"mixjax.mix: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for name, ex in rows:
            row = {"domain": name, "input_ids": ex.tokens.tolist(), "loss_mask": ex.loss_mask.tolist(),
                   "text": tokenizer.decode(ex.tokens.tolist())}
            f.write(json.dumps(row) + "\n")
    counts = {n: sum(ex.num_tokens for d, ex in rows if d == n) for n in names}
    print(f"wrote {len(rows)} examples to {out}: " + ", ".join(f"{n} {counts[n]} tokens (w={w:.4f})" for n, w in zip(names, weights)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
