"""p-chart limits, the Western Electric rules and Wilson intervals against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from lineguard.inspect.spc import p_chart, western_electric, wilson


def test_p_chart_limits_follow_each_subgroup_size_and_floor_at_zero() -> None:
    chart = p_chart([2, 5, 1, 12, 0], [100, 100, 50, 100, 0])
    pbar = 20 / 350
    assert chart.pbar == pytest.approx(pbar)
    s100, s50 = math.sqrt(pbar * (1 - pbar) / 100), math.sqrt(pbar * (1 - pbar) / 50)
    assert s100 == pytest.approx(0.0232115, abs=1e-7) and s50 == pytest.approx(0.0328260, abs=1e-7)
    assert chart.ucl[:4] == pytest.approx([pbar + 3 * s100, pbar + 3 * s100, pbar + 3 * s50, pbar + 3 * s100])
    assert chart.ucl[0] == pytest.approx(0.1267774, abs=1e-7)
    assert chart.lcl[:4] == [0.0] * 4  # pbar - 3 sigma < 0 everywhere: floored
    assert chart.p[:4] == pytest.approx([0.02, 0.05, 0.02, 0.12])
    assert chart.z[3] == pytest.approx((0.12 - pbar) / s100)  # 2.71: inside the limits
    assert chart.p[4] is None and chart.ucl[4] is None  # an empty subgroup has no point
    assert chart.violations == []


def test_a_lower_limit_above_zero_and_a_point_beyond_it() -> None:
    chart = p_chart([50, 52, 48, 20], [500, 500, 500, 500])
    pbar = 170 / 2000
    s = math.sqrt(pbar * (1 - pbar) / 500)
    assert chart.lcl[0] == pytest.approx(pbar - 3 * s) and chart.lcl[0] == pytest.approx(0.0475841, abs=1e-7)
    assert [(v.rule, v.index) for v in chart.violations] == [(1, 3)]  # 0.04 < LCL: rule 1, low side


@pytest.mark.parametrize("z, expected", [
    ([0.5, 3.5], [(1, 1, (1,))]),
    ([2.5, 0.1, 2.2], [(2, 2, (0, 2))]),
    ([-2.5, 2.5, 0.0], []),  # two sides: no rule 2
    ([2.5, 2.1, 0.3], [(2, 1, (0, 1))]),  # complete at index 1, not again at 2
    ([1.5, 1.2, 0.3, 1.1, 1.4], [(3, 4, (0, 1, 3, 4))]),
    ([-1.5, -1.2, -0.3, -1.1, -1.4], [(3, 4, (0, 1, 3, 4))]),
    ([0.2] * 8, [(4, 7, tuple(range(8)))]),
    ([0.2] * 9, [(4, 7, tuple(range(8))), (4, 8, tuple(range(1, 9)))]),
    ([0.2] * 4 + [0.0] + [0.2] * 4, []),  # a point on the centre line breaks the run
    ([0.2] * 4 + [None] + [0.2] * 4, [(4, 8, (0, 1, 2, 3, 5, 6, 7, 8))]),  # an empty subgroup does not
])
def test_western_electric_rules(z, expected) -> None:
    assert [(v.rule, v.index, v.points) for v in western_electric(z)] == expected


def test_an_upward_shift_is_flagged_by_the_run_rules() -> None:
    # 10 subgroups of 200 at 5%, then 8 at 8%: pbar = (100 + 128) / 3600
    ng, n = [10] * 10 + [16] * 8, [200] * 18
    chart = p_chart(ng, n)
    pbar = 228 / 3600
    s = math.sqrt(pbar * (1 - pbar) / 200)
    assert chart.z[10] == pytest.approx((0.08 - pbar) / s)  # +0.97 sigma: no single point is out
    assert not [v for v in chart.violations if v.rule in (1, 2, 3)]
    assert [(v.rule, v.index) for v in chart.violations if v.index >= 10] == [(4, 17)]
    assert chart.flagged() == [7, 8, 9, 17]  # the 10 low points: rule 4 from the 8th on


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (2, 12, 0.0470, 0.4480), (120, 12000, 0.008366, 0.011951),
])
def test_wilson_interval(k, n, lo, hi) -> None:
    assert wilson(k, n) == pytest.approx((lo, hi), abs=1e-4)


def test_bad_counts_are_value_errors() -> None:
    with pytest.raises(ValueError, match="0 <= ng <= n"):
        p_chart([5], [4])
    with pytest.raises(ValueError, match="length"):
        p_chart([1, 2], [10])
    with pytest.raises(ValueError, match="k <= n"):
        wilson(3, 2)
    assert wilson(0, 0) == (0.0, 1.0)
