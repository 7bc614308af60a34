"""How the law is fitted: :class:`FitConfig` and its sections.

One set of defaults serves the library, ``python -m mixjax.fit`` and the pipeline
(``ExperimentConfig.fit``); ``fit.json`` records the whole config. Sections:

- :class:`FamilyConfig`: the joint fits of the law families (paper, transfer, exp);
- :class:`TwoStageConfig`: the paper's two-stage procedure (arXiv 2508.11953, Sec. 3.2),
  the start of every law fit and, with ``FitConfig.paper_fit = "two-stage"``, the paper
  family's fit itself;
- :class:`FoldConfig`: the folds of whole runs every family is scored on;
- :class:`CheckConfig`: the thresholds that flag a domain as poorly identified;
- :class:`DecisionConfig`: the plausible laws and the recommendation made from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

Procedure = Literal["mixjax", "paper"]
AlphaMode = Literal["auto", "prior", "fitted"]
FamilyChoice = Literal["auto", "paper", "transfer"]
PaperFit = Literal["joint", "two-stage"]
PROCEDURES: tuple[str, ...] = get_args(Procedure)
ALPHA_MODES: tuple[str, ...] = get_args(AlphaMode)
FAMILY_CHOICES: tuple[str, ...] = get_args(FamilyChoice)
PAPER_FITS: tuple[str, ...] = get_args(PaperFit)


@dataclasses.dataclass(frozen=True)
class TwoStageConfig:
    """The paper's two-stage procedure (:mod:`mixjax.mixing.fit.two_stage`)."""

    procedure: Procedure = "mixjax"
    """Stage-1 statistic: "mixjax", the log of the ratio of loss differences; "paper", the
    released reference code's ratio of logs."""
    alpha_mode: AlphaMode = "auto"
    """"prior": alpha held at ``alpha_prior`` (own series); "fitted": on every run; "auto":
    per domain, by leave-one-run-out error."""
    alpha_prior: float = 0.5
    num_starts: int = 32
    huber_delta_ratio: float = 1e-3  # stage 1, on the quads' statistic (the paper's value)
    huber_delta_loss: float = 1e-2  # stages 2-3, on losses (nats): quadratic for inliers (~1e-3)
    beta_bounds: tuple[float, float] = (1e-6, 5.0)  # wide: the reference's betas reach 2e-3
    maxiter: int = 40  # Levenberg-Marquardt steps per stage
    refine_residual: float = 0.05
    """Stage 3 (joint refit) runs when stage 1's beta is on a bound or stage 2 misses a loss
    by more than this fraction of the losses' range."""
    bootstrap_samples: int = 0  # residual-bootstrap refits for weight intervals
    bootstrap_starts: int = 8  # starts of each fold and bootstrap refit (one is the full fit)

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise ValueError(f"fit procedure must be one of {PROCEDURES}, got {self.procedure!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")

    def numerics(self) -> "TwoStageConfig":
        """Only the fields the jitted fit depends on (the rest would only cause recompiles)."""
        return TwoStageConfig(
            procedure=self.procedure, alpha_prior=self.alpha_prior, huber_delta_ratio=self.huber_delta_ratio,
            huber_delta_loss=self.huber_delta_loss, beta_bounds=self.beta_bounds, maxiter=self.maxiter,
            refine_residual=self.refine_residual,
        )


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """The joint fits of the law families (:mod:`mixjax.mixing.fit.families`)."""

    scored: tuple[str, ...] = ("paper", "transfer", "exp")  # fitted and scored out-of-fold
    transfer_prior: float = 2.0  # prior std of log t_ij (toward the paper's law, t = 1); 2 by RegMix out-of-fold error
    transfer_rho_min: float = 0.1  # lower bound of the transfer law's CES exponent (1: linear sum)
    huber_delta: float = 0.2  # nats; ~least squares at SFT noise levels
    noise_floor: float = 1e-2  # nats: the smallest loss noise the transfer prior assumes
    beta_bounds: tuple[float, float] = (0.01, 5.0)
    num_starts: int = 2
    iterations: int = 80  # LM steps of the full fits (fold refits, warm: a quarter)
    reference_gbm: bool = False  # also score LightGBM out-of-fold (a reference, never solved)


