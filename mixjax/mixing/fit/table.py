"""The paper's law fitted to a whole run table, trained-but-unmeasured domains included.

Source: arXiv 2508.11953, Sec. 3 (the law), applied to any run design (README "Fit and
solve on your own runs").
"""

from __future__ import annotations

import jax
import numpy as np

from mixjax.mixing.fit import FitConfig, FitResult, fit_law
from mixjax.mixing.fit.types import DomainDiagnostics
from mixjax.mixing.law import LawParams, domain_loss
from mixjax.mixing.runs import RunTable, domain_data

UNMEASURED_NOTE = "trained but never measured: no law of its own (importance 0); its tokens count in the others' transfer"
# A law that predicts loss 0 at any mixture: an unmeasured domain adds nothing to the objective.
_NO_LAW = dict(beta=1.0, c=0.0, gamma=1.0, alpha=0.5, e=0.0)


def unmeasured_diagnostics(name: str) -> DomainDiagnostics:
    nan = float("nan")
    return DomainDiagnostics(
        name=name, residuals=[], rmse=nan, max_abs_residual=nan, loo_errors=[], loo_max_rel_error=nan,
        stage1_objective=nan, beta_start_spread=nan, transfer_start_spread=nan, transferred_fraction=nan,
        alpha_identified=False, refined=False, notes=[UNMEASURED_NOTE], poorly_identified=False, measured=False,
    )


def fit_run_table(table: RunTable, key: jax.Array, cfg: FitConfig = FitConfig()) -> FitResult:
    """Fit the paper's law to every measured domain of ``table``.

    Returns:
      A :class:`FitResult` over every domain of the table, in table order; a domain that
      was trained but never measured gets a law that predicts 0 (``c = e = 0``), so it adds
      nothing to the objective, and a diagnostics note saying so.
    Raises:
      RunTableError: a measured domain with too few runs (see :func:`domain_data`).
    """
    fit = fit_law(domain_data(table), key, cfg)
    if len(fit.domains) == len(table.domains):
        return fit
    where = [table.domains.index(n) for n in fit.domains]

    def expand(params: LawParams | None) -> LawParams | None:
        if params is None:
            return None
        fields = []
        for f in LawParams._fields:
            a = np.asarray(getattr(params, f), np.float64)
            full = np.full((*a.shape[:-1], len(table.domains)), _NO_LAW[f])
            full[..., where] = a
            fields.append(full)
        return LawParams(*fields)

    rows = dict(zip(fit.domains, fit.diagnostics))
    diagnostics = tuple(rows[n] if n in rows else unmeasured_diagnostics(n) for n in table.domains)
    return FitResult(
        domains=table.domains, params=expand(fit.params), diagnostics=diagnostics,
        bootstrap_params=expand(fit.bootstrap_params), validation=fit.validation, config=fit.config,
    )


def predict_table(fit: FitResult, domains: tuple[str, ...], tokens: np.ndarray) -> np.ndarray:
    """The fitted law's loss for each run and each of ``fit.domains``.

    Args:
      fit: a fit over ``fit.domains``.
      domains: the token columns of ``tokens``; must contain every one of ``fit.domains``
        (extra columns count as other-domain tokens).
      tokens: (R, len(domains)) tokens per run, in the fit's token units.
    Returns:
      (R, len(fit.domains)) predicted validation losses (nats), NaN for a domain without
      a law of its own (trained but never measured).
    Raises:
      ValueError: a domain of the fit missing from ``domains``.
    """
    missing = [d for d in fit.domains if d not in domains]
    if missing:
        raise ValueError(f"the table to predict has no tokens.{missing[0]} column (the fit's domains: {', '.join(fit.domains)})")
    tokens = np.asarray(tokens, np.float64)
    x = tokens[:, [domains.index(d) for d in fit.domains]]
    m = tokens.sum(axis=1, keepdims=True) - x  # every other column counts in M, as in the fit
    with jax.enable_x64(True):
        losses = np.asarray(domain_loss(LawParams(*(np.asarray(a, np.float64) for a in fit.params)), x, m))
    measured = np.array([d.measured for d in fit.diagnostics])
    return np.where(measured[None], losses, np.nan)
