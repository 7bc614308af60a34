"""Forward compute of evaluation vs training for the 4k+1 perturbation runs (issue 27 item 6).

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/eval_cost.py [--evals-per-run N] [--no-demo]

A run of S optimizer steps (batch B x T packed tokens) evaluates every ``S // evals_per_run``
steps and at its last step (mixjax.train.hooks.run_hooks), each time a forward pass over
every domain's validation rows. Both are counted in forward-token equivalents: training
costs 3 per token (forward + a backward of twice its matmuls; remat's recomputation, about
one more forward of the layers for ``dots_with_no_batch_dims``, is left out, so the
training side is a lower bound), evaluation 1 per validation row position.

- The demo (``configs/demo.py``): exact. Its BPE tokenizer is rebuilt the way the
  ``pretrain`` stage builds it (same corpus, vocabulary, seed), its domains loaded, each
  run's examples selected and its steps counted as the pipeline does, and its validation
  rows packed by ``multi_domain_eval_batches``.
- The paper configs (``configs/paper_*.py``): estimated, the data not being here. A run's
  trained positions are its token budget; its validation positions ``val_examples x L``
  per domain for an assumed mean example length L (tokens), packed at 100% (the fewest
  rows, so evaluation's share is a lower bound too).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mixjax.mixing.design import perturbation_runs
from mixjax.pipeline.config import ExperimentConfig, load_config

ROOT = Path(__file__).parents[1]
TRAIN_COST = 3  # forward-token equivalents per trained position


def evaluations(steps: int, evals_per_run: int) -> int:
    """Evaluations of a run of ``steps`` steps: at every multiple of max(1, steps //
    evals_per_run), and at the last step when that is not one."""
    every = max(1, steps // evals_per_run)
    return steps // every + (1 if steps % every else 0)


def run_steps(positions: int, config: ExperimentConfig) -> int:
    """Optimizer steps of a run training ``positions`` next-token positions per epoch
    (mixjax.pipeline.training.steps_for_run on a count)."""
    tc = config.train
    steps = max(1, math.floor(tc.epochs * positions / (tc.batch_size * tc.optimizer.grad_accum * tc.seq_len)))
    return min(steps, tc.max_steps) if tc.max_steps else steps


@dataclasses.dataclass(frozen=True)
class Cost:
    """The 4k+1 runs of one config: summed steps, evaluations and forward-token equivalents."""

    name: str
    runs: int
    steps: int
    evaluations: int
    train: float  # TRAIN_COST x trained row positions (steps x B x T), summed over runs
    evaluation: float  # evaluations x validation row positions, summed over runs

    def line(self) -> str:
        share = self.evaluation / (self.train + self.evaluation)
        return (f"{self.name:42s} {self.runs:3d} runs {self.steps:6d} steps {self.evaluations:4d} evals  train {self.train / 1e6:9.1f}M"
                f"  eval {self.evaluation / 1e6:9.1f}M  eval/train {self.evaluation / self.train:5.2f}  eval share {share:5.1%}")


def cost(name: str, config: ExperimentConfig, run_positions: Sequence[int], eval_rows: int, evals_per_run: int) -> Cost:
    """Cost of runs training ``run_positions`` each, every evaluation over ``eval_rows`` rows."""
    tc = config.train
    row = tc.seq_len
    steps = [run_steps(p, config) for p in run_positions]
    evals = [evaluations(s, evals_per_run) for s in steps]
    train = sum(TRAIN_COST * s * tc.batch_size * tc.optimizer.grad_accum * row for s in steps)
    return Cost(name, len(steps), sum(steps), sum(evals), float(train), float(sum(e * eval_rows * row for e in evals)))


def paper_cost(path: Path, mean_tokens: int, evals_per_run: int | None) -> Cost:
    """Estimated cost of a paper config's perturbation runs (module docstring)."""
    config = load_config(path)
    tokens = perturbation_runs(np.full(len(config.domains), config.base_tokens), config.scales).sum(axis=1)
    tc = config.train
    rows = sum(math.ceil(d.val_examples * mean_tokens / tc.seq_len) for d in config.domains)
    rows = math.ceil(rows / tc.batch_size) * tc.batch_size  # whole eval batches
    evals = evals_per_run or config.evals_per_run
    label = f"{path.stem} (L={mean_tokens}, evals_per_run={evals})"
    return cost(label, config, [int(t) for t in tokens], rows, evals)


def demo_cost(evals_per_run: int | None) -> Cost:
    """Exact cost of the demo's 13 perturbation runs (module docstring)."""
    from mixjax.data.corpus import pretraining_corpus
    from mixjax.data.domain import load_domains
    from mixjax.data.pipeline import mixture_selection, multi_domain_eval_batches, trained_positions
    from mixjax.data.tokenizer import load_tokenizer, train_bpe_tokenizer
    from mixjax.pipeline.stages import plan_runs

    config = load_config(ROOT / "configs" / "demo.py")
    pre, tc = config.pretrain, config.train
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(pretraining_corpus(pre.num_documents, pre.seed), pre.vocab_size, Path(tmp) / "tokenizer")
        tokenizer = load_tokenizer(Path(tmp) / "tokenizer")
    domains = load_domains(config.domains, tokenizer, tc.seq_len + 1)
    names = config.domain_names
    available = np.array([domains[n].train_tokens for n in names], np.float64)
    specs = plan_runs(names, config.base_tokens, config.scales, available, config.target_budgets)
    positions = [trained_positions([e for _, e in mixture_selection(domains, s.tokens, config.seed)], tc.seq_len) for s in specs]
    val = {n: domains[n].val for n in names}
    rows = sum(len(b["domain"]) for b in multi_domain_eval_batches(val, seq_len=tc.seq_len, batch_size=tc.batch_size))
    rows = math.ceil(rows / tc.batch_size) * tc.batch_size  # each eval call runs a full batch
    evals = evals_per_run or config.evals_per_run
    return cost(f"demo (exact, evals_per_run={evals})", config, positions, rows, evals)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evals-per-run", type=int, default=None, help="instead of each config's own")
    p.add_argument("--mean-tokens", type=int, nargs="+", default=[250, 500, 1000], help="assumed tokens per validation example (paper configs)")
    p.add_argument("--no-demo", action="store_true")
    args = p.parse_args()
    print(f"forward-token equivalents: train = {TRAIN_COST} x trained row positions, eval = validation row positions")
    if not args.no_demo:
        print(demo_cost(args.evals_per_run).line())
    for path in sorted((ROOT / "configs").glob("paper_*.py")):
        for mean in args.mean_tokens:
            print(paper_cost(path, mean, args.evals_per_run).line())


if __name__ == "__main__":
    main()
