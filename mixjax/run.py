"""Run the whole data-mixing pipeline from a config file.

    python -m mixjax.run --config configs/demo.py [--stages fit,solve,report] [--set train.max_steps=20 ...]

Rerunning the same command skips finished runs whose fingerprint still matches and resumes
interrupted ones. Bad configs, and finished runs made with another setup (without
``--retrain``), stop before any training with a one-line error (exit code 2). Runs that
fail in training (non-finite loss, data exhausted) are listed at the end (exit code 3);
the others are kept. Any other error (a full disk, a dependency's failure) ends in one line
naming the path and the way out (exit code 2 when the cause is known, else 1); its
traceback, and the dependencies' own logs (orbax, tensorstore), go to
``<workdir>/<name>/logs/run-<time>.log``, or to stderr with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from mixjax.cache import enable_compilation_cache
from mixjax.cli import logged_dependencies, one_line, report_error
from mixjax.data.budget import BudgetError
from mixjax.data.formats import DataError
from mixjax.model.hf import UnsupportedCheckpoint
from mixjax.pipeline.config import ConfigError, ExperimentConfig, apply_overrides, load_config, validate
from mixjax.pipeline.stages import STAGES, Options, Pipeline, RunsFailed
from mixjax.train.sharding import mesh_sizes


# Errors of the user's input: one line, exit code 2.
BAD_INPUT = (ConfigError, BudgetError, DataError, FileNotFoundError, UnsupportedCheckpoint)


def _run_index(text: str) -> tuple[str, int]:
    """``--run 3`` -> ("perturb", 3); ``--run validate:3`` -> ("validate", 3)."""
    kind, _, index = text.rpartition(":")
    if kind not in ("", "perturb", "validate") or not index.isdigit():
        raise argparse.ArgumentTypeError(f"expected INDEX, perturb:INDEX or validate:INDEX, got {text!r}")
    return kind or "perturb", int(index)


def _nodes_by_devices(text: str) -> tuple[int, int]:
    """``4x8`` -> (4, 8): nodes and accelerators per node."""
    nodes, _, devices = text.partition("x")
    if not (nodes.isdigit() and devices.isdigit()) or int(nodes) < 1 or int(devices) < 1:
        raise argparse.ArgumentTypeError(f"expected NODESxDEVICES such as 4x8, got {text!r}")
    return int(nodes), int(devices)


def check_launch(config: ExperimentConfig, nodes: int, devices: int) -> str:
    """Validate ``config`` for ``nodes`` x ``devices`` accelerators without touching any
    (:func:`validate`); the line to print: the train mesh and rows per device.
    Raises ConfigError as the pipeline would at startup."""
    validate(config, device_count=nodes * devices, nodes=nodes)
    t = config.train
    data, fsdp, tensor = mesh_sizes(t.mesh_shape, nodes * devices, t.dcn_mesh_shape, nodes)
    return (
        f"ok: {nodes} node(s) x {devices} devices; train mesh (data, fsdp, tensor) = ({data}, {fsdp}, {tensor});"
        f" batch_size={t.batch_size}: {t.batch_size // (data * fsdp)} row(s) of {t.seq_len} tokens per data-parallel device"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixjax.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a Python file defining `config = ExperimentConfig(...)`")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=20")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument(
        "--run", type=_run_index, metavar="[validate:]INDEX",
        help="train only perturbation run INDEX of plan.json, or validation run INDEX (after solve) (job arrays)",
    )
    p.add_argument("--retrain", action="store_true", help="retrain runs whose fingerprint (config, data, seed, ...) changed")
    p.add_argument("--profile", action="store_true", help="capture a jax.profiler trace of a few steps of each run (train.profile)")
    p.add_argument("--debug", action="store_true", help="print tracebacks (and the dependencies' logs) instead of one line")
    p.add_argument(
        "--check-launch", type=_nodes_by_devices, metavar="NODESxDEVICES",
        help="only check the config (mesh, batch split, paths) for NODES nodes of DEVICES accelerators each, without"
        " touching any, and exit (0 ok, 2 bad): run it before sbatch (launch/submit_multinode.sh does)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_launch is not None:
        try:
            print(check_launch(apply_overrides(load_config(args.config), args.set), *args.check_launch))
        except (ConfigError, FileNotFoundError) as err:
            print(f"mixjax.run: error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.distributed:
        import jax

        jax.distributed.initialize()
    enable_compilation_cache()  # a rerun loads the compiled steps and fit instead of compiling them
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    log = None
    try:
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"--stages: unknown {sorted(unknown)} (have: {', '.join(STAGES)})")
        config = apply_overrides(load_config(args.config), args.set)
        log = None if args.debug else config.experiment_dir / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with logged_dependencies(log, restore_on=(*BAD_INPUT, RunsFailed)):
            options = Options(retrain=args.retrain, profile=args.profile, progress=not args.no_progress)
            pipeline = Pipeline(config, options)
            if args.run is not None:
                pipeline.run_one(args.run[1], kind=args.run[0])
            else:
                pipeline.run(stages)
    except BAD_INPUT as err:
        if args.debug:
            traceback.print_exception(err, file=sys.stderr)
        print(f"mixjax.run: error: {one_line(err)}", file=sys.stderr)
        return 2
    except RunsFailed as err:
        print(f"mixjax.run: {err}", file=sys.stderr)
        return 3
    except Exception as err:  # a dependency's failure (a full disk, ...) or a bug: one line, the traceback in the log
        return report_error("mixjax.run", err, args.debug, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
