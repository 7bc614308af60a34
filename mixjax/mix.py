"""Write the optimised mixture itself: a seeded JSONL of training examples for any trainer.

    python -m mixjax.mix --config configs/demo.py --budget 200000 --out mixed.jsonl
        [--weights instruct=0.6 math=0.4 | --fit experiments/demo/fit.json] [--seed SEED]

Weights: ``--weights`` as given; else the pipeline's answer at ``--budget``: the weights
its solve wrote (``<workdir>/<name>/solution_final.json`` when validation's probe runs
refitted the law, else ``solution.json``: the mixture the validation run trained); else
the optimum at ``--budget`` of the fitted law (``--fit``, default the experiment's
``fit_final.json`` or ``fit.json``, paired the same way) under the config's constraints.
The source is printed to stderr. The examples are exactly the ones a pipeline run with these
weights at this budget trains: the same tokenizer (for a config with ``pretrain=``, the base
model's BPE tokenizer, so ``--budget`` counts the model's tokens), the same domains and the
same selection (``mixjax.data.pipeline.mixture_selection``, seed default: the config's):
each domain gets ``w_i N`` tokens (largest-remainder rounding), exact within one example.
The rows are shuffled together (seeded). One JSON object per line: ``domain``,
``input_ids``, ``loss_mask``, ``text`` (the decoded tokens, template included).
Deterministic: the same config, weights, budget and seed give the same file. Exit code 2
on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mixjax.cli import per_domain_values
from mixjax.io import atomic_path


def _parse_weights(items: list[str], names: tuple[str, ...]) -> np.ndarray:
    given = per_domain_values(items, names, "--weights", required=True)
    w = np.array([given[n] for n in names], np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"--weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def optimal_weights(fit_path: Path, budget: float, names, constraints) -> np.ndarray:
    from mixjax.mixing.fit.table import load_fit
    from mixjax.mixing.solve import solve_sweep

    if not fit_path.exists():
        raise ValueError(f"{fit_path}: no fit.json (run the fit stage, or give --weights)")
    fit = load_fit(json.loads(fit_path.read_text()))
    if tuple(fit.domains) != tuple(names):
        raise ValueError(f"{fit_path}: domains {list(fit.domains)} differ from the config's {list(names)}")
    return solve_sweep(fit.params, [budget], constraints, names)[0]


def answer_files(experiment_dir: Path) -> tuple[Path, Path]:
    """(solution, fit) of the pipeline's answer: ``solution_final.json`` and
    ``fit_final.json`` once validation's probe runs refitted the law (issue #14), else
    ``solution.json`` and ``fit.json``."""
    final = experiment_dir / "solution_final.json"
    if final.exists():
        return final, experiment_dir / "fit_final.json"
    return experiment_dir / "solution.json", experiment_dir / "fit.json"


def solved_weights(solution: dict | None, budget: int, names) -> np.ndarray | None:
    """The solve stage's weights at ``budget`` (what the validation run trained), if it solved for it."""
    if solution is None or tuple(solution.get("domains", names)) != tuple(names):
        return None
    weights = solution.get("weights", {}).get(f"{float(budget):g}")
    return None if weights is None else np.asarray(weights, np.float64)


def mixture_rows(domains: dict, names, weights, budget: int, seed: int) -> list[tuple[str, object]]:
    """(domain, Example) rows of the mixed file: the pipeline's selection for these weights at
    ``budget`` (``mixture_selection``), shuffled together by ``seed``; pure given its inputs."""
    from mixjax.data.budget import token_budgets
    from mixjax.data.pipeline import mixture_selection

    rows = mixture_selection(domains, token_budgets(weights, int(budget), names), seed)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[j] for j in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixjax.mix", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--budget", required=True, type=int, help="total tokens N")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", nargs="*", metavar="D=W", help="weights to use instead of the fitted optimum")
    p.add_argument("--fit", help="fit.json to solve (default: the experiment's)")
    p.add_argument("--seed", type=int, default=None, help="selection seed (default: the config's, as the pipeline's runs)")
    args = p.parse_args(argv)
    from mixjax.data.budget import BudgetError
    from mixjax.data.formats import DataError
    from mixjax.pipeline.config import ConfigError, load_config
    from mixjax.pipeline.pretrain import fine_tuning_config
    from mixjax.pipeline.stages import Inputs

    try:
        config = load_config(args.config)
        names = config.domain_names
        if args.budget <= 0:
            raise ValueError(f"--budget must be positive, got {args.budget}")
        inputs = Inputs(fine_tuning_config(config, build=False))  # the pipeline's tokenizer and domains
        tokenizer, domains = inputs.tokenizer, inputs.domains
        solution_path, fit_path = answer_files(config.experiment_dir)
        solution = json.loads(solution_path.read_text()) if solution_path.exists() else None
        if args.weights:
            weights, source = _parse_weights(args.weights, names), "--weights"
        elif args.fit is None and (solved := solved_weights(solution, args.budget, names)) is not None:
            weights, source = solved, str(solution_path)
        else:
            fit_path = Path(args.fit) if args.fit else fit_path
            weights = optimal_weights(fit_path, args.budget, names, config.constraints(inputs.available))
            source = f"the optimum of {fit_path}"
        print(f"mixjax.mix: weights from {source}: " + ", ".join(f"{n}={w:.4f}" for n, w in zip(names, weights)), file=sys.stderr)
        rows = mixture_rows(domains, names, weights, args.budget, config.seed if args.seed is None else args.seed)
    except (ConfigError, BudgetError, DataError, ValueError) as err:
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
