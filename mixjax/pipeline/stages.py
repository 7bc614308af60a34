"""Pipeline stages: pretrain -> plan -> perturb -> fit -> solve -> validate -> report.

Each stage is a function of plain inputs; :func:`run_pipeline` wires them to the config,
the lazily loaded data (:class:`Inputs`) and the run store (:mod:`mixjax.pipeline.store`).
Everything a stage produces is a file in the experiment directory, so stages can run
separately (``--stages``) and a rerun picks up where the last one stopped.

A run is reused only when it finished (``result.json``) and its fingerprint (tokens, the
selected examples, model, training and optimizer config, init checkpoint, tokenizer, data
sources, seed) equals the one the current config gives; a mismatch stops before any
training (exit 2) unless ``retrain``. Interrupted runs resume from their latest
checkpoint. A run that raises (non-finite loss, data exhausted, any RuntimeError) is
recorded as failed; the others go on, and the pipeline ends with :class:`RunsFailed`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from mixjax.data.budget import token_budgets
from mixjax.data.domain import Domain, Example, examples_hash, load_domains
from mixjax.data.tokenizer import check_vocab, load_tokenizer
from mixjax.data.pipeline import mixture_selection
from mixjax.mixing.baselines import feasible_mask, proportional_weights, simplex_grid, uniform_weights
from mixjax.mixing.design import design_runs
from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.result import Fit
from mixjax.mixing.mixture import decide, fit_table, settle_with_probes
from mixjax.mixing.runs import RunTable, read_run_table
from mixjax.mixing.solve import Constraints
from mixjax.model.llama import ModelConfig
from mixjax.pipeline.training import RUN_ERRORS, run_train_config, steps_for_run
from mixjax.pipeline.config import ConfigError, ExperimentConfig, PlanConfig, validate
from mixjax.pipeline.fingerprint import config_dict, data_stamp, directory_stamp, normalise
from mixjax.pipeline.store import RunSpec, RunStore
from mixjax.progress import progress_iter
from mixjax.train.loop import Trainer, TrainConfig, train

STAGES = ("pretrain", "plan", "perturb", "fit", "solve", "validate", "report")


class RunsFailed(RuntimeError):
    """Some training runs raised; the finished ones are kept."""

    def __init__(self, failed: Mapping[str, str]) -> None:
        self.failed = dict(failed)
        lines = "\n".join(f"  {name}: {error}" for name, error in self.failed.items())
        super().__init__(f"{len(self.failed)} run(s) failed (rerun to retry them; finished runs are kept):\n{lines}")


@dataclasses.dataclass(frozen=True)
class Options:
    retrain: bool = False  # retrain runs whose fingerprint changed instead of stopping
    profile: bool = False  # train.profile: a jax.profiler trace of a few steps per run
    progress: bool = True  # bars on a terminal, plain lines elsewhere


# ---------------------------------------------------------------------- inputs


class Inputs:
    """What the training stages read, loaded on first use: tokenizer, domains, model, the
    init checkpoint's parameters."""

    def __init__(self, config: ExperimentConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.config.tokenizer)

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        return self.tokenizer.fingerprint()

    @functools.cached_property
    def model(self) -> ModelConfig:
        model = self.config.model_config()
        if self.config.checkpoint is None:
            return model
        from mixjax.model.hf import check_hf_checkpoint

        hf = check_hf_checkpoint(self.config.checkpoint)  # every config field and weight implemented (headers only)
        return dataclasses.replace(hf, dtype=model.dtype, remat=model.remat, attention_impl=model.attention_impl, scan_layers=model.scan_layers)

    @functools.cached_property
    def domains(self) -> dict[str, Domain]:
        check_vocab(self.tokenizer, self.model.vocab_size)
        return load_domains(self.config.domains, self.tokenizer, self.config.train.seq_len + 1, self.config.targets)

    @functools.cached_property
    def trainer(self) -> Trainer:
        """The compiled train and eval steps every run of the pipeline shares."""
        return Trainer(self.model, self.config.train)

    @functools.cached_property
    def init_params(self):
        """The init checkpoint's params on the trainer's devices, in the checkpoint's dtype
        (bf16 for Llama-3: 2 bytes/param, sharded as the params), loaded tensor by tensor:
        no float32 host copy, held or transient (each run's float32 master params are made
        from them on the devices). Converted once per experiment (``<experiment_dir>/init``,
        :mod:`mixjax.pipeline.converted`); later processes restore that conversion."""
        if self.config.checkpoint is None:
            return None
        from mixjax.pipeline.converted import load_init_params

        root = Path(self.config.experiment_dir) / "init"
        return load_init_params(self.config.checkpoint, self.model, self.trainer.state_shardings.params, root, log=self.log)

    @functools.cached_property
    def checkpoint_stamp(self) -> dict | None:
        return None if self.config.checkpoint is None else directory_stamp(self.config.checkpoint)

    @property
    def available(self) -> np.ndarray:
        """Training tokens per domain (tokenizes the data; the plan stage records them)."""
        return np.array([self.domains[n].train_tokens for n in self.config.domain_names], np.float64)


