"""The run store: an experiment directory and the files in it.

    plan.json            the planned perturbation runs (name, tokens per domain) and the
                         training tokens available per domain
    validation_plan.json the validation runs (every mixture at every seed), the skipped
                         mixtures, and the solution and validate config they were made from
    runs/<name>/         one directory per training run:
        spec.json        the run's spec, fingerprint and the tokens actually selected
        result.json      written by the trainer when the run finished
        failed.json      the error that stopped the run (removed when it is retried)
        checkpoints/     the trainer's; deleted once result.json is written (the best
                         step's params kept with ``keep_best_params``)
    runs.csv             per-domain tokens and losses of the finished perturbation runs
    validation.csv       the same for the validation runs, with each run's name, mixture
                         label, seed and weights
    probes.csv           the probe mixtures' validation runs the refit used
    solution.json        the solve of fit.json at every budget (solution_final.json and
                         fit_final.json: after the probe runs refitted the law)
    log.txt              the pipeline's log

Every file is written atomically and only by process 0 (multi-host runs).
"""

from __future__ import annotations

import dataclasses
import math
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from mixjax.io import atomic_path, barrier, is_primary_process, write_json_atomic
import numpy as np

from mixjax.mixing.runs import RunTable, RunTableError, write_run_table
from mixjax.pipeline.config import ConfigError
from mixjax.pipeline.fingerprint import describe, differences
from mixjax.train.checkpoint import release_finished


