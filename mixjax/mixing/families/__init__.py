"""Law families fitted to a run table and chosen by out-of-fold error (issue #14, item 3).

Families (every one fitted per measured domain i on every run where loss.i was measured):

- ``"paper"``: the paper's law (arXiv 2508.11953, Sec. 3),
  ``L_i = e_i + c_i (x_i + gamma_i M_i^alpha_i)^(-beta_i)`` with ``M_i = sum_{j != i} x_j``,
  fitted jointly (all five parameters, Huber least squares).
- ``"transfer"``: the transfer-matrix extension (:class:`~mixjax.mixing.law.TransferLawParams`),
  ``M_i = (sum_{j != i} t_ij x_j^rho_i)^(1/rho_i)`` with ``t_ij = exp(u_ij) / mean_{j != i}
  exp(u_ij)`` (mean 1), ``rho_i`` in ``[transfer_rho_min, 1]`` and a Gaussian prior
  ``u_ij ~ N(0, transfer_prior^2)`` against loss noise at the paper's law's residual scale
  (an empirical-Bayes ridge toward the paper's law, ``t_ij = 1``), which keeps fits from
  the 4k+1 design (one free ``t`` per other domain, each seen only
  through the runs that perturb that domain) stable. It keeps the budget as a variable.
- ``"exp"``: the Data Mixing Laws form (Ye et al. 2024, arXiv 2403.16952, eq. 6),
  ``L_i = c_i + exp(log k_i + sum_j t_ij r_j)`` on the mixture proportions ``r``: a
  comparator; it ignores the budget and so cannot extrapolate in N.

Every family is scored on the same folds (leave-one-run-out up to ``FitConfig.max_folds``
runs, else ``FitConfig.kfold`` random folds of whole runs) and the default
(``FitConfig.family = "auto"``) is the extrapolating family with the lowest out-of-fold
RMSE; a note says when the best non-extrapolating one is clearly better. Optional
reference: gradient-boosted trees (LightGBM) on the proportions, out-of-fold only.

Speed: every fit of every domain x family x start x fold is one call of one jitted,
vmapped projected Levenberg-Marquardt minimiser (:func:`mixjax.mixing.optim.box_lm`);
fold refits start from the full fit.
"""

from mixjax.mixing.families.engine import run_folds
from mixjax.mixing.families.result import EXTRAPOLATES, FAMILIES, FamilyFitResult, predict_losses
from mixjax.mixing.families.table import fit_table, score

__all__ = ["EXTRAPOLATES", "FAMILIES", "FamilyFitResult", "fit_table", "predict_losses", "run_folds", "score"]
