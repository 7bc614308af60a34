"""Write the optimised mixture itself (a seeded JSONL of training examples for any
trainer), or hand its weights to another trainer.

    python -m mixjax.mix --config configs/demo.py --budget 200000 (--out mixed.jsonl | --export FORMAT)
        [--weights instruct=0.6 math=0.4 | --fit experiments/demo/fit.json] [--seed SEED]

Weights: ``--weights`` as given; else the experiment's answer at ``--budget``
(:meth:`mixjax.pipeline.store.RunStore.answer`: ``solution_final.json`` once validation's
probe runs refitted the law, else ``solution.json``); else the optimum at ``--budget`` of
the answer's fit (or ``--fit``) under the config's constraints. Which one is printed to
stderr. ``--export`` prints them as levanter / MaxText / LLaMA-Factory / HF datasets /
JSON take them (:mod:`mixjax.mixing.export`).

The examples are exactly the ones a pipeline run with these weights at this budget
trains: the same tokenizer (for a config with ``pretrain=``, the base model's BPE
tokenizer, so ``--budget`` counts the model's tokens), the same domains and the same
selection (``mixjax.data.pipeline.mixture_selection``, seed default: the config's): each
domain gets ``w_i N`` tokens (largest-remainder rounding), exact within one example. The
rows are shuffled together (seeded). One JSON object per line: ``domain``,
``input_ids``, ``loss_mask``, ``text`` (the decoded tokens, template included).
Deterministic: the same config, weights, budget and seed give the same file. Flags that
would have no effect together (``--out`` and ``--export``, ``--weights`` and ``--fit``,
``--seed`` with ``--export``) are refused. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mixjax.cli import per_domain_values
from mixjax.io import atomic_path
from mixjax.mixing.export import FORMATS, export_weights


def _parse_weights(items: list[str], names: tuple[str, ...]) -> np.ndarray:
    given = per_domain_values(items, names, "--weights", required=True)
    w = np.array([given[n] for n in names], np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"--weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def optimal_weights(fit_path: Path, budget: float, names, constraints, targets=()) -> np.ndarray:
    from mixjax.mixing.fit.result import Fit
    from mixjax.mixing.solve import solve_sweep

    if not fit_path.exists():
        raise ValueError(f"{fit_path}: no fit.json (run the fit stage, or give --weights)")
    fit = Fit.from_dict(json.loads(fit_path.read_text()))
    if tuple(fit.domains) != tuple(names):
        raise ValueError(f"{fit_path}: domains {list(fit.domains)} differ from the config's {list(names)}")
    if tuple(fit.targets) != tuple(targets):
        raise ValueError(f"{fit_path}: targets {list(fit.targets)} differ from the config's {list(targets)} (refit, or give --weights)")
    return solve_sweep(fit.params, [budget], constraints, names)[0]


def choose_weights(args: argparse.Namespace, config, names, available) -> tuple[np.ndarray, str]:
    """(weights, where they come from): ``--weights``; else the experiment's answer
    (:meth:`mixjax.pipeline.store.RunStore.answer`) at ``--budget``; else the optimum at
    ``--budget`` of the answer's fit (or ``--fit``)."""
    from mixjax.pipeline.store import RunStore

    if args.weights:
        return _parse_weights(args.weights, names), "--weights"
    answer = RunStore(config.experiment_dir, primary=False).answer()
    if args.fit is None and answer is not None and (solved := answer.weights(args.budget, names)) is not None:
        return solved, answer.describe()
    fit_path = Path(args.fit) if args.fit else (answer.fit_path if answer else config.experiment_dir / "fit.json")
    return optimal_weights(fit_path, args.budget, names, config.constraints(available), config.target_names), f"the optimum of {fit_path}"


def mixture_rows(domains: dict, names, weights, budget: int, seed: int) -> list[tuple[str, object]]:
    """(domain, Example) rows of the mixed file: the pipeline's selection for these weights at
    ``budget`` (``mixture_selection``), shuffled together by ``seed``; pure given its inputs."""
    from mixjax.data.budget import token_budgets
    from mixjax.data.pipeline import mixture_selection

    rows = mixture_selection(domains, token_budgets(weights, int(budget), names), seed)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[j] for j in order]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixjax.mix", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--budget", required=True, type=int, help="total tokens N")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="write the mixed examples here (JSONL)")
    what.add_argument("--export", choices=FORMATS, help="print the weights in this tool's format instead of writing examples")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--weights", nargs="*", metavar="D=W", help="weights to use instead of the experiment's answer")
    source.add_argument("--fit", help="fit.json to solve (default: the experiment's answer)")
    p.add_argument("--seed", type=int, default=None, help="selection seed (default: the config's, as the pipeline's runs)")
    args = p.parse_args(argv)
    if args.export and args.seed is not None:
        p.error("--seed selects examples; --export writes none: drop --seed (or use --out)")
    return args


def _write(out: Path, rows, tokenizer) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for name, ex in rows:
            row = {"domain": name, "input_ids": ex.tokens.tolist(), "loss_mask": ex.loss_mask.tolist(),
                   "text": tokenizer.decode(ex.tokens.tolist())}
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        weights, source = choose_weights(args, config, names, inputs.available)
        print(f"mixjax.mix: weights from {source}: " + ", ".join(f"{n}={w:.4f}" for n, w in zip(names, weights)), file=sys.stderr)
        if args.export:
            per_example = {n: inputs.domains[n].tokens_per_example for n in names}  # the sampling unit of example-level formats
            print(export_weights(args.export, names, {float(args.budget): weights}, seed=config.seed, tokens_per_example=per_example))
            return 0
        rows = mixture_rows(inputs.domains, names, weights, args.budget, config.seed if args.seed is None else args.seed)
    except (ConfigError, BudgetError, DataError, ValueError) as err:
        print(f"mixjax.mix: error: {err}", file=sys.stderr)
        return 2
    _write(Path(args.out), rows, inputs.tokenizer)
    counts = {n: sum(ex.num_tokens for d, ex in rows if d == n) for n in names}
    print(f"wrote {len(rows)} examples to {args.out}: " + ", ".join(f"{n} {counts[n]} tokens (w={w:.4f})" for n, w in zip(names, weights)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
