"""Statistical process control for the QA report: the p-chart of the NG rate per subgroup, the Western
Electric run rules, and Wilson score intervals. Pure Python (torch-free, Python 3.8).

    chart = p_chart([3, 5, 2], [100, 120, 80])      # NG parts and parts per subgroup
    chart.ucl[0], chart.violations                  # limits per subgroup size; rule breaks
    wilson(2, 12)                                   # 95% interval of a rate seen as 2 of 12

p-chart (NIST/SEMATECH e-Handbook 6.3.3.2): pbar = sum(d_i) / sum(n_i), sigma_i = sqrt(pbar (1 - pbar) / n_i),
limits pbar +- 3 sigma_i, the lower one floored at 0 (and the upper capped at 1). Western Electric rules
(Statistical Quality Control Handbook, 1956), on z_i = (p_i - pbar) / sigma_i so that they hold with varying
subgroup sizes:

1. one point beyond 3 sigma;
2. two of three consecutive points beyond 2 sigma on the same side;
3. four of five consecutive points beyond 1 sigma on the same side;
4. eight consecutive points on the same side of the centre line.

A violation is reported at the point that completes the pattern, with the points that make it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

__all__ = ["RULES", "PChart", "Violation", "p_chart", "western_electric", "wilson"]

RULES = {
    1: "one point beyond 3 sigma",
    2: "2 of 3 points beyond 2 sigma on one side",
    3: "4 of 5 points beyond 1 sigma on one side",
    4: "8 points in a row on one side of the centre line",
}
# (rule, window, points needed in the window, |z| beyond which a point counts)
_WINDOWS = ((2, 3, 2, 2.0), (3, 5, 4, 1.0), (4, 8, 8, 0.0))


@dataclass(frozen=True)
class Violation:
    rule: int  # 1..4, see RULES
    index: int  # the subgroup that completes the pattern
    points: Tuple[int, ...]  # the subgroups that make it

    @property
    def text(self) -> str:
        return RULES[self.rule]


@dataclass
class PChart:
    """The chart of ``ng[i] / n[i]``: centre line, limits per subgroup, z-scores and the rule violations.
    Subgroups with ``n == 0`` have no point (``p``, ``z`` and limits None) and break no run."""

    ng: List[int]
    n: List[int]
    pbar: float
    p: List[Optional[float]]
    sigma: List[Optional[float]]
    ucl: List[Optional[float]]
    lcl: List[Optional[float]]
    z: List[Optional[float]]
    violations: List[Violation] = field(default_factory=list)

    def flagged(self) -> List[int]:
        """Subgroups where some rule is violated, sorted."""
        return sorted({v.index for v in self.violations})


def p_chart(ng: Sequence[int], n: Sequence[int]) -> PChart:
    """The p-chart of NG counts ``ng`` out of ``n`` parts per subgroup (see the module docstring)."""
    if len(ng) != len(n):
        raise ValueError(f"ng and n differ in length: {len(ng)} and {len(n)}")
    if any(d < 0 or d > k for d, k in zip(ng, n)):
        raise ValueError("every subgroup needs 0 <= ng <= n")
    total = sum(n)
    pbar = sum(ng) / total if total else 0.0
    p, sigma, ucl, lcl, z = [], [], [], [], []  # type: ignore[var-annotated]
    for d, k in zip(ng, n):
        if k == 0:
            for col in (p, sigma, ucl, lcl, z):
                col.append(None)
            continue
        s = math.sqrt(pbar * (1 - pbar) / k)
        p.append(d / k)
        sigma.append(s)
        ucl.append(min(1.0, pbar + 3 * s))
        lcl.append(max(0.0, pbar - 3 * s))
        z.append((d / k - pbar) / s if s > 0 else 0.0)
    chart = PChart(list(ng), list(n), pbar, p, sigma, ucl, lcl, z)
    chart.violations = western_electric(z)
    return chart


def western_electric(z: Sequence[Optional[float]]) -> List[Violation]:
    """Violations of rules 1-4 in the z-scores ``z`` (None: no point there, skipped), in order of index then rule.
    A run rule reports each point that completes its pattern (so a long run is flagged at each point from the
    eighth on)."""
    points = [(i, v) for i, v in enumerate(z) if v is not None]
    out = [Violation(1, i, (i,)) for i, v in points if abs(v) > 3]
    for k in range(len(points)):
        i = points[k][0]
        for rule, window, need, beyond in _WINDOWS:
            span = points[max(0, k + 1 - window) : k + 1]  # shorter at the start: 2 points can break rule 2
            for sign in (1, -1):
                hits = tuple(j for j, v in span if sign * v > beyond)
                # the completing point must be one of them (else the pattern was complete before it)
                if len(hits) >= need and hits[-1] == i:
                    out.append(Violation(rule, i, hits))
    return sorted(out, key=lambda v: (v.index, v.rule))


def wilson(k: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """The Wilson score interval of the rate ``k / n`` (95% by default); (0, 1) when ``n`` is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
