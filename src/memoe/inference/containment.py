"""nlme's "containment" (between-within) denominator degrees of freedom.

nlme's ``lme`` (``getFixDF``; Pinheiro & Bates 2000, sec. 2.4.2) assigns each fixed-effects column
to the innermost grouping level within whose groups it varies, and gives it the degrees of freedom
of that level: the number of groups at the level minus the number at the level outside it, minus
the fixed effects estimated at the level. The intercept (and any constant column) takes the
largest df. Terms are assigned to the innermost level of any of their columns.

Levels here are the model's grouping factors ordered by their number of levels (outermost = fewest),
then the residual level with one "group" per observation. For nested designs coded as lme4 codes
them (``(1 | batch/cask)`` gives ``batch`` and ``cask:batch``) this is exactly nlme's rule; for crossed
factors nlme has no rule and the same ordering is used as a convention (the df of such a fit are
best taken from Satterthwaite or Kenward-Roger).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.inference.terms import FixedTerms

__all__ = ["ContainmentDF", "containment_df"]

# nlme's const(): a column is an intercept when all entries equal the first to this relative tolerance
_CONST_TOL = float(np.sqrt(np.finfo(float).eps))


@dataclass(frozen=True)
class ContainmentDF:
    """Containment df per coefficient and per term.

    Attributes
    ----------
    coef : numpy.ndarray, shape (p,)
    terms : numpy.ndarray, shape (n_terms,)
        In the order of :class:`~memoe.inference.terms.FixedTerms`.
    strata : list of str
        Level names, outermost first, ending with ``"Residual"``.
    stratum_of_coef : numpy.ndarray of int, shape (p,)
        Index into ``strata`` (-1 for constant columns).
    """

    coef: np.ndarray
    terms: np.ndarray
    strata: list[str]
    stratum_of_coef: np.ndarray


def _is_constant(x: np.ndarray) -> bool:
    x0 = x[0]
    rel = x if x0 == 0 else x / x0 - 1.0
    return bool(np.all(np.abs(rel) < _CONST_TOL))


def _varies_within(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Whether each column of X takes more than one value within some group; shape (p,)."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(c)) + 1))
    Xs = X[order]
    # exact comparison, as nlme's inner_perc()
    return np.any(np.maximum.reduceat(Xs, starts, axis=0) != np.minimum.reduceat(Xs, starts, axis=0), axis=0)


def containment_df(fit, terms: FixedTerms) -> ContainmentDF:
    """nlme's ``fixDF``: containment df of each coefficient and each term of ``fit``."""
    d = fit.design
    X = d.X
    n, p = X.shape
    blocks = sorted(d.blocks, key=lambda b: b.nlevels)
    strata = [b.factor.name for b in blocks] + ["Residual"]
    ngrps = np.array([b.nlevels for b in blocks] + [n], dtype=float)
    base = ngrps - np.concatenate(([0.0], ngrps[:-1]))
    level_codes = [np.zeros(n, dtype=np.int64)] + [b.factor.codes for b in blocks]

    not_int = np.array([not _is_constant(X[:, j]) for j in range(p)], dtype=bool)
    # stratum s (0-based) = innermost s such that the column varies within groups of level s
    # (level 0 = the whole data set, level s = the s-th grouping factor)
    strat = np.full(p, -1)
    for s, codes in enumerate(level_codes):
        strat[_varies_within(X, codes)] = s

    dfX = base.copy()
    np.subtract.at(dfX, strat[not_int], 1.0)
    if not np.all(not_int):
        dfX[0] -= 1.0
    else:
        dfX[1:] += 1.0
    coef = np.where(not_int, dfX[np.maximum(strat, 0)], dfX.max())

    # terms: innermost stratum of their columns; their column counts subtracted at that stratum
    term_strat = []
    for t in terms.terms:
        cols = t.columns
        inner = strat[cols][not_int[cols]]
        term_strat.append(int(inner.max()) if inner.size else -1)
    term_strat_arr = np.array(term_strat, dtype=int)
    int_terms = term_strat_arr < 0
    dfT = base.copy()
    for t, s in zip(terms.terms, term_strat_arr, strict=True):
        if s >= 0:
            dfT[s] -= len(t.columns)
    # as nlme: the intercept adjustment is decided on the terms (the intercept is a term)
    has_int_term = bool(terms.intercept) or bool(np.any(int_terms))
    if has_int_term:
        dfT[0] -= 1.0
    else:
        dfT[1:] += 1.0
    term_df = np.where(int_terms, dfT.max(), dfT[np.maximum(term_strat_arr, 0)]) if len(term_strat) else np.zeros(0)
    return ContainmentDF(coef=coef, terms=term_df, strata=strata, stratum_of_coef=np.where(not_int, strat, -1))
