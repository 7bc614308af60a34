"""The result of a law-family fit and its predictions (:func:`predict_losses`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mixjax.mixing.fit import FitResult
from mixjax.mixing.law import AnyLawParams, LawParams, TransferLawParams, evaluate, token_losses

FAMILIES = ("paper", "transfer", "exp")
EXTRAPOLATES = {"paper": True, "transfer": True, "exp": False, "gbm": False}
BETA_BOUNDS = (0.01, 5.0)  # the box of every family fit's beta
LAW_FIXED = 6  # log c, log beta, log gamma, alpha, log e, rho; then u (k)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class FamilyFitResult(FitResult):
    """A :class:`FitResult` of one chosen family, with the other families' scores and fits.

    ``params`` holds k entries (every trained domain); a domain whose loss was never
    measured (``measured[i]`` False) has ``c = e = 0`` (no law, loss 0, importance 0) and
    still transfers tokens to the others. ``scores[family]``: out-of-fold ``rmse`` (all
    measured cells), ``total_rmse`` / ``total_spearman`` (per-run sum over the measured
    domains), ``domain_spearman`` (mean over domains), ``extrapolates``, ``seconds``.
    ``variants``: every extrapolating family's full fit (for probes and comparison);
    ``candidates``: the extrapolating families within out-of-fold noise of the best.
    """

    family: str = "paper"
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    variants: dict[str, Any] = dataclasses.field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    exp_params: dict[str, np.ndarray] | None = None
    measured: tuple[bool, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["params"] = _law_to_dict(self.params)
        d.update(
            family=self.family,
            scores=self.scores,
            variants={name: _law_to_dict(p) for name, p in self.variants.items()},
            candidates=list(self.candidates),
            exp_params=None if self.exp_params is None else {k: np.asarray(v).tolist() for k, v in self.exp_params.items()},
            measured=list(self.measured),
            notes=list(self.notes),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FamilyFitResult":
        base = FitResult.from_dict({**d, "params": {f: d["params"][f] for f in LawParams._fields}})
        return cls(
            **{f.name: getattr(base, f.name) for f in dataclasses.fields(FitResult)} | {"params": _law_from_dict(d["params"])},
            family=d["family"],
            scores=d["scores"],
            variants={name: _law_from_dict(p) for name, p in d["variants"].items()},
            candidates=tuple(d["candidates"]),
            exp_params=None if d["exp_params"] is None else {k: np.asarray(v, np.float64) for k, v in d["exp_params"].items()},
            measured=tuple(d["measured"]),
            notes=tuple(d["notes"]),
        )

    def score_table(self) -> str:
        """The out-of-fold table, one line per family (the chosen one marked)."""
        lines = [f"{'family':10s} {'extrap. N':>9s} {'RMSE':>9s} {'total RMSE':>10s} {'total Spearman':>14s} {'domain Spearman':>15s}"]
        for name, s in self.scores.items():
            mark = "*" if name == self.family else " "
            lines.append(
                f"{mark}{name:9s} {'yes' if s['extrapolates'] else 'no':>9s} {s['rmse']:9.4f} {s['total_rmse']:10.4f}"
                f" {s['total_spearman']:14.4f} {s['domain_spearman']:15.4f}"
            )
        return "\n".join(lines)


def _law_to_dict(p: AnyLawParams) -> dict[str, Any]:
    return {f: np.asarray(getattr(p, f)).tolist() for f in p._fields}


def _law_from_dict(d: dict[str, Any]) -> AnyLawParams:
    cls = TransferLawParams if "transfer" in d else LawParams
    return cls(*(np.asarray(d[f], np.float64) for f in cls._fields))


# --------------------------------------------------------------------------- prediction


def predict_losses(fit: FitResult, tokens: np.ndarray) -> np.ndarray:
    """Predicted validation loss (nats) of every run and domain.

    Args:
      fit: any fit (:func:`fit_table`'s or :func:`mixjax.mixing.fit.fit_law`'s).
      tokens: (R, k) per-domain tokens of each run, in the table's units, ``fit.domains`` order.
    Returns:
      (R, k) losses; NaN for domains without a law (never measured).
    Raises:
      ValueError: if ``tokens`` does not have k columns or has negative entries.
    """
    tokens = np.asarray(tokens, np.float64)
    k = len(fit.domains)
    if tokens.ndim != 2 or tokens.shape[1] != k:
        raise ValueError(f"tokens must have shape (R, {k}), got {tokens.shape}")
    if np.any(tokens < 0) or not np.all(np.isfinite(tokens)):
        raise ValueError("tokens must be finite and >= 0")
    family = getattr(fit, "family", "paper")
    if family == "exp":
        p = fit.exp_params
        r = tokens / tokens.sum(axis=1, keepdims=True)
        out = p["c"][None] + np.exp(p["log_k"][None] + r @ p["t"].T)
    else:
        out = evaluate(token_losses, fit.params, tokens)
    return np.where(fit.has_law[None], out, np.nan)