# ---------------------------------------------------------------------- plan


def plan_runs(names: Sequence[str], base_tokens: int, scales: Sequence[float], available: np.ndarray, budgets: Sequence[int],
              plan: PlanConfig = PlanConfig(), key: jax.Array | None = None) -> list[RunSpec]:
    """The plan's runs (``plan.design``: :func:`mixjax.mixing.design.design_runs`; ``key``
    draws a swarm); ConfigError when a domain cannot supply its largest run."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.key(0) if key is None else key)).ravel())
    try:
        tokens, run_names = design_runs(plan.design, names, np.full(len(names), base_tokens), available, rng, scales, plan.swarm_runs,
                                     strengths=plan.swarm_strengths, min_distance=plan.swarm_min_distance)
    except ValueError as err:
        raise ConfigError(f"plan: {err}") from None
    tokens = tokens.round().astype(int)
    for name, need, have in zip(names, tokens.max(axis=0), available):
        if need > have:
            raise ConfigError(
                f"domain {name}: the perturbation runs need {need:,} tokens (base_tokens x {max(scales):g})"
                f" but only {int(have):,} training tokens are available"
            )
    for budget in budgets:
        if budget > available.sum():
            raise ConfigError(f"target budget {budget:,} exceeds the {int(available.sum()):,} training tokens available")
    run_names = [n if n.startswith("swarm-") else _perturbation_name(row, names, base_tokens) for n, row in zip(run_names, tokens)]
    return [RunSpec(name, "perturb", dict(zip(names, row.tolist()))) for name, row in zip(run_names, tokens)]


def _perturbation_name(row: np.ndarray, names: Sequence[str], base_tokens: int) -> str:
    """A 4k+1 run's name from its rounded tokens ("base", "<domain>-x<tokens / base>"): the
    names (and run directories) experiments planned before the swarm designs have."""
    changed = [i for i, t in enumerate(row) if t != base_tokens]
    return "base" if not changed else f"{names[changed[0]]}-x{row[changed[0]] / base_tokens:g}"


# ---------------------------------------------------------------------- training runs


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    spec: RunSpec
    examples: list[Example]
    selected_tokens: dict[str, int]
    train: TrainConfig
    fingerprint: dict


def prepare_run(spec: RunSpec, inputs: Inputs, profile: bool = False) -> PreparedRun:
    """Select the run's examples and compute its step budget and fingerprint (no training)."""
    cfg = inputs.config
    seed = cfg.seed if spec.seed is None else spec.seed
    picked = mixture_selection(inputs.domains, spec.tokens, seed)
    examples = [e for _, e in picked]
    selected = {n: 0 for n in spec.tokens}
    for name, e in picked:
        selected[name] += e.num_tokens
    steps = steps_for_run(examples, cfg.train)
    run_cfg = run_train_config(cfg.train, max_steps=steps, eval_every=max(1, steps // cfg.evals_per_run), seed=seed, profile=profile)
    fingerprint = normalise({
        "seed": seed,
        "tokens": spec.tokens,
        "examples": examples_hash(examples),
        "model": config_dict(inputs.model),
        "train": config_dict(run_cfg),
        "init_checkpoint": inputs.checkpoint_stamp,
        "tokenizer": inputs.tokenizer_fingerprint,
        "data": data_stamp(cfg.domains + cfg.targets),
    })
    return PreparedRun(spec, examples, selected, run_cfg, fingerprint)


def train_runs(
    runs: Sequence[PreparedRun], store: RunStore, label: str, *, val_sets: Mapping[str, Sequence[Example]],
    init_params, trainer: Callable[[], Trainer], options: Options, after_each: Callable[[], None] = lambda: None,
    keep_best_params: bool = False, selection: Sequence[str] | None = None,
) -> dict[str, str]:
    """Train every run that has not finished; returns {name: error} of the runs that raised.
    ``selection``: the validation sets whose total picks each run's best checkpoint (the
    training domains; targets are measured at that step).
    Checks every fingerprint first, so a stale run stops the stage before any training.
    ``trainer`` gives the one compiled Trainer the runs share (built only if a run trains).
    A finished run's checkpoints are deleted (its best params kept with ``keep_best_params``)."""
    store.check_fresh([(r.spec, r.fingerprint) for r in runs], options.retrain)
    todo = [r for r in runs if store.result(r.spec.name) is None]
    store.release_checkpoints([r.spec.name for r in runs if r not in todo], keep_best_params)
    store.log(f"{label}: {len(runs)} runs, {len(runs) - len(todo)} already finished")
    failed = {}
    for run in progress_iter(todo, label, enabled=options.progress):
        store.start(run.spec, run.fingerprint, run.selected_tokens)
        try:
            train(
                trainer(), run.train, run.examples, val_sets, store.run_dir(run.spec.name),
                init_params=init_params, progress=options.progress, log=store.log, selection=selection,
            )
            store.release_checkpoints([run.spec.name], keep_best_params)
        except RUN_ERRORS as err:
            failed[run.spec.name] = f"{type(err).__name__}: {err}"
            store.mark_failed(run.spec.name, err)
            store.log(f"{label}: run {run.spec.name} FAILED: {failed[run.spec.name]}")
        after_each()
    return failed


# ---------------------------------------------------------------------- fit and solve


def fit_runs(runs_csv: Path, seed: int, fit_config: FitConfig) -> Fit:
    """The fit of the recorded perturbation runs (``runs.csv``), keyed by the config's seed."""
    if not runs_csv.exists():
        raise ConfigError("fit: no finished perturbation runs (runs.csv); run the perturb stage first")
    return fit_table(read_run_table(runs_csv), jax.random.key(seed), fit_config)


def solve_mixture(fit: Fit, budgets: Sequence[int], constraints: Constraints, seed: int) -> dict:
    """solution.json's content: :func:`~mixjax.mixing.mixture.decide` at every budget."""
    return decide(fit, sorted(set(budgets)), constraints, jax.random.key(seed)).to_dict()


# ---------------------------------------------------------------------- validate


def validation_mixtures(
    optimum: np.ndarray, baselines: Sequence[str], grid_step: float | None, available: np.ndarray,
    probes: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """Label -> weights of every mixture the validate stage trains: the optimum, the
    baselines, the simplex grid (``grid-...``) and the fit's probe mixtures (``probe-<name>``)."""
    k = len(available)
    mixtures = {"optimal": np.asarray(optimum, np.float64)}
    if "uniform" in baselines:
        mixtures["uniform"] = uniform_weights(k)
    if "proportional" in baselines:
        mixtures["proportional"] = proportional_weights(available)
    if grid_step:
        for w in simplex_grid(k, grid_step):
            mixtures["grid-" + "-".join(f"{x:.2f}" for x in w)] = w
    for name, w in (probes or {}).items():
        mixtures[f"probe-{name}"] = np.asarray(w, np.float64)
    return mixtures


def validation_seeds(seed: int, count: int) -> tuple[int, ...]:
    """The seeds of the validation runs: the config's seed and the ``count - 1`` following ones."""
    return tuple(range(seed, seed + count))


def validation_plan(
    names: Sequence[str], budget: int, mixtures: Mapping[str, np.ndarray], constraints: Constraints, seeds: Sequence[int] = (0,),
) -> tuple[list[RunSpec], dict[str, str]]:
    """One run per feasible mixture and seed (seed-major: every mixture at the first seed, then
    the next seed, ...); the infeasible mixtures (bounds, or w_i N > D_i) are skipped with the
    reason, never an error."""
    labels = list(mixtures)
    weights = np.stack([mixtures[k] for k in labels])
    feasible = feasible_mask(weights, budget, constraints)
    runs, skipped = [], {}
    for label, w, ok in zip(labels, weights, feasible):
        tokens = token_budgets(w, budget, names)
        short = [n for n, a in zip(names, constraints.available) if tokens[n] > a]
        if not ok or short:
            why = f"domain {short[0]} needs {tokens[short[0]]:,} tokens" if short else "outside the weight bounds"
            skipped[label] = f"infeasible at N={budget:,}: {why}"
            continue
        runs.append((label, tokens, dict(zip(names, map(float, w)))))
    specs = []
    for seed in seeds:
        for label, tokens, w in runs:
            digest = hashlib.sha256(json.dumps(tokens, sort_keys=True).encode()).hexdigest()[:8]
            specs.append(RunSpec(f"validate-{label}-seed{seed}-{digest}", "validate", tokens, w, seed=seed, label=label))
    return specs, skipped


# ---------------------------------------------------------------------- the pipeline


class Pipeline:
    """Wires the stage functions to one config, its store and its inputs."""

    def __init__(self, config: ExperimentConfig, options: Options = Options(), log: Callable[[str], None] = print) -> None:
        validate(config)
        self.config, self.options = config, options
        self.store = RunStore(config.experiment_dir, log)
        self.failed: dict[str, str] = {}
        self._inputs: Inputs | None = None

    @property
    def validate_budget(self) -> int:
        return int(self.config.validate.budget or self.config.target_budgets[0])

    def inputs(self) -> Inputs:
        """The inputs of the config, pretraining the base model first when asked to."""
        if self._inputs is None:
            from mixjax.pipeline.pretrain import fine_tuning_config

            try:
                config = fine_tuning_config(self.config, log=self.store.log, progress=self.options.progress, profile=self.options.profile)
            except RUN_ERRORS as err:
                raise RunsFailed({"pretrain": f"{type(err).__name__}: {err}"}) from err
            self._inputs = Inputs(config, self.store.log)
        return self._inputs

    def solution(self) -> dict:
        solution = self.store.read_json("solution.json")
        if solution is None:
            raise ConfigError("validate: no solution.json; run the solve stage first")
        return solution

    def available(self) -> np.ndarray:
        """Training tokens per domain (domain order), as the plan stage recorded them; counted
        from the data (tokenizing it) only for an experiment planned before they were recorded."""
        recorded = self.store.available()
        if recorded is not None and set(recorded) == set(self.config.domain_names):
            return np.array([recorded[n] for n in self.config.domain_names], np.float64)
        return self.inputs().available

    def constraints(self) -> Constraints:
        return self.config.constraints(self.available())

    def validation(self) -> tuple[list[RunSpec], dict[str, str]]:
        """The validation runs (every mixture at every validation seed) and the skipped mixtures,
        from validation_plan.json; made (and written) once per solution and validate config."""
        solution = self.solution()
        cfg = self.config
        made_from = normalise({
            "solution": {k: solution.get(k) for k in ("weights", "probes")}, "validate": config_dict(cfg.validate), "seed": cfg.seed,
            "budget": self.validate_budget, "available": self.available().tolist(), "bounds": [cfg.lower, cfg.upper],
        })
        recorded = self.store.read_json("validation_plan.json")
        if recorded is not None and recorded["made_from"] == made_from:
            return [RunSpec(**s) for s in recorded["runs"]], recorded["skipped"]
        optimum = np.asarray(solution["weights"][f"{self.validate_budget:g}"])
        v = self.config.validate
        mixtures = validation_mixtures(optimum, v.baselines, v.grid_step, self.available(), solution.get("probes"))
        seeds = validation_seeds(self.config.seed, v.seeds)
        specs, skipped = validation_plan(self.config.domain_names, self.validate_budget, mixtures, self.constraints(), seeds)
        self.store.write_json("validation_plan.json", {"made_from": made_from, "runs": [dataclasses.asdict(s) for s in specs], "skipped": skipped})
        return specs, skipped

    def _train(self, specs: Sequence[RunSpec], label: str, table: str, recorded: Sequence[RunSpec]) -> dict[str, str]:
        """Train ``specs``; after each run, ``table`` (runs.csv / validation.csv) is written
        anew from the finished runs among ``recorded`` (every run of that stage)."""
        inputs = self.inputs()
        runs = [prepare_run(s, inputs, self.options.profile) for s in specs]
        val = {n: d.val for n, d in inputs.domains.items()}
        write = lambda: self.store.write_table(table, recorded, self.config.domain_names, self.config.target_names)
        failed = train_runs(
            runs, self.store, label, val_sets=val, init_params=inputs.init_params, trainer=lambda: inputs.trainer, options=self.options,
            after_each=write, keep_best_params=self.config.keep_best_params, selection=self.config.domain_names,
        )
        self.failed.update(failed)
        write()
        return failed

    # -- stages

    def stage_pretrain(self) -> None:
        if self.config.pretrain is None:
            self.store.log("pretrain: none configured (fine-tuning " + (self.config.checkpoint or "a randomly initialised model") + ")")
        else:
            self.inputs()

    def stage_plan(self) -> None:
        cfg = self.config
        available = self.inputs().available
        specs = plan_runs(cfg.domain_names, cfg.base_tokens, cfg.scales, available, cfg.target_budgets, cfg.plan,
                          jax.random.fold_in(jax.random.key(cfg.seed), 11))
        for domain in self.inputs().domains.values():
            if domain.skipped:
                self.store.log(f"plan: domain {domain.name}: skipped {len(domain.skipped)} unusable records: " + "; ".join(domain.skipped[:5]))
        design = dataclasses.asdict(cfg.plan) | {"seed": cfg.seed, "runs": len(specs)}
        self.store.write_plan(specs, dict(zip(cfg.domain_names, map(int, available))), design)
        self.store.log(f"plan: {len(specs)} runs (design {cfg.plan.design}, k={len(cfg.domain_names)}), base {cfg.base_tokens:,} tokens per domain")

    def adaptive_specs(self) -> list[RunSpec]:
        """The adaptive rounds' runs recorded so far (adaptive.json)."""
        return [RunSpec(**r) for r in (self.store.read_json("adaptive.json") or {"runs": []})["runs"]]

    def perturbation_specs(self) -> list[RunSpec]:
        """The 4k+1 runs of plan.json and the adaptive rounds' runs recorded so far."""
        return [s for s in self.store.plan() if s.kind == "perturb"] + self.adaptive_specs()

    def adaptive_round(self, index: int, fit: Fit) -> list[RunSpec]:
        """Round ``index``'s proposed runs (k mixtures at the base run's budget), proposed from
        ``fit`` once and recorded in adaptive.json (a rerun trains the recorded ones)."""
        recorded = self.adaptive_specs()
        mine = [s for s in recorded if s.name.startswith(f"adapt{index}-")]
        if mine:
            return mine
        names, budget = self.config.domain_names, self.validate_budget
        from mixjax.mixing.decision import propose_runs

        key = jax.random.fold_in(jax.random.key(self.config.seed), 100 + index)
        mixtures = propose_runs(fit, float(budget), self.constraints(), len(names), key)
        base = self.config.base_tokens * len(names)
        specs = [RunSpec(f"adapt{index}-{i}", "perturb", token_budgets(w, base, names), dict(zip(names, map(float, w))))
                 for i, w in enumerate(mixtures)]
        self.store.write_json("adaptive.json", {"runs": [dataclasses.asdict(s) for s in recorded + specs]})
        return specs

    def stage_perturb(self) -> None:
        specs = self.perturbation_specs()
        if not specs:
            raise ConfigError("perturb: no plan.json; run the plan stage first")
        self._train(specs, "perturbation runs", "runs.csv", specs)

    def stage_fit(self) -> None:
        # runs.csv from every finished run's result.json (job-array tasks each wrote their own view)
        self.store.write_table("runs.csv", self.perturbation_specs(), self.config.domain_names, self.config.target_names)
        fit = fit_runs(self.store.path("runs.csv"), self.config.seed, self.config.fit)
        for index in range(self.config.adaptive_rounds):
            specs = self.adaptive_round(index, fit)
            if self._train(specs, f"adaptive round {index + 1}", "runs.csv", self.perturbation_specs()):
                raise RunsFailed(self.failed)
            fit = fit_runs(self.store.path("runs.csv"), self.config.seed, self.config.fit)
        self.store.write_json("fit.json", fit.to_dict())
        for d in fit.diagnostics:
            self.store.log(f"fit {d.name}: rmse {d.rmse:.2e}, out-of-fold max {d.oof_max_rel_error:.2%}" + ("  POORLY IDENTIFIED" if d.poorly_identified else ""))

    def recorded_fit(self, name: str = "fit.json") -> Fit:
        fit_json = self.store.read_json(name)
        if fit_json is None:
            raise ConfigError(f"no {name}; run the fit stage first")
        return Fit.from_dict(fit_json)

    def stage_solve(self) -> None:
        fit = self.recorded_fit()
        solution = self.solve(fit, self.constraints())
        self.store.write_json("solution.json", solution)
        # The previous solve's probe outcome refitted another fit: it no longer answers.
        self.store.discard("fit_final.json", "solution_final.json", "selection.json")
        for budget, w in solution["weights"].items():
            self.store.log(f"solve N={float(budget):,.0f}: " + ", ".join(f"{n}={x:.3f}" for n, x in zip(fit.domains, w)))
        for name, w in solution["probes"].items():
            self.store.log(f"solve: the fit variants disagree; probe {name} at N={self.validate_budget:,}: " + ", ".join(f"{n}={x:.3f}" for n, x in zip(fit.domains, w)))
        self.validation()  # validation_plan.json, read by the validate stage, its job-array tasks and the report

    def stage_validate(self) -> None:
        specs, skipped = self.validation()
        for label, why in skipped.items():
            self.store.log(f"validate: skipping {label}: {why}")
        self.store.write_json("validation_skipped.json", skipped)
        failed = self._train(specs, "validation runs", "validation.csv", specs)
        probes = [s for s in specs if s.label.startswith("probe-")]
        if probes and not any(s.name in failed for s in probes):
            self.settle(probes)

    def solve(self, fit: Fit, constraints: Constraints) -> dict:
        """solution.json's content for ``fit``: every target budget and the validation budget,
        and (``probes``) the probe mixtures at the validation budget where the fit's tied
        families disagree there."""
        solution = solve_mixture(fit, [*self.config.target_budgets, self.validate_budget], constraints, self.config.seed)
        disagreement = solution["disagreement"].get(f"{float(self.validate_budget):g}")
        return solution | {"probes": disagreement["probes"] if disagreement else {}}

    def settle(self, probes: Sequence[RunSpec]) -> None:
        """The probe runs choose between the families of fit.json: scored on them, the
        chosen one refitted on runs.csv + the probe runs (every probe mixture at every seed),
        solved again; fit_final.json, solution_final.json and selection.json record the
        outcome, probes.csv the probe runs."""
        names = self.config.domain_names
        measured = self.store.run_table(probes, names, "probe runs", self.config.target_names)
        self.store.write_table("probes.csv", probes, names, self.config.target_names)
        train = read_run_table(self.store.path("runs.csv"))
        key = jax.random.fold_in(jax.random.key(self.config.seed), 2)
        fit, report = settle_with_probes(self.recorded_fit(), train, measured, self.config.fit, key)
        solution = self.solve(fit, self.constraints())
        self.store.write_json("fit_final.json", fit.to_dict())
        self.store.write_json("solution_final.json", solution)
        self.store.write_json("selection.json", {**report, "probe_runs": len(measured.tokens)})
        scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(report["scores"].items(), key=lambda kv: kv[1]))
        self.store.log(f"validate: {len(measured.tokens)} probe runs chose the fit variant {report['chosen']} (probe RMSE: {scores or 'none'})")
        w = solution["weights"][f"{self.validate_budget:g}"]
        self.store.log(f"validate: refit with the probes, N={self.validate_budget:,}: " + ", ".join(f"{n}={x:.3f}" for n, x in zip(names, w)))

    def stage_report(self) -> None:
        from mixjax.pipeline.report import ReportInputs, read_validation, write_report

        answer = self.store.answer()
        if answer is None or not self.store.path("fit.json").exists():
            self.store.log("report: skipped, no fit/solution")
            return
        names = self.config.domain_names
        plan = self.store.read_json("validation_plan.json") or {}
        validated = self.store.path("validation.csv")
        measured = read_validation(validated, names, self.config.target_names) if validated.exists() else {}
        run_names = [s.name for s in self.store.plan()] + [r["name"] for r in plan.get("runs", [])]
        report = ReportInputs(
            name=self.config.name, domains=names, fit=self.recorded_fit(), solution=self.store.read_json("solution.json"),
            runs_csv=self.store.path("runs.csv"), target_budgets=tuple(self.config.target_budgets),
            validate_budget=self.validate_budget, constraints=self.constraints(), measured=measured,
            skipped=plan.get("skipped", {}), histories=self.store.histories(run_names), base_model=self.inputs().config.checkpoint,
            failed=dict(self.failed), selection=self.store.read_json("selection.json"),
            solution_final=self.store.read_json("solution_final.json"), answer=answer.describe(),
        )
        if self.store.primary:
            write_report(report, self.store.dir)
        self.store.log(f"report: {self.store.path('report.md')} (answer: {answer.describe()})")

    def run(self, stages: Sequence[str] = STAGES) -> None:
        for stage in STAGES:
            if stage not in stages:
                continue
            if self.failed and stage in ("fit", "solve", "validate", "report"):
                if stage != "report" or any(not n.startswith("validate-") for n in self.failed):
                    self.store.log(f"{stage}: skipped, {len(self.failed)} run(s) failed")
                    continue
            getattr(self, f"stage_{stage}")()
        if self.failed:
            raise RunsFailed(self.failed)

    def run_one(self, index: int, kind: str = "perturb") -> None:
        """Train one run (a SLURM array task): perturbation run ``index`` of plan.json (plans
        first if needed), or with ``kind="validate"`` validation run ``index`` (every mixture
        at every seed; needs solution.json). A later ``--stages validate,report`` reuses them."""
        if kind == "validate":
            specs = self.validation()[0]
        else:
            if not self.store.plan():
                self.stage_plan()
            specs = self.perturbation_specs()
        if not 0 <= index < len(specs):
            raise ConfigError(f"--run {kind}:{index}: there are {kind} runs 0..{len(specs) - 1}")
        self._train([specs[index]], f"{kind} run {index}", "validation.csv" if kind == "validate" else "runs.csv", specs)
        if self.failed:
            raise RunsFailed(self.failed)


def run_pipeline(config: ExperimentConfig, stages: Sequence[str] = STAGES, options: Options = Options(), log: Callable[[str], None] = print) -> Pipeline:
    pipeline = Pipeline(config, options, log)
    pipeline.run(stages)
    return pipeline
