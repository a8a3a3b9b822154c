"""nlme's ``anova(fit)`` F tables for ``gls`` / ``lme`` fits: sequential and marginal (Wald) tests by term.

* sequential (``type = "sequential"``, nlme's default): with X' W^{-1} X = R_X R_X' and the effects
  c = R_X' beta (whitened response projected on the orthogonalised columns), the term's
  F = sum_{j in term} c_j^2 / (k sigma^2), terms in formula order (each adjusted for the ones before);
* marginal (``type = "marginal"``): F = beta_T' [vcov_TT]^{-1} beta_T / k (each term adjusted for all
  others).

Denominator df: N - p for ``gls``, nlme's containment df of the term for ``lme``. The covariance is
:attr:`MarginalResult.vcov_tests` (nlme inflates ``lme`` ML fits by N / (N - p) in its tests).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from memoe.errors import ArgumentError
from memoe.inference.containment import containment_df
from memoe.inference.terms import fixed_terms

__all__ = ["anova_table"]


def _term_columns(fit) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Term labels (the intercept first), their columns in X and their denominator df."""

    shim = SimpleNamespace(design=fit.design)
    ft = fixed_terms(shim)
    labels, cols = [], []
    if ft.intercept:
        labels.append("(Intercept)")
        cols.append(np.flatnonzero(ft.assign == -1))
    for t in ft.terms:
        labels.append(t.label)
        cols.append(np.asarray(t.columns))
    N, p = fit.nobs, fit.design.p
    if fit.kind == "gls":
        df = np.full(len(labels), float(N - p))
    else:
        cdf = containment_df(shim, ft)
        term_df = list(cdf.terms)
        df = np.array(([float(cdf.coef[cols[0][0]])] if ft.intercept else []) + term_df, dtype=float)
    return labels, cols, df


def anova_table(fit, type: str = "sequential") -> pd.DataFrame:
    """F tests per fixed-effects term, as nlme's ``anova(fit, type = ...)``.

    Parameters
    ----------
    fit : MarginalResult
    type : {"sequential", "marginal"}

    Returns
    -------
    pandas.DataFrame
        Index = term labels (R's); columns ``numDF, denDF, F-value, p-value``.
    """
    if type not in ("sequential", "marginal"):
        raise ArgumentError(f"anova type must be 'sequential' or 'marginal' for gls/lme fits, got {type!r}")
    labels, cols, den = _term_columns(fit)
    rows = []
    if type == "sequential":
        c = fit._s.effects
        s2 = fit.vcov_tests[0, 0] / fit._s.vcov_unscaled[0, 0]  # the sigma^2 of nlme's tests
        for idx in cols:
            rows.append((len(idx), float(np.sum(c[idx] ** 2)) / (len(idx) * s2)))
    else:
        b = fit.fixef.to_numpy()
        V = fit.vcov_tests
        for idx in cols:
            bt = b[idx]
            rows.append((len(idx), float(bt @ np.linalg.solve(V[np.ix_(idx, idx)], bt)) / len(idx)))
    num = np.array([r[0] for r in rows], dtype=float)
    F = np.array([r[1] for r in rows])
    p = stats.f.sf(F, num, den)
    return pd.DataFrame({"numDF": num.astype(int), "denDF": den, "F-value": F, "p-value": p}, index=labels)
