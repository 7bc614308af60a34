"""The fit of the mixing law to a run table: one package, one result type, one prediction.

Layout (each module one concept; nothing here imports :mod:`mixjax.mixing.selection` or
:mod:`mixjax.mixing.mixture`, which build on it):

- :mod:`.config`: :class:`FitConfig` and its sections (families, two-stage, folds, checks);
- :mod:`.families`: the registry of law families (paper, transfer, exp): what each
  predicts, whether it extrapolates in the budget N, and its start strategy;
- :mod:`.folds`: the folds of whole runs every out-of-fold score uses;
- :mod:`.engine`: the families' jitted, vmapped fits;
- :mod:`.two_stage`: the paper's two-stage procedure (arXiv 2508.11953, Sec. 3.2), the
  start of every law fit and, with ``paper_fit="two-stage"``, the paper family's fit;
- :mod:`.table`: every family fitted to a table on the same folds (:func:`fit_families`);
- :mod:`.result`: :class:`Fit` and :func:`predict`.

Choosing the family is :mod:`mixjax.mixing.selection`'s; the orchestration fit -> select
-> solve -> analyse is :mod:`mixjax.mixing.mixture`'s.
"""

from mixjax.mixing.fit.config import CheckConfig, DecisionConfig, FamilyConfig, FitConfig, FoldConfig, TwoStageConfig
from mixjax.mixing.fit.result import DomainDiagnostics, Fit, TwoStageDiagnostics, predict

load_fit = Fit.from_dict

__all__ = [
    "CheckConfig", "DecisionConfig", "DomainDiagnostics", "FamilyConfig", "Fit", "FitConfig", "FoldConfig", "TwoStageConfig",
    "TwoStageDiagnostics", "load_fit", "predict",
]
