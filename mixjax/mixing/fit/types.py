"""The fit's data types: what one domain's fit sees, its configuration, and its result.

Source: Li, Liu & Xing, "Data Mixing Optimization for Supervised Fine-Tuning of Large
Language Models", ICML 2025 (arXiv 2508.11953), Sec. 3 (the law and its two-stage fit).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import numpy as np

from mixjax.mixing.law import LawParams

Procedure = Literal["mixjax", "paper"]
Family = Literal["auto", "paper", "transfer", "two-stage"]  # "exp" is scored, never solved
AlphaMode = Literal["auto", "prior", "fitted"]
PROCEDURES: tuple[str, ...] = get_args(Procedure)
ALPHA_MODES: tuple[str, ...] = get_args(AlphaMode)
FAMILY_CHOICES: tuple[str, ...] = get_args(Family)


@dataclasses.dataclass(frozen=True)
class DomainData:
    """What the fit of one domain sees, in the user's token units.

    ``in_domain``/``loss``: the runs that perturb only this domain (its own series, base
    run included), all at the same other-domain tokens ``other`` (may be empty when the
    table has no base run, e.g. a random swarm). ``cross_*``: every other run where this
    domain's loss was measured (they vary ``M`` and so identify ``alpha``).

    Token counts may be zero (a run without this domain measures the transfer-only loss
    ``c (gamma M^alpha)^-beta + e``, or one that trains only this domain ``M = 0``), but
    not negative, and every run trains some tokens.

    Raises:
      ValueError: fewer than 3 points, negative or all-zero tokens, non-finite losses.
    """

    name: str
    in_domain: np.ndarray
    other: float
    loss: np.ndarray
    cross_in_domain: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_other: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        order = np.argsort(self.in_domain)
        object.__setattr__(self, "in_domain", np.asarray(self.in_domain, np.float64)[order])
        object.__setattr__(self, "loss", np.asarray(self.loss, np.float64)[order])
        for name in ("cross_in_domain", "cross_other", "cross_loss"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float64))
        total = len(self.in_domain) + len(self.cross_loss)
        if len(self.in_domain) < 3 and (len(self.in_domain) > 0 or total < 3):
            raise ValueError(f"domain {self.name!r}: {len(self.in_domain)} points, the fit needs >= 3")
        x, m, loss = self.points()
        if not (np.all(x >= 0) and np.all(m >= 0) and np.all(x + m > 0)):
            raise ValueError(f"domain {self.name!r}: token counts must be >= 0 and every run must train some tokens")
        if len(self.in_domain) and not self.other > 0:
            raise ValueError(f"domain {self.name!r}: the own series needs positive other-domain tokens, got {self.other}")
        if not np.all(np.isfinite(loss)):
            raise ValueError(f"domain {self.name!r}: losses must be finite")

    @property
    def has_series(self) -> bool:
        return len(self.in_domain) >= 3

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every run of this domain: (in-domain tokens, other tokens, loss), series first."""
        x = np.concatenate([self.in_domain, self.cross_in_domain])
        m = np.concatenate([np.full(len(self.in_domain), self.other), self.cross_other])
        return x, m, np.concatenate([self.loss, self.cross_loss])


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How the law is fitted; one set of defaults serves the library, ``mixjax.fit`` and
    the pipeline, and ``fit.json`` records the whole config."""

    num_starts: int = 32
    huber_delta_ratio: float = 1e-3  # stage 1, on the quads' statistic (the paper's value)
    huber_delta_loss: float = 1e-2  # stages 2-3, on losses: quadratic for inliers (~1e-3)
    alpha_prior: float = 0.5
    beta_bounds: tuple[float, float] = (1e-6, 5.0)
    maxiter: int = 40  # Levenberg-Marquardt steps per stage
    # "mixjax": stage 1 on the log of the ratio of differences; "paper": the released
    # reference's ratio of logs (see mixjax.mixing.fit).
    procedure: Procedure = "mixjax"
    # "auto": per domain, alpha at the prior (own series) or fitted (every run), by
    # leave-one-run-out error; "prior" / "fitted" force one.
    alpha_mode: AlphaMode = "auto"
    leave_one_out: bool = True  # out-of-fold refits (leave-one-run-out up to max_folds runs)
    max_folds: int = 25
    bootstrap_samples: int = 0  # two-stage only: bootstrap refits for weight intervals
    bootstrap_starts: int = 8  # starts of each fold and bootstrap refit (one is the full fit)
    # Diagnostics thresholds.
    max_loo_rel_error: float = 0.01
    max_start_spread: float = 0.1
    # Stage 3 (repair) runs when stage 1's beta is on a bound or stage 2 misses a loss by
    # more than this fraction of the losses' range.
    refine_residual: float = 0.05
    # Law families (mixjax.mixing.families.fit_table), every one scored on the same folds:
    # "auto" keeps the family that extrapolates in N with the lowest out-of-fold RMSE;
    # "paper" / "transfer" force one; "two-stage" is the paper's own per-domain
    # procedure (stage 1 on ratios of loss differences, ``procedure`` and ``alpha_mode``
    # above; bootstrap intervals), not scored against the families.
    family: Family = "auto"
    families: tuple[str, ...] = ("paper", "transfer", "exp")
    transfer_prior: float = 2.0  # prior std of log t_ij (toward the paper's law, t = 1); 2 by RegMix out-of-fold error
    transfer_rho_min: float = 0.1  # lower bound of the transfer law's CES exponent (1: linear sum)
    family_huber_delta: float = 0.2  # Huber delta of the family fits (nats; ~least squares)
    kfold: int = 10  # folds of whole runs for tables with more than max_folds runs
    num_family_starts: int = 2
    family_iterations: int = 80  # LM steps of the full fits (fold refits, warm: a quarter)
    reference_gbm: bool = False  # also score LightGBM out-of-fold (a reference, never solved)

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise ValueError(f"fit procedure must be one of {PROCEDURES}, got {self.procedure!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")
        if self.family not in FAMILY_CHOICES:
            raise ValueError(f"family must be one of {FAMILY_CHOICES}, got {self.family!r}")

    def numerics(self) -> "FitConfig":
        """Only the fields the jitted fit depends on (the rest would only cause recompiles)."""
        return FitConfig(
            huber_delta_ratio=self.huber_delta_ratio,
            huber_delta_loss=self.huber_delta_loss,
            alpha_prior=self.alpha_prior,
            beta_bounds=self.beta_bounds,
            maxiter=self.maxiter,
            procedure=self.procedure,
            refine_residual=self.refine_residual,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        """Read back :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"fit config: unknown field(s) {unknown} (have: {', '.join(sorted(names))})")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class DomainDiagnostics:
    name: str
    residuals: list[float]
    rmse: float
    max_abs_residual: float
    loo_errors: list[float]
    loo_max_rel_error: float
    stage1_objective: float
    beta_start_spread: float
    transfer_start_spread: float
    transferred_fraction: float
    alpha_identified: bool
    refined: bool
    notes: list[str]
    poorly_identified: bool
    # Added with the any-design fit (defaults keep older fit.json files readable).
    procedure: str = "mixjax"
    alpha_choice: str = "prior"  # "prior" (own series, alpha held) or "fitted" (every run)
    loo_rmse_prior: float = float("nan")  # leave-one-run-out RMSE over every run, per variant
    loo_rmse_fitted: float = float("nan")
    oof_rmse: float = float("nan")  # out-of-fold RMSE / Spearman of the chosen variant
    oof_spearman: float = float("nan")
    num_runs: int = 0
    measured: bool = True  # False: trained but never measured, no law of its own

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FitResult:
    domains: tuple[str, ...]
    params: LawParams
    diagnostics: tuple[DomainDiagnostics, ...]
    bootstrap_params: LawParams | None = None
    # Pooled over domains: out-of-fold RMSE and Spearman of predicted vs measured losses.
    validation: dict[str, float] | None = None
    config: FitConfig | None = FitConfig()  # the whole config this fit ran with (fit.json records it; None: not recorded)

    @property
    def has_law(self) -> np.ndarray:
        """(k,) bool: the domains with a law of their own (False: trained, never measured)."""
        if not self.diagnostics:
            return np.ones(len(self.domains), bool)
        return np.array([d.measured for d in self.diagnostics], bool)

    def params_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {f: float(getattr(self.params, f)[i]) for f in LawParams._fields}
            for i, name in enumerate(self.domains)
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        law = lambda p: None if p is None else {f: np.asarray(getattr(p, f)).tolist() for f in LawParams._fields}
        return {
            "domains": list(self.domains),
            "params": law(self.params),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "bootstrap_params": law(self.bootstrap_params),
            "validation": self.validation,
            "config": None if self.config is None else self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitResult":
        law = lambda p: None if p is None else LawParams(*(np.asarray(p[f], np.float64) for f in LawParams._fields))
        return cls(
            domains=tuple(d["domains"]),
            params=law(d["params"]),
            diagnostics=tuple(DomainDiagnostics(**x) for x in d["diagnostics"]),
            bootstrap_params=law(d["bootstrap_params"]),
            validation=d.get("validation"),
            config=FitConfig.from_dict(d["config"]) if d.get("config") is not None else None,
        )
