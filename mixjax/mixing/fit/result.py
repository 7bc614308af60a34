"""The result of every fit (:class:`Fit`) and the one prediction function (:func:`predict`).

A :class:`Fit` holds the chosen family's parameters over every domain of the table, the
other extrapolating families' fits (``variants``), every family's out-of-fold scores and
per-domain diagnostics; the paper's two-stage procedure adds its own per-domain record
(:class:`TwoStageDiagnostics`) and, optionally, bootstrap refits. ``fit.json`` is
:meth:`Fit.to_dict`; :meth:`Fit.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.families import FAMILIES
from mixjax.mixing.law import AnyLawParams, LawParams, TransferLawParams


@dataclasses.dataclass(frozen=True)
class TwoStageDiagnostics:
    """What the paper's two-stage procedure (:mod:`mixjax.mixing.fit.two_stage`) says of one domain."""

    procedure: str
    stage1_objective: float
    beta_start_spread: float  # relative spread of beta over the near-best stage-1 starts
    transfer_start_spread: float
    transferred_fraction: float  # A / M of stage 1 (1: the transfer constraint binds)
    alpha_identified: bool
    alpha_choice: str  # "prior" (own series, alpha held) or "fitted" (every run)
    refined: bool  # stage 3 (the joint refit) kept
    loo_rmse_prior: float = float("nan")  # leave-one-run-out RMSE of each alpha variant (nats)
    loo_rmse_fitted: float = float("nan")


@dataclasses.dataclass(frozen=True)
class DomainDiagnostics:
    """How well the chosen law fits one domain (losses in nats).

    ``residuals``/``oof_errors``: predicted minus measured loss of every run where the
    domain was measured (``oof``: predicted by the fit that did not see that run).
    """

    name: str
    measured: bool = True  # False: trained but never measured, no law of its own
    residuals: list[float] = dataclasses.field(default_factory=list)
    rmse: float = float("nan")
    max_abs_residual: float = float("nan")
    oof_errors: list[float] = dataclasses.field(default_factory=list)
    oof_max_rel_error: float = float("nan")
    oof_rmse: float = float("nan")
    oof_spearman: float = float("nan")
    num_runs: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    poorly_identified: bool = False
    two_stage: TwoStageDiagnostics | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DomainDiagnostics":
        two = d.get("two_stage")
        return cls(**{**d, "two_stage": None if two is None else TwoStageDiagnostics(**two)})


UNMEASURED_NOTE = "trained but never measured: no law of its own (importance 0); its tokens count in the others' transfer"