class FingerprintMismatch(ConfigError):
    """A finished (or started) run was trained with another setup than the config now gives."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str  # "perturb" or "validate"
    tokens: dict[str, int]  # planned tokens per domain
    weights: dict[str, float] | None = None
    seed: int | None = None  # None: the config's seed (validation runs repeat a mixture at several seeds)
    label: str | None = None  # validation runs: the mixture's name ("optimal", "uniform", "grid-...", "probe-...")


class RunStore:
    def __init__(self, directory: str | Path, log: Callable[[str], None] = print, primary: bool | None = None) -> None:
        self.dir = Path(directory)
        self.primary = is_primary_process() if primary is None else primary
        if self.primary:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._log = log

    def log(self, message: str) -> None:
        if not self.primary:
            return
        self._log(message)
        with open(self.dir / "log.txt", "a") as f:
            f.write(message + "\n")

    # ------------------------------------------------------------------ plain files

    def path(self, name: str) -> Path:
        return self.dir / name

    def read_json(self, name: str) -> dict | None:
        path = self.dir / name
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, payload) -> None:
        if self.primary:
            write_json_atomic(self.dir / name, payload)

    # ------------------------------------------------------------------ plan

    def write_plan(self, specs: Sequence[RunSpec], available: dict[str, int] | None = None, design: dict | None = None) -> None:
        """plan.json: the runs, the training tokens each domain has (counted once here; later
        stages read them instead of tokenizing the data again) and the design that drew them."""
        self.write_json("plan.json", {"runs": [dataclasses.asdict(s) for s in specs], "available": available, "design": design})
        barrier("mixjax-plan")

    def available(self) -> dict[str, int] | None:
        """The training tokens per domain recorded by the plan stage (None: no plan, or an old one)."""
        plan = self.read_json("plan.json")
        return plan.get("available") if plan else None

    def plan(self) -> list[RunSpec]:
        plan = self.read_json("plan.json")
        return [RunSpec(**s) for s in plan["runs"]] if plan else []

    # ------------------------------------------------------------------ runs

    def run_dir(self, name: str) -> Path:
        return self.dir / "runs" / name

    def record(self, name: str) -> dict | None:
        """spec.json: the spec, fingerprint and selected tokens the run was started with."""
        path = self.run_dir(name) / "spec.json"
        return json.loads(path.read_text()) if path.exists() else None

    def result(self, name: str) -> dict | None:
        path = self.run_dir(name) / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def start(self, spec: RunSpec, fingerprint: dict, selected_tokens: dict[str, int]) -> None:
        if not self.primary:
            return
        self.run_dir(spec.name).mkdir(parents=True, exist_ok=True)
        (self.run_dir(spec.name) / "failed.json").unlink(missing_ok=True)
        record = {**dataclasses.asdict(spec), "fingerprint": fingerprint, "selected_tokens": selected_tokens}
        write_json_atomic(self.run_dir(spec.name) / "spec.json", record)

    def release_checkpoints(self, names: Sequence[str], keep_best_params: bool = False) -> int:
        """Delete the checkpoints of the FINISHED runs among ``names`` (those with a
        result.json; a run in progress keeps its full saves to resume from), keeping each
        one's best params only with ``keep_best_params``. Returns the bytes freed."""
        if not self.primary:
            return 0
        freed = 0
        for name in names:
            result = self.result(name)
            if result is not None:
                freed += release_finished(self.run_dir(name) / "checkpoints", best_step=result.get("best_step"), keep_best_params=keep_best_params)
        return freed

    def mark_failed(self, name: str, error: BaseException) -> None:
        if self.primary:
            write_json_atomic(self.run_dir(name) / "failed.json", {"error": f"{type(error).__name__}: {error}"})

    def discard(self, *names: str) -> None:
        """Delete experiment files (``path(name)``) that no longer hold, if present."""
        if self.primary:
            for name in names:
                self.path(name).unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        if self.primary:
            shutil.rmtree(self.run_dir(name), ignore_errors=True)

    def stale(self, spec: RunSpec, fingerprint: dict) -> list[tuple]:
        """The fingerprint fields that differ from the ones the run was started with."""
        record = self.record(spec.name)
        if record is None:
            return []
        return differences(record.get("fingerprint", {}), fingerprint)

    def check_fresh(self, checks: Sequence[tuple[RunSpec, dict]], retrain: bool) -> list[str]:
        """Raise FingerprintMismatch (before any training) when a recorded run was made with
        another setup; with ``retrain``, delete those runs instead. Returns their names."""
        stale = [(spec.name, diffs) for spec, fp in checks if (diffs := self.stale(spec, fp))]
        if not stale:
            return []
        if not retrain:
            names = ", ".join(n for n, _ in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
            raise FingerprintMismatch(
                f"{len(stale)} run(s) in {self.dir} ({names}) were trained with another setup: {describe(stale[0][1])}."
                " Use a new experiment name (--set name=...) or --retrain to train them again"
            )
        for name, diffs in stale:
            self.log(f"retrain {name}: {describe(diffs)}")
            self.remove(name)
        barrier("mixjax-retrain")
        return [n for n, _ in stale]

    # ------------------------------------------------------------------ tables

    def histories(self, names: Sequence[str]) -> dict[str, list[dict]]:
        return {n: r.get("history", []) for n in names if (r := self.result(n)) is not None}

    def finished(self, specs: Sequence[RunSpec], domains: Sequence[str], targets: Sequence[str] = ()) -> list[tuple[RunSpec, list[int], list[float]]]:
        """(spec, tokens actually selected per domain, best checkpoint's losses of the domains
        then the targets (NaN where a run did not measure one)) of every finished run among
        ``specs``, in their order."""
        rows = []
        for spec in specs:
            result, record = self.result(spec.name), self.record(spec.name)
            if result is not None:
                tokens = (record or {}).get("selected_tokens") or spec.tokens
                losses = result["best_losses"]
                rows.append((spec, [tokens[d] for d in domains], [losses[d] for d in domains] + [losses.get(t, math.nan) for t in targets]))
        return rows

    def run_table(self, specs: Sequence[RunSpec], domains: Sequence[str], source: str, targets: Sequence[str] = ()) -> RunTable:
        """The finished runs among ``specs`` as a run table (what :meth:`write_table` writes).

        Raises:
          RunTableError: none of them has finished."""
        rows = self.finished(specs, domains, targets)
        if not rows:
            raise RunTableError(f"{source}: no finished runs")
        return RunTable(tuple(domains), np.array([r[1] for r in rows], np.float64), np.array([r[2] for r in rows], np.float64),
                        tuple(range(2, len(rows) + 2)), source, tuple(targets))

    def write_table(self, filename: str, specs: Sequence[RunSpec], domains: Sequence[str], targets: Sequence[str] = ()) -> int:
        """runs.csv / validation.csv / probes.csv from the finished runs: the tokens actually
        selected per domain (not the planned ones) and the best checkpoint's losses; runs
        with a label (validation runs) also record ``run``, ``label``, ``seed`` and
        ``weight.<domain>``. Returns the number of rows."""
        rows = self.finished(specs, domains, targets)
        if rows and self.primary:
            extra = {}
            if all(spec.label is not None for spec, _, _ in rows):
                extra = {"run": [s.name for s, _, _ in rows], "label": [s.label for s, _, _ in rows], "seed": [s.seed for s, _, _ in rows]}
                extra |= {f"weight.{d}": [repr(float(s.weights[d])) for s, _, _ in rows] for d in domains}
            with atomic_path(self.dir / filename) as tmp:
                write_run_table(tmp, domains, [r[1] for r in rows], [r[2] for r in rows], extra, targets)
        return len(rows)

    # ------------------------------------------------------------------ the answer

    def answer(self) -> "Answer | None":
        """The experiment's answer (:class:`Answer`); None before the solve stage."""
        for solution, fit, why in (("solution_final.json", "fit_final.json", "after the probe runs refitted the law"),
                                   ("solution.json", "fit.json", "the fit of the perturbation runs")):
            if self.path(solution).exists():
                return Answer(self.path(solution), self.path(fit), why, self.read_json(solution))
        return None


@dataclasses.dataclass(frozen=True)
class Answer:
    """Which recorded file is an experiment's answer: ``solution_final.json`` (and
    ``fit_final.json``) once validation's probe runs refitted the law, else
    ``solution.json`` (and ``fit.json``). The report, ``mixjax.mix`` and its ``--export``
    read it and say which file they used."""

    solution_path: Path
    fit_path: Path
    why: str
    solution: dict

    def weights(self, budget: float, domains: Sequence[str]) -> np.ndarray | None:
        """The solved weights at ``budget`` (None: the solve did not cover it)."""
        if tuple(self.solution.get("domains", domains)) != tuple(domains):
            return None
        weights = self.solution.get("weights", {}).get(f"{float(budget):g}")
        return None if weights is None else np.asarray(weights, np.float64)

    def describe(self) -> str:
        return f"{self.solution_path.name} ({self.why})"