@dataclasses.dataclass(frozen=True)
class FoldConfig:
    """Folds of whole runs (:func:`mixjax.mixing.fit.folds.run_folds`)."""

    enabled: bool = True  # out-of-fold refits at all
    max_leave_one_out: int = 25  # leave-one-run-out up to this many runs
    kfold: int = 10  # random folds of whole runs above it


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the per-domain diagnostics."""

    max_oof_rel_error: float = 0.01  # out-of-fold error relative to the loss
    max_start_spread: float = 0.1  # two-stage: near-best starts disagreeing on beta or A/M


Prior = Literal["uniform", "proportional"]


@dataclasses.dataclass(frozen=True)
class DecisionConfig:
    """How the recommendation is made from the plausible laws (:mod:`mixjax.mixing.decision`)."""

    samples: int = 32
    """Refits of every candidate family on residual-bootstrap tables (the fit's predictions
    plus its out-of-fold errors resampled over runs); 0: the point fit alone."""
    equivalence: float = 0.1
    """Families tie when their out-of-fold RMSE is within this fraction of the best one's
    (differences the runs' noise cannot resolve), or not significantly worse."""
    prior: Prior = "uniform"
    """The mixture the recommendation is pulled toward ("proportional": to the available tokens)."""
    quantile: float = 0.1
    """The pull's strength is the one whose gain over the prior, at this quantile of the
    plausible laws, is largest (0 gain: the prior itself)."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The whole fit: which family is solved, and each section's settings."""

    family: FamilyChoice = "auto"
    """"auto": the family that extrapolates in N with the lowest out-of-fold RMSE (ties:
    :mod:`mixjax.mixing.selection`); "paper" / "transfer": that one."""
    paper_fit: PaperFit = "joint"
    """"joint": all five parameters from the two-stage start; "two-stage": the paper's own
    procedure alone (needs ``family="paper"``; gives bootstrap intervals)."""
    families: FamilyConfig = FamilyConfig()
    two_stage: TwoStageConfig = TwoStageConfig()
    folds: FoldConfig = FoldConfig()
    checks: CheckConfig = CheckConfig()
    decision: DecisionConfig = DecisionConfig()

    def __post_init__(self) -> None:
        if self.family not in FAMILY_CHOICES:
            raise ValueError(f"family must be one of {FAMILY_CHOICES}, got {self.family!r}")
        if self.paper_fit not in PAPER_FITS:
            raise ValueError(f"paper_fit must be one of {PAPER_FITS}, got {self.paper_fit!r}")
        if self.paper_fit == "two-stage" and self.family != "paper":
            raise ValueError(f"paper_fit='two-stage' fits the paper family alone: set family='paper' (got {self.family!r})")
        if self.decision.prior not in ("uniform", "proportional"):
            raise ValueError(f"decision.prior must be uniform or proportional, got {self.decision.prior!r}")
        if not 0 < self.decision.quantile < 1:
            raise ValueError(f"decision.quantile must be in (0, 1), got {self.decision.quantile}")
        if self.two_stage.bootstrap_samples and not self.two_stage_only:
            raise ValueError("two_stage.bootstrap_samples: bootstrap intervals come with paper_fit='two-stage' (family='paper')")

    @property
    def two_stage_only(self) -> bool:
        """True when the paper's two-stage procedure is the whole fit."""
        return self.paper_fit == "two-stage"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        """Read back :meth:`to_dict`. Raises ValueError naming an unknown field."""
        return _from_dict(cls, d, "fit config")


def _from_dict(cls, d: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} (have: {', '.join(fields)})")
    values = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
