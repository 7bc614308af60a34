"""Two-stage, multi-start fit of the scaling law (arXiv 2508.11953, Sec. 3.2), any run design.

Each domain is fitted on every run where its loss was measured: its own series (runs that
change only this domain, all at one other-domain size ``M``) and any other runs ("cross"
points: the 4k+1 design's other perturbations, a Dirichlet swarm, or both).

Stage 1 fits ``beta`` and the transferred data ``A = gamma M^alpha`` from quads of loss
differences of the own series, which cancel ``c`` and ``e``. Two statistics
(``TwoStageConfig.procedure``):

- ``"mixjax"`` (default): ``log((L_a - L_b) / (L_c - L_d))`` against the model's;
- ``"paper"``: the released reference code's ratio of logs,
  ``log(L_a - L_b) / log(L_c - L_d)``, quads with a difference <= 0 skipped, in the
  table's own token units (the statistic is not unit-free).

Stage 2 fixes ``beta`` and fits ``c, gamma, alpha, e`` (``c, e`` in log space,
``0 <= alpha <= 1``, ``gamma M^alpha <= M`` at every observed ``M``). Stage 3 refits all
five parameters jointly from the stage-2 solution and random starts, and is kept when it
fits better, whenever ``M`` varies (alpha fitted), the domain has no own series (a swarm),
or (default procedure) stage 1's beta is on a bound / stage 2 misses a loss by more than
``refine_residual`` of the losses' range.

Alpha: with one observed ``M`` the split of ``A`` into ``gamma`` and ``alpha`` is not
identified, and alpha is held at ``alpha_prior``. When ``M`` varies, each domain is
fitted twice, on its own series with alpha at the prior and on every run with alpha
fitted, and (``alpha_mode="auto"``) the variant with the lower leave-one-run-out
prediction error over every run where the domain's loss was measured is kept.

Speed: every fit of every domain, variant, start, fold and bootstrap sample is one call of
one jitted function (vmapped), with a small projected Levenberg-Marquardt minimiser
(:mod:`mixjax.mixing.optim`); folds and bootstrap refits start from the full fit.

Modules: :mod:`.objectives` (the stage objectives), :mod:`.engine` (the jitted multi-start
fit), :mod:`.diagnostics` (assembly into a :class:`~mixjax.mixing.fit.result.Fit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.result import Fit
from mixjax.mixing.fit.two_stage.diagnostics import assemble
from mixjax.mixing.fit.two_stage.engine import fit_instances, pack
from mixjax.mixing.runs import DomainData


def _seed(key: jax.Array) -> int:
    return int(np.asarray(jax.random.key_data(key)).ravel()[-1])


def fit_two_stage(domains: Sequence[DomainData], key: jax.Array, cfg: FitConfig = FitConfig()) -> Fit:
    """Fit the paper's law to every domain with the two-stage procedure.

    Args:
      domains: one :class:`DomainData` per domain (token units of the user's table).
      key: PRNG key for the random starts, the fold assignment and the bootstrap.
      cfg: the fit's configuration (``cfg.two_stage``, ``cfg.folds``, ``cfg.checks``).
    Returns:
      A :class:`Fit` over ``domains``: parameters stacked as (k,) arrays in the table's
      token units, per-domain diagnostics with their two-stage record, pooled
      leave-one-run-out RMSE / Spearman, bootstrap refits (``cfg.two_stage.bootstrap_samples``).
    """
    two = cfg.two_stage
    domains = list(domains)
    m_varies = [np.unique(np.round(d.points()[1] / max(d.points()[1]), 12)).size > 1 for d in domains]
    if two.alpha_mode == "prior" or not any(m_varies):
        variants = (False,)
    elif two.alpha_mode == "fitted":
        variants = (True,)
    else:
        variants = (False, True)
    with jax.enable_x64(True):
        key_fit, key_fold, key_boot = jax.random.split(key, 3)
        packed, num_folds, scales = pack(domains, two, cfg.folds, np.random.default_rng(_seed(key_fold)))
        out = fit_instances(packed, variants, num_folds, two, key_fit, key_boot)
    return assemble(domains, cfg, packed, out, scales, variants, m_varies)
