"""The report's plots show what the solve optimised."""

import numpy as np

from helpers import PUBLISHED_PARAMS
from mixjax.mixing.fit import Fit
from mixjax.pipeline import report


def test_simplex_map_uses_the_solves_importance(tmp_path, monkeypatch):
    seen = []
    real = report.total_loss

    def spy(w, params, budget, importance=None):
        seen.append(importance)
        return real(w, params, budget, importance)

    monkeypatch.setattr(report, "total_loss", spy)
    fit = Fit(domains=("if", "math", "code"), params=PUBLISHED_PARAMS, diagnostics=())
    report.plot_simplex(fit, 20.0, [0.4, 0.3, 0.3], {}, tmp_path / "simplex.png", importance=[1.0, 2.0, 1.0])
    assert (tmp_path / "simplex.png").exists()
    np.testing.assert_array_equal(np.asarray(seen[0]), [1.0, 2.0, 1.0])
