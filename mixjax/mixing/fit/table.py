"""The fit of a whole run table, the one entry point of the library, ``mixjax.fit`` and the
pipeline: law families chosen by out-of-fold error (:mod:`mixjax.mixing.families`), or the
paper's own two-stage procedure (``FitConfig.family="two-stage"``), trained-but-unmeasured
domains included.

Source: arXiv 2508.11953, Sec. 3 (the law), applied to any run design (README "Fit and
solve on your own runs").
"""

from __future__ import annotations

import jax
import numpy as np

from mixjax.mixing.fit import FitConfig, FitResult, fit_law
from mixjax.mixing.families import FamilyFitResult, fit_table, predict_losses
from mixjax.mixing.fit.diagnostics import unmeasured_diagnostics
from mixjax.mixing.law import NO_LAW, LawParams
from mixjax.mixing.runs import RunTable, domain_data

def fit_run_table(table: RunTable, key: jax.Array, cfg: FitConfig = FitConfig()) -> FitResult:
    """Fit ``table`` as ``cfg`` says: law families scored on shared folds (default), or
    the paper's two-stage procedure (``cfg.family == "two-stage"``).

    Returns:
      A :class:`FitResult` over every domain of the table (see :func:`fit_two_stage`).
    Raises:
      RunTableError / ValueError: a table the fit cannot use.
    """
    if cfg.family == "two-stage":
        return fit_two_stage(table, key, cfg)
    return fit_table(table, key, cfg)


def load_fit(d: dict) -> FitResult:
    """A fit read back from its ``to_dict`` (``fit.json``), of whichever kind it was."""
    if "family" in d:
        return FamilyFitResult.from_dict(d)
    return FitResult.from_dict(d)


def fit_two_stage(table: RunTable, key: jax.Array, cfg: FitConfig = FitConfig()) -> FitResult:
    """Fit the paper's law to every measured domain of ``table`` with the paper's two-stage
    procedure (:func:`mixjax.mixing.fit.fit_law`).

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
            full = np.full((*a.shape[:-1], len(table.domains)), NO_LAW[f])
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
    """The fit's predicted loss for each run and each of ``fit.domains``.

    Args:
      fit: any fit of :func:`fit_run_table` over ``fit.domains``.
      domains: the token columns of ``tokens``: the fit's domains, in any order.
      tokens: (R, len(domains)) tokens per run, in the fit's token units.
    Returns:
      (R, len(fit.domains)) predicted validation losses (nats), NaN for a domain without
      a law of its own (trained but never measured).
    Raises:
      ValueError: ``domains`` is not the fit's set of domains.
    """
    if sorted(domains) != sorted(fit.domains):
        raise ValueError(f"the table to predict has token columns {', '.join(domains)}; the fit's domains are {', '.join(fit.domains)}")
    tokens = np.asarray(tokens, np.float64)[:, [domains.index(d) for d in fit.domains]]
    return predict_losses(fit, tokens)
