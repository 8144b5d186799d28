"""The t quantiles behind the sweeps' confidence intervals, against published table values."""
import math

import pytest

from distill.report import stats


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantile_matches_the_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_t_cdf_is_symmetric_and_tends_to_the_normal():
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5)
    assert stats.t_cdf(-1.5, 3) == pytest.approx(1 - stats.t_cdf(1.5, 3))
    normal = 0.5 * (1 + math.erf(1.0 / math.sqrt(2)))
    assert stats.t_cdf(1.0, 1000) == pytest.approx(normal, abs=1e-3)


def test_ci95_of_three_values_by_hand():
    lo, hi = stats.ci95([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.303
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert hi - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-3)
    assert all(math.isnan(x) for x in stats.ci95([5.0]))
    with pytest.raises(ValueError, match="p must lie"):
        stats.t_quantile(0.2, 3)
