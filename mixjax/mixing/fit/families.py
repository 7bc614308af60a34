"""The registry of law families (:data:`FAMILIES`): what each one is, how it predicts, and
how its fitted vector becomes parameters.

- ``"paper"``: the paper's law (arXiv 2508.11953, Sec. 3),
  ``L_i = e_i + c_i (x_i + gamma_i M_i^alpha_i)^(-beta_i)``, ``M_i = sum_{j != i} x_j``.
- ``"transfer"``: the transfer-matrix extension (:class:`~mixjax.mixing.law.TransferLawParams`),
  ``M_i = (sum_{j != i} t_ij x_j^rho_i)^(1/rho_i)``, ``t_ij = exp(u_ij) / mean_{j != i}
  exp(u_ij)``, with a Gaussian prior on ``u`` toward the paper's law (``t = 1``).
- ``"exp"``: the Data Mixing Laws form (Ye et al. 2024, arXiv 2403.16952, eq. 6),
  ``L_i = c_i + exp(log k_i + sum_j t_ij r_j)`` on the proportions ``r``: a comparator; it
  ignores the budget and cannot be solved at another N.

The paper and transfer families start from the paper's two-stage fit (``start``); the
fits themselves are :mod:`mixjax.mixing.fit.engine`'s programs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mixjax.mixing.law import NO_LAW, AnyLawParams, LawParams, TransferLawParams, evaluate, rescale_units, token_losses

LAW_FIXED = 6  # the law vector: log c, log beta, log gamma, alpha, log e, rho; then u (k)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    extrapolates: bool  # keeps the budget N as a variable: can be solved at any N
    program: str  # "law" or "exp": which jitted program of mixjax.mixing.fit.engine fits it
    free_transfer: bool  # the transfer matrix u_ij is fitted (else t = 1)
    start: str | None  # "two-stage": the paper's procedure gives the first start
    predict: Callable[..., np.ndarray]  # (params, tokens (R, k)) -> losses (R, k), nats


def _law_predict(params: AnyLawParams, tokens: np.ndarray) -> np.ndarray:
    return evaluate(token_losses, params, tokens)


def _exp_predict(params: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    r = tokens / tokens.sum(axis=1, keepdims=True)
    return params["c"][None] + np.exp(params["log_k"][None] + r @ params["t"].T)


PAPER = Family("paper", True, "law", False, "two-stage", _law_predict)
TRANSFER = Family("transfer", True, "law", True, "two-stage", _law_predict)
EXP = Family("exp", False, "exp", False, None, _exp_predict)
FAMILIES: dict[str, Family] = {f.name: f for f in (PAPER, TRANSFER, EXP)}
GBM_SCORE = "gbm"  # LightGBM's out-of-fold score (FamilyConfig.reference_gbm): a reference, never a family


def law_params(family: str, theta: np.ndarray, measured_cols: np.ndarray, scale: float,
               sources: np.ndarray | None = None) -> AnyLawParams:
    """Fitted law vectors (D, LAW_FIXED + P) of the measured outputs -> P-entry parameters
    (P = k domains + T targets) in the table's token units (``scale``: the unit the fit ran
    in); unmeasured ones get :data:`~mixjax.mixing.law.NO_LAW`. ``sources`` (P,): the
    columns that transfer (a target's does not; :func:`~mixjax.mixing.fit.engine.sources_of`),
    default all."""
    k = len(measured_cols)
    sources = np.ones(k, bool) if sources is None else np.asarray(sources) > 0
    beta, c, gamma, alpha, e = (np.full(k, NO_LAW[f]) for f in LawParams._fields)
    rho = np.ones(k)
    t = (np.ones((k, k)) - np.eye(k)) * sources[None]
    for row, i in enumerate(np.flatnonzero(measured_cols)):
        th = theta[row]
        c[i], beta[i], gamma[i], alpha[i], e[i] = np.exp(th[0]), np.exp(th[1]), np.exp(th[2]), th[3], np.exp(th[4])
        rho[i] = th[5]
        transfers = sources & (np.arange(k) != i)
        u = np.where(transfers, th[LAW_FIXED:], -np.inf)
        w = np.exp(u - u.max())
        t[i] = w / (w.sum() / transfers.sum())
    law = LawParams(beta, c, gamma, alpha, e) if family == "paper" else TransferLawParams(beta, c, gamma, alpha, e, t, rho)
    return rescale_units(law, scale)


def exp_params(theta: np.ndarray, measured_cols: np.ndarray) -> dict[str, np.ndarray]:
    """Fitted exp vectors (D, 2 + k) -> ``{"c", "log_k", "t"}`` over all k domains."""
    k = len(measured_cols)
    out = {"c": np.zeros(k), "log_k": np.full(k, -np.inf), "t": np.zeros((k, k))}
    rows = np.flatnonzero(measured_cols)
    out["c"][rows], out["log_k"][rows], out["t"][rows] = theta[:, 0], theta[:, 1], theta[:, 2:]
    return out
