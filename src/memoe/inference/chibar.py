"""Null distributions of likelihood-ratio statistics: plain chi-square and chi-bar-square mixtures.

When the null hypothesis puts a variance on the boundary of its parameter space (a variance equal to
zero), the LRT statistic is asymptotically a mixture of chi-square distributions instead of a single one
(Self & Liang 1987, JASA 82, 605-610; Stram & Lee 1994, Biometrics 50, 1171-1177). For one added
random effect that is correlated with ``q`` existing ones of the same grouping factor the mixture is
``0.5 chi2(q) + 0.5 chi2(q + 1)``; for one added independent variance it is ``0.5 chi2(0) + 0.5 chi2(1)``,
where ``chi2(0)`` is a point mass at zero.

:func:`boundary_null` reads which parameters two nested fits differ in and returns the mixture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import brentq

from memoe.errors import ModelComparisonError

__all__ = ["ChiBarSquare", "RandomStructure", "boundary_null", "random_structure"]


@dataclass(frozen=True)
class ChiBarSquare:
    """A finite mixture ``sum_k w_k chi2(df_k)`` (``chi2(0)`` is a point mass at 0).

    Attributes
    ----------
    weights : tuple of float
        Mixing weights, summing to 1.
    dfs : tuple of int
        Degrees of freedom of the components.
    """

    weights: tuple[float, ...]
    dfs: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.dfs) or not self.weights:
            raise ValueError("weights and dfs must be non-empty and of equal length")
        if abs(sum(self.weights) - 1.0) > 1e-12 or min(self.weights) < 0:
            raise ValueError(f"mixture weights must be non-negative and sum to 1, got {self.weights}")
        if min(self.dfs) < 0:
            raise ValueError(f"degrees of freedom must be >= 0, got {self.dfs}")

    @classmethod
    def plain(cls, df: int) -> ChiBarSquare:
        """The ordinary ``chi2(df)``."""
        return cls((1.0,), (int(df),))

    @property
    def is_plain(self) -> bool:
        return len(self.dfs) == 1

    def sf(self, x) -> np.ndarray:
        """Upper tail ``P(T >= x)`` (the p-value of an observed statistic ``x``).

        The point mass of ``chi2(0)`` counts fully at ``x <= 0``, so a zero statistic has p-value 1.
        """
        x = np.asarray(x, dtype=float)
        out = np.zeros_like(x)
        for w, df in zip(self.weights, self.dfs, strict=True):
            out = out + w * (np.where(x <= 0, 1.0, 0.0) if df == 0 else stats.chi2.sf(x, df))
        return out

    def isf(self, alpha: float) -> float:
        """Critical value ``c`` with ``P(T >= c) = alpha`` (for ``alpha`` below the point mass)."""
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        hi = max(stats.chi2.isf(alpha / 10, max(max(self.dfs), 1)), 1.0)
        if float(self.sf(1e-300)) < alpha:
            return 0.0
        return float(brentq(lambda c: float(self.sf(c)) - alpha, 1e-300, hi, xtol=1e-12))

    def __str__(self) -> str:
        if self.is_plain:
            return f"chi2({self.dfs[0]})"
        return " + ".join(f"{w:g}*chi2({df})" for w, df in zip(self.weights, self.dfs, strict=True))


@dataclass(frozen=True)
class RandomStructure:
    """The variance parameters of a fit's random effects, keyed by what they mean.

    Attributes
    ----------
    variances : frozenset of (group, column)
        One entry per random-effect variance.
    covariances : frozenset of (group, frozenset of two columns)
        One entry per covariance estimated within a term.
    """

    variances: frozenset
    covariances: frozenset


def random_structure(fit) -> RandomStructure:
    """Variances and covariances of a fit's random-effects terms (``||`` terms have none between them)."""
    var, cov = set(), set()
    for t in fit.design.terms:
        for c in t.columns:
            var.add((t.group, c))
        for i in range(t.q):
            for j in range(i + 1, t.q):
                cov.add((t.group, frozenset((t.columns[i], t.columns[j]))))
    return RandomStructure(frozenset(var), frozenset(cov))


def boundary_null(fit0, fit1, df: int) -> tuple[ChiBarSquare, str]:
    """Asymptotic null distribution of the LRT of ``fit0`` (smaller) against ``fit1``.

    Parameters
    ----------
    fit0, fit1 : LmmResult
        Nested fits, ``fit0`` with fewer parameters.
    df : int
        Difference in the number of parameters.

    Returns
    -------
    null : ChiBarSquare
    reason : str
        Which parameters are tested and why this distribution applies.

    Raises
    ------
    ModelComparisonError
        If the random-effects structures are not nested, or more than one variance is added (the
        mixture weights then depend on the information matrix; use a parametric bootstrap).

    Notes
    -----
    With ``k`` added variances (each zero under H0, on the boundary) and ``d - k`` other added
    parameters (covariances, fixed effects; interior under H0):

    * ``k = 0``: ``chi2(d)``;
    * ``k = 1``: ``0.5 chi2(d - 1) + 0.5 chi2(d)`` (Self & Liang 1987, case 5; Stram & Lee 1994, whose
      ``0.5 chi2(q) + 0.5 chi2(q + 1)`` for a new random effect correlated with ``q`` others is this
      with ``d = q + 1``).
    """
    s0, s1 = random_structure(fit0), random_structure(fit1)
    if not (s0.variances <= s1.variances and s0.covariances <= s1.covariances):
        extra = sorted(f"{g}:{c}" for g, c in s0.variances - s1.variances)
        extra += sorted(f"cov {g}:{'/'.join(sorted(c))}" for g, c in s0.covariances - s1.covariances)
        raise ModelComparisonError(
            "the random effects of the smaller model are not contained in those of the larger one "
            f"({', '.join(extra)} only in the smaller); a boundary (chi-bar-square) test needs nested models"
        )
    new_var = sorted(s1.variances - s0.variances)
    new_cov = sorted(s1.covariances - s0.covariances, key=lambda gc: (gc[0], sorted(gc[1])))
    k = len(new_var)
    if df < k + len(new_cov):
        raise ModelComparisonError(
            f"the larger model adds {k} variance(s) and {len(new_cov)} covariance(s) but only {df} parameter(s)"
        )
    tested = [f"var({c}|{g})" for g, c in new_var] + [f"cov({'/'.join(sorted(c))}|{g})" for g, c in new_cov]
    if df > k + len(new_cov):
        tested.append(f"{df - k - len(new_cov)} other parameter(s)")
    what = ", ".join(tested) if tested else "no random-effects parameter"
    if k == 0:
        return ChiBarSquare.plain(df), f"{what}: interior under H0, chi2({df})"
    if k > 1:
        raise ModelComparisonError(
            f"{k} variances are added ({what}); the chi-bar-square weights then depend on the Fisher information "
            "(no closed form). Compare one added random effect at a time, or use a parametric bootstrap of the LRT"
        )
    null = ChiBarSquare((0.5, 0.5), (df - 1, df))
    return null, f"{what}: one variance on the boundary under H0 (Self & Liang 1987; Stram & Lee 1994), {null}"
