"""Run the whole data-mixing pipeline from a config file.

    python -m mixjax.run --config configs/demo.py [--stages fit,solve,report] [--set train.max_steps=20 ...]

Rerunning the same command skips finished runs and resumes interrupted ones. Bad
configs stop before any training with a one-line error (exit code 2).
"""

from __future__ import annotations

import argparse
import sys

from mixjax.data.budget import BudgetError
from mixjax.data.formats import DataError
from mixjax.pipeline.config import ConfigError, apply_overrides, load_config
from mixjax.pipeline.stages import STAGES, Experiment, run_one, run_stages


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixjax.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a Python file defining `config = ExperimentConfig(...)`")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=20")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--run", type=int, metavar="INDEX", help="train only perturbation run INDEX of plan.json (job arrays)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.distributed:
        import jax

        jax.distributed.initialize()
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    try:
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"--stages: unknown {sorted(unknown)} (have: {', '.join(STAGES)})")
        config = apply_overrides(load_config(args.config), args.set)
        experiment = Experiment(config, progress=not args.no_progress)
        if args.run is not None:
            run_one(experiment, args.run)
        else:
            run_stages(experiment, stages)
    except (ConfigError, BudgetError, DataError, FileNotFoundError) as err:
        print(f"mixjax.run: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