def unmeasured(name: str) -> DomainDiagnostics:
    """The diagnostics of a domain that was trained but never measured."""
    return DomainDiagnostics(name=name, measured=False, notes=[UNMEASURED_NOTE])


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted law over every output of a run table: its k domains, then its T targets
    (:attr:`outputs`, P = k + T; a target is a loss no run trains on).

    ``params``: the chosen family's parameters, (P,) per field (and the transfer matrix
    (P, P)), in the table's token units; a target's own tokens are always 0 (its law is the
    transfer-only form) and it transfers nothing; a domain never measured has ``c = e = 0`` (no
    law, loss 0) and still transfers its tokens. ``scores[family]``: out-of-fold ``rmse``
    (every measured cell), ``total_rmse`` / ``total_spearman`` (per-run sums),
    ``domain_spearman``, ``extrapolates``, ``seconds``. ``variants``: every extrapolating
    family's fit; ``candidates``: those the runs cannot tell from the chosen one.
    ``validation``: the chosen fit's pooled out-of-fold ``oof_rmse``, ``oof_spearman``,
    ``num_points``, ``folds``.
    """

    domains: tuple[str, ...]
    params: AnyLawParams
    diagnostics: tuple[DomainDiagnostics, ...] = ()
    family: str = "paper"
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    variants: dict[str, AnyLawParams] = dataclasses.field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    exp_params: dict[str, np.ndarray] | None = None
    notes: tuple[str, ...] = ()
    validation: dict[str, float] | None = None
    bootstrap_params: LawParams | None = None  # two-stage: (B, k) per field
    config: FitConfig | None = FitConfig()
    # Plausible laws: every extrapolating family refitted on residual-bootstrap tables,
    # (B, k) per field (transfer (B, k, k)), in the table's token units.
    samples: dict[str, AnyLawParams] = dataclasses.field(default_factory=dict)
    targets: tuple[str, ...] = ()

    @property
    def outputs(self) -> tuple[str, ...]:
        """The laws' names: every domain, then every target."""
        return self.domains + self.targets

    @property
    def has_law(self) -> np.ndarray:
        """(P,) bool: the outputs with a law of their own (False: trained, never measured)."""
        if not self.diagnostics:
            return np.ones(len(self.outputs), bool)
        return np.array([d.measured for d in self.diagnostics], bool)

    def variant(self, family: str) -> "Fit":
        """This fit with ``family``'s parameters (one of ``variants``) as the chosen law."""
        return dataclasses.replace(self, family=family, params=self.variants[family])

    def params_dict(self) -> dict[str, dict[str, float]]:
        return {name: {f: float(getattr(self.params, f)[i]) for f in LawParams._fields} for i, name in enumerate(self.outputs)}

    def score_table(self) -> str:
        """The out-of-fold table, one line per family (* = the chosen one)."""
        lines = [f"{'family':10s} {'extrap. N':>9s} {'RMSE':>9s} {'total RMSE':>10s} {'total Spearman':>14s} {'domain Spearman':>15s}"]
        for name, s in self.scores.items():
            mark = "*" if name == self.family else " "
            lines.append(
                f"{mark}{name:9s} {'yes' if s['extrapolates'] else 'no':>9s} {s['rmse']:9.4f} {s['total_rmse']:10.4f}"
                f" {s['total_spearman']:14.4f} {s['domain_spearman']:15.4f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``fit.json``); :meth:`from_dict` reads it back."""
        return {
            "domains": list(self.domains),
            "targets": list(self.targets),
            "family": self.family,
            "params": _law_to_dict(self.params),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "scores": self.scores,
            "variants": {name: _law_to_dict(p) for name, p in self.variants.items()},
            "candidates": list(self.candidates),
            "exp_params": None if self.exp_params is None else {k: np.asarray(v).tolist() for k, v in self.exp_params.items()},
            "notes": list(self.notes),
            "validation": self.validation,
            "bootstrap_params": None if self.bootstrap_params is None else _law_to_dict(self.bootstrap_params),
            "config": None if self.config is None else self.config.to_dict(),
            "samples": {name: _law_to_dict(p) for name, p in self.samples.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fit":
        """Read back :meth:`to_dict`. Raises KeyError / ValueError on another layout."""
        return cls(
            domains=tuple(d["domains"]),
            targets=tuple(d.get("targets", ())),
            params=_law_from_dict(d["params"]),
            diagnostics=tuple(DomainDiagnostics.from_dict(x) for x in d.get("diagnostics", ())),
            family=d.get("family", "paper"),
            scores=d.get("scores", {}),
            variants={name: _law_from_dict(p) for name, p in d.get("variants", {}).items()},
            candidates=tuple(d.get("candidates", ())),
            exp_params=None if d.get("exp_params") is None else {k: np.asarray(v, np.float64) for k, v in d["exp_params"].items()},
            notes=tuple(d.get("notes", ())),
            validation=d.get("validation"),
            bootstrap_params=None if d.get("bootstrap_params") is None else _law_from_dict(d["bootstrap_params"]),
            config=None if d.get("config") is None else FitConfig.from_dict(d["config"]),
            samples={name: _law_from_dict(p) for name, p in d.get("samples", {}).items()},
        )


def _law_to_dict(p: AnyLawParams) -> dict[str, Any]:
    return {f: np.asarray(getattr(p, f)).tolist() for f in p._fields}


def _law_from_dict(d: dict[str, Any]) -> AnyLawParams:
    cls = TransferLawParams if "transfer" in d else LawParams
    return cls(*(np.asarray(d[f], np.float64) for f in cls._fields))


def predict(fit: Fit, tokens: np.ndarray, domains: tuple[str, ...] | None = None, family: str | None = None) -> np.ndarray:
    """Predicted validation loss (nats) of every run and every domain of ``fit``.

    Args:
      fit: any fit.
      tokens: (R, len(domains)) per-domain tokens of each run, in the fit's token units.
      domains: the columns of ``tokens`` (the fit's domains in any order; default: ``fit.domains``).
      family: predict with this family's fit (one of ``fit.variants``, or ``"exp"``);
        default the chosen one.
    Returns:
      (R, P) losses in ``fit.outputs`` order (domains, then targets); NaN for domains
      without a law (never measured).
    Raises:
      ValueError: ``domains`` is not the fit's set of domains, or tokens are negative or not finite.
    """
    tokens = np.asarray(tokens, np.float64)
    k = len(fit.domains)
    if domains is not None:
        if sorted(domains) != sorted(fit.domains):
            raise ValueError(f"the table to predict has token columns {', '.join(domains)}; the fit's domains are {', '.join(fit.domains)}")
        tokens = tokens[:, [list(domains).index(d) for d in fit.domains]]
    if tokens.ndim != 2 or tokens.shape[1] != k:
        raise ValueError(f"tokens must have shape (R, {k}), got {tokens.shape}")
    if np.any(tokens < 0) or not np.all(np.isfinite(tokens)):
        raise ValueError("tokens must be finite and >= 0")
    tokens = np.concatenate([tokens, np.zeros((len(tokens), len(fit.targets)))], axis=1)  # no run trains on a target
    family = family or fit.family
    params = fit.exp_params if family == "exp" else (fit.params if family == fit.family else fit.variants[family])
    out = FAMILIES[family].predict(params, tokens)
    return np.where(fit.has_law[None], out, np.nan)
