"""Pipeline stages: plan -> perturb -> fit -> solve -> validate -> report.

Everything a stage produces is a file in the experiment directory, written atomically,
so stages can run separately (``--stages``) and a rerun picks up where the last stopped:

    plan.json            the runs to train (name, tokens per domain)
    runs/<name>/         one directory per training run: checkpoints/, result.json
    runs.csv             per-domain losses of finished perturbation runs (mixjax.fit format)
    fit.json             fitted law parameters and diagnostics
    solution.json        optimal weights per budget, baselines, analysis
    validation.csv       per-domain losses of the validation runs
    report.md, summary.json, *.png

A run counts as finished when its ``result.json`` exists; interrupted runs resume from
their latest checkpoint. ``kill -9`` at any moment loses at most the steps since the last
checkpoint of the run in flight.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from mixjax.data.budget import BudgetError, token_budgets
from mixjax.data.domain import Domain, load_domains
from mixjax.data.pipeline import select_mixture
from mixjax.data.tokenizer import ByteTokenizer, HFTokenizer
from mixjax.io import write_json_atomic
from mixjax.mixing.baselines import proportional_weights, simplex_grid, uniform_weights
from mixjax.mixing.design import perturbation_runs
from mixjax.mixing.fit import FitResult, fit_law
from mixjax.mixing.mixture import report_for_params
from mixjax.mixing.runs import domain_data, read_run_table, write_run_table
from mixjax.mixing.solve import Constraints
from mixjax.pipeline.config import ConfigError, ExperimentConfig, validate
from mixjax.train.loop import train
from mixjax.train.optimizer import steps_for_budget

STAGES = ("plan", "perturb", "fit", "solve", "validate", "report")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str  # "perturb" or "validate"
    tokens: dict[str, int]
    weights: dict[str, float] | None = None


class Experiment:
    """The state shared by the stages: config, directories, loaded data (lazily)."""

    def __init__(self, config: ExperimentConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        validate(config)
        self.config, self.progress = config, progress
        self.dir = config.experiment_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = log

    def log(self, message: str) -> None:
        self._log(message)
        with open(self.dir / "log.txt", "a") as f:
            f.write(message + "\n")

    @functools.cached_property
    def tokenizer(self):
        return ByteTokenizer() if self.config.tokenizer == "byte" else HFTokenizer(self.config.tokenizer)

    @functools.cached_property
    def domains(self) -> dict[str, Domain]:
        return load_domains(self.config.domains, self.tokenizer, self.config.train.seq_len + 1)

    @functools.cached_property
    def model(self):
        model = self.config.model_config()
        if self.config.checkpoint is None:
            return model
        from mixjax.model.hf import config_from_hf

        hf = json.loads((Path(self.config.checkpoint) / "config.json").read_text())
        return config_from_hf(hf, dtype=model.dtype, remat=model.remat, attention_impl=model.attention_impl)

    @functools.cached_property
    def init_params(self):
        if self.config.checkpoint is None:
            return None
        from mixjax.model.hf import load_hf_checkpoint

        return load_hf_checkpoint(self.config.checkpoint)[1]

    @property
    def available(self) -> np.ndarray:
        return np.array([self.domains[n].train_tokens for n in self.config.domain_names], np.float64)

    def constraints(self) -> Constraints:
        names, c = self.config.domain_names, self.config
        pick = lambda d, default: [d.get(n, default) for n in names]
        return Constraints.create(
            len(names), lower=pick(c.lower, 0.0), upper=pick(c.upper, 1.0), available=self.available,
            importance=pick(c.importance, 1.0),
        )

    # ------------------------------------------------------------------ runs

    def run_dir(self, name: str) -> Path:
        return self.dir / "runs" / name

    def finished(self, name: str) -> dict | None:
        path = self.run_dir(name) / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def execute(self, spec: RunSpec) -> dict:
        """Train one run unless it already finished; resume it if it was interrupted."""
        recorded = self.run_dir(spec.name) / "spec.json"
        if recorded.exists() and json.loads(recorded.read_text())["tokens"] != spec.tokens:
            raise ConfigError(
                f"run {spec.name} in {self.dir} was trained with other token counts than the plan now asks for;"
                " use a new experiment name (or delete that run directory)"
            )
        done = self.finished(spec.name)
        if done is not None:
            return done
        cfg = self.config
        examples = select_mixture(self.domains, {n: t for n, t in spec.tokens.items() if t > 0}, cfg.seed)
        tokens = sum(e.num_tokens for e in examples)
        tc = cfg.train
        steps = tc.max_steps or steps_for_budget(tokens, tc.epochs, tc.batch_size * tc.optimizer.grad_accum, tc.seq_len)
        every = max(1, steps // cfg.evals_per_run)
        tc = dataclasses.replace(tc, max_steps=steps, eval_every=every, checkpoint_every=every, seed=cfg.seed)
        self.run_dir(spec.name).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir(spec.name) / "spec.json", dataclasses.asdict(spec))
        val = {n: d.val for n, d in self.domains.items()}
        train(self.model, tc, examples, val, self.run_dir(spec.name), init_params=self.init_params, progress=self.progress, log=self.log)
        return self.finished(spec.name)

    def execute_all(self, specs: list[RunSpec], label: str) -> None:
        todo = [s for s in specs if self.finished(s.name) is None]
        self.log(f"{label}: {len(specs)} runs, {len(specs) - len(todo)} already finished")
        for spec in tqdm(todo, desc=label, disable=not self.progress):
            self.execute(spec)
            self.write_tables()

    def write_tables(self) -> None:
        """Regenerate runs.csv / validation.csv from the finished runs (atomic)."""
        self._write_table("runs.csv", [s for s in self.plan_specs() if s.kind == "perturb"])
        if (self.dir / "solution.json").exists():
            self._write_table("validation.csv", self.validation_specs())

    def _write_table(self, filename: str, specs: list[RunSpec]) -> None:
        names = self.config.domain_names
        rows = [(s, r) for s in specs if (r := self.finished(s.name)) is not None]
        if not rows:
            return
        tmp = self.dir / (filename + ".tmp")
        write_run_table(
            tmp, names, [[s.tokens[n] for n in names] for s, _ in rows], [[r["best_losses"][n] for n in names] for _, r in rows]
        )
        os.replace(tmp, self.dir / filename)

    # ------------------------------------------------------------------ stages

    def plan_specs(self) -> list[RunSpec]:
        path = self.dir / "plan.json"
        if not path.exists():
            return []
        return [RunSpec(**s) for s in json.loads(path.read_text())["runs"]]

    def stage_plan(self) -> None:
        cfg, names = self.config, self.config.domain_names
        tokens = perturbation_runs(np.full(len(names), cfg.base_tokens), cfg.scales).round().astype(int)
        needed = tokens.max(axis=0)
        for name, need, have in zip(names, needed, self.available):
            if need > have:
                raise ConfigError(
                    f"domain {name}: the perturbation runs need {need:,} tokens (base_tokens x {max(cfg.scales):g})"
                    f" but only {int(have):,} training tokens are available"
                )
        for budget in cfg.target_budgets:
            if budget > self.available.sum():
                raise ConfigError(f"target budget {budget:,} exceeds the {int(self.available.sum()):,} training tokens available")
        specs = []
        for row in tokens:
            changed = [i for i, t in enumerate(row) if t != cfg.base_tokens]
            name = "base" if not changed else f"{names[changed[0]]}-x{row[changed[0]] / cfg.base_tokens:g}"
            specs.append(RunSpec(name, "perturb", dict(zip(names, row.tolist()))))
        write_json_atomic(self.dir / "plan.json", {"runs": [dataclasses.asdict(s) for s in specs]})
        self.log(f"plan: {len(specs)} perturbation runs (4k+1 with k={len(names)}), base {cfg.base_tokens:,} tokens per domain")

    def stage_perturb(self) -> None:
        specs = [s for s in self.plan_specs() if s.kind == "perturb"]
        if not specs:
            raise ConfigError("perturb: no plan.json; run the plan stage first")
        self.execute_all(specs, "perturbation runs")

    def stage_fit(self) -> FitResult:
        self.write_tables()
        path = self.dir / "runs.csv"
        if not path.exists():
            raise ConfigError("fit: no finished perturbation runs (runs.csv); run the perturb stage first")
        fit = fit_law(domain_data(read_run_table(path)), jax.random.key(self.config.seed), self.config.fit)
        write_json_atomic(self.dir / "fit.json", fit.to_dict())
        for d in fit.diagnostics:
            self.log(f"fit {d.name}: rmse {d.rmse:.2e}, LOO max {d.loo_max_rel_error:.2%}" + ("  POORLY IDENTIFIED" if d.poorly_identified else ""))
        return fit

    def stage_solve(self) -> dict:
        path = self.dir / "fit.json"
        if not path.exists():
            raise ConfigError("solve: no fit.json; run the fit stage first")
        fit = FitResult.from_dict(json.loads(path.read_text()))
        budgets = sorted(set(self.config.target_budgets) | {self.validate_budget})
        report = report_for_params(fit, budgets, self.constraints(), jax.random.key(self.config.seed))
        solution = report.to_dict()
        write_json_atomic(self.dir / "solution.json", solution)
        for b in report.budgets:
            self.log(f"solve N={b.budget:,.0f}: " + ", ".join(f"{n}={w:.3f}" for n, w in zip(fit.domains, b.weights)))
        return solution

    @property
    def validate_budget(self) -> int:
        return int(self.config.validate.budget or self.config.target_budgets[0])

    def validation_mixtures(self) -> dict[str, np.ndarray]:
        names, v = self.config.domain_names, self.config.validate
        path = self.dir / "solution.json"
        if not path.exists():
            raise ConfigError("validate: no solution.json; run the solve stage first")
        solution = json.loads(path.read_text())
        mixtures = {"optimal": np.asarray(solution["weights"][f"{self.validate_budget:g}"])}
        if "uniform" in v.baselines:
            mixtures["uniform"] = uniform_weights(len(names))
        if "proportional" in v.baselines:
            mixtures["proportional"] = proportional_weights(self.available)
        if v.grid_step:
            for w in simplex_grid(len(names), v.grid_step):
                mixtures["grid-" + "-".join(f"{x:.2f}" for x in w)] = w
        return mixtures

    def validation_specs(self) -> list[RunSpec]:
        names, budget = self.config.domain_names, self.validate_budget
        specs = []
        for label, w in self.validation_mixtures().items():
            tokens = token_budgets(w, budget, names)
            digest = hashlib.sha256(json.dumps(tokens, sort_keys=True).encode()).hexdigest()[:8]
            specs.append(RunSpec(f"validate-{label}-{digest}", "validate", tokens, dict(zip(names, map(float, w)))))
        return specs

    def stage_validate(self) -> None:
        specs = self.validation_specs()
        for spec in specs:  # fail before training on a mixture a domain cannot supply
            for name, t in spec.tokens.items():
                if t > self.domains[name].train_tokens:
                    raise BudgetError(f"{spec.name}: domain {name} needs {t:,} tokens, has {self.domains[name].train_tokens:,}")
        self.execute_all(specs, "validation runs")

    def stage_report(self) -> None:
        from mixjax.pipeline.report import write_report

        write_report(self)


def run_stages(experiment: Experiment, stages: tuple[str, ...] = STAGES) -> None:
    for stage in STAGES:
        if stage in stages:
            getattr(experiment, f"stage_{stage}")()


def run_one(experiment: Experiment, index: int) -> None:
    """Train one planned perturbation run (a SLURM array task); plans first if needed."""
    if not experiment.plan_specs():
        experiment.stage_plan()
    specs = [s for s in experiment.plan_specs() if s.kind == "perturb"]
    if not 0 <= index < len(specs):
        raise ConfigError(f"--run {index}: the plan has runs 0..{len(specs) - 1}")
    experiment.execute(specs[index])
