"""The paired comparison of validation mixtures over seeds (mixjax.pipeline.paired)."""

import math

import numpy as np
import pytest

from mixjax.pipeline.paired import mean_sd, paired_difference

T_975 = {1: 12.706204736174698, 2: 4.302652729749464, 4: 2.7764451051977934}  # Student t quantiles (tables)


def test_interval_known_values():
    # d = [-0.20, -0.15, -0.25]: mean -0.2, sd 0.05, half-width t(0.975, 2) 0.05 / sqrt(3) = 0.12421
    d = paired_difference([7.10, 7.20, 7.00], [7.30, 7.35, 7.25])
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(-0.2), pytest.approx(0.05))
    half = T_975[2] * 0.05 / math.sqrt(3)
    assert half == pytest.approx(0.124207, abs=1e-6)
    assert (d.low, d.high) == (pytest.approx(-0.2 - half), pytest.approx(-0.2 + half))
    assert d.verdict == "better" and d.relative == pytest.approx(-0.2 / 7.3)


def test_interval_two_seeds_and_five_seeds():
    # n = 2: d = [0.1, 0.3], mean 0.2, sd sqrt(0.02) = 0.141421; half 12.7062 x 0.1 = 1.27062: straddles 0.
    d = paired_difference([1.1, 1.3], [1.0, 1.0])
    assert d.sd == pytest.approx(math.sqrt(0.02)) and d.high - d.mean == pytest.approx(T_975[1] * 0.1)
    assert d.verdict == "indistinguishable"
    # n = 5: d = [0.1, 0.2, 0.3, 0.2, 0.2]: mean 0.2, sd sqrt(0.005); interval [0.112, 0.288] above 0.
    d = paired_difference([1.1, 1.2, 1.3, 1.2, 1.2], [1.0] * 5)
    assert d.low == pytest.approx(0.2 - T_975[4] * math.sqrt(0.005) / math.sqrt(5))
    assert d.low == pytest.approx(0.1122, abs=1e-4) and d.verdict == "worse"
    # 90% interval: t(0.95, 4) = 2.131847
    assert paired_difference([1.1, 1.2, 1.3, 1.2, 1.2], [1.0] * 5, confidence=0.9).high == pytest.approx(0.2 + 2.131847 * math.sqrt(0.001), abs=1e-6)


def test_one_seed_has_no_interval_and_bad_shapes_raise():
    d = paired_difference([7.0], [7.1])
    assert d.n == 1 and d.mean == pytest.approx(-0.1) and d.low is None and d.high is None and math.isnan(d.sd)
    assert d.verdict == "n/a (1 seed)"
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_difference([], [])


def test_mean_sd():
    mean, sd = mean_sd([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(sd, [math.sqrt(2.0), math.sqrt(8.0)])
    mean, sd = mean_sd([[1.0, 2.0]])
    assert mean.tolist() == [1.0, 2.0] and np.isnan(sd).all()
