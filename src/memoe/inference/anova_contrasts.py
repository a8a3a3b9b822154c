"""Contrast matrices of lmerTest's type I and type III ANOVA tables, term by term.

* **Type I** (sequential): rows of the unit upper-triangular factor of ``X'X`` from lmerTest's
  ``doolittle`` (an LU without pivoting, entries below ``1e-6`` set to zero), the rows of each term.
* **Type III**: lmerTest's ``extract_contrasts_type3``. With ``X_T`` the design in treatment coding
  and ``rdX`` the "complete" design (intercept, then every term dummy-coded with all levels of its
  factors)::

      L = zapsmall(t(ginv(X_T) rdX))          # rdX columns in X_T coordinates, shape (m, p)

  then, highest-order terms first, the columns of each term contained in other terms are replaced by
  their residuals on the columns of the containing terms; the rows of ``L`` for the ``rdX`` columns
  that are also ``X_T`` columns form the contrasts; a term's contrast is ``t(L[, term columns])``
  without zero rows. Term ``F1`` is contained in ``F2`` when ``F2`` has all of ``F1``'s
  (contrast-coded) variables and more, with the same numeric variables. When the fit does not use
  treatment coding, the contrasts are mapped with ``ginv(X_T) X``. Models with at most one term or
  one column use the type I contrasts (as lmerTest).
"""

from __future__ import annotations

import numpy as np

from memoe.core.design.fixed import aliased_columns
from memoe.inference.terms import FixedTerms, factor_values

__all__ = ["doolittle", "type1_contrasts", "type3_contrasts", "zapsmall"]


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest absolute entry."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return x
    mx = float(np.max(np.abs(x)))
    if not mx > 0:
        return x
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))


def doolittle(x: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """lmerTest's ``doolittle``: ``x = L U`` without pivoting, L unit lower triangular.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, p)
    eps : float
        Pivots ``|U[i, i]| < eps`` zero their column of L; entries below ``eps`` are zeroed at the end.

    Returns
    -------
    L, U : numpy.ndarray, shape (p, p)
    """
    n = x.shape[0]
    L = np.eye(n)
    U = np.zeros((n, n))
    for i in range(n):
        U[i, :] = x[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = x[i + 1 :, i] - L[i + 1 :, :i] @ U[:i, i]
            L[i + 1 :, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    U[np.abs(U) < eps] = 0.0
    return L, U


def type1_contrasts(X: np.ndarray, terms: FixedTerms) -> dict[str, np.ndarray]:
    """Sequential (type I) contrasts, one (k, p) matrix per term."""
    p = X.shape[1]
    if p == 0 or (p == 1 and terms.intercept):
        return {}
    Lt = np.ones((1, 1)) if p == 1 else doolittle(X.T @ X)[0].T
    return {t.label: Lt[t.columns, :] for t in terms.terms}


def _coded_columns(
    values: dict[str, np.ndarray], factors: list[tuple[str, bool, bool]]
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Columns of one (scoped) term: products of per-factor codings, the first factor varying fastest.

    ``factors`` holds ``(variable, numeric, drop_first_level)``. Returns the (n, k) columns and, per
    column, the level index of each factor (0 for numeric factors), used to match columns across codings.
    """
    cols = None
    keys: list[tuple[int, ...]] = [()]
    for var, numeric, drop_first in factors:
        v = values[var]
        if numeric:
            block = v[:, None]
            levels = [0]
        else:
            levels = list(range(1, v.shape[1])) if drop_first else list(range(v.shape[1]))
            block = v[:, levels]
        if cols is None:
            cols, keys = block, [(lev,) for lev in levels]
        else:
            # earlier factors vary fastest: the new factor's level is the slow index
            cols = np.concatenate([cols * block[:, [j]] for j in range(block.shape[1])], axis=1)
            keys = [(*k, lev) for lev in levels for k in keys]
    assert cols is not None
    return cols, keys


def _contains(terms: FixedTerms) -> list[list[int]]:
    """For each term, the terms that contain it (lmerTest's ``containment``)."""
    sets = []
    for t in terms.terms:
        vars1 = {v for v, red in zip(t.variables, t.reduced, strict=True) if red}
        nums = {v for v, num, red in zip(t.variables, t.numeric, t.reduced, strict=True) if red and num}
        sets.append((vars1, nums))
    out = []
    for v1, n1 in sets:
        out.append([j for j, (v2, n2) in enumerate(sets) if v1 <= v2 and len(v2 - v1) > 0 and n1 == n2])
    return out


def type3_contrasts(fit, terms: FixedTerms) -> dict[str, np.ndarray]:
    """Type III contrasts as lmerTest computes them, one (k, p) matrix per term."""
    # the model matrix as given (an LMM with prior weights works on sqrt(w)-scaled rows)
    raw = getattr(fit.design, "raw_rows", None)
    X = fit.design.X if raw is None else raw(fit.design.X)
    p = X.shape[1]
    if p <= 1 or len(terms.terms) <= 1:
        return type1_contrasts(X, terms)
    n = X.shape[0]
    values: dict[str, np.ndarray] = {}
    for t in terms.terms:
        for v, num in zip(t.variables, t.numeric, strict=True):
            if v not in values:
                values[v] = factor_values(fit, v, num)
    # complete design rdX and treatment-coded X_T, with the rdX column of every X_T column
    rd_cols, rd_keys, rd_term = [], [], []
    xt_cols, xt_keys, xt_term = [], [], []
    if terms.intercept:
        for cols, keys, tags in ((rd_cols, rd_keys, rd_term), (xt_cols, xt_keys, xt_term)):
            cols.append(np.ones((n, 1)))
            keys.append(("(Intercept)",))
            tags.append(-1)
    for i, t in enumerate(terms.terms):
        numeric = dict(zip(t.variables, t.numeric, strict=True))
        full, keys = _coded_columns(values, [(v, numeric[v], False) for v in t.variables])
        rd_cols.append(full)
        rd_keys.extend((i, tuple(zip(t.variables, k, strict=True))) for k in keys)
        rd_term.extend([i] * full.shape[1])
        for sc in t.scoped:
            cols, keys = _coded_columns(values, [(v, numeric[v], red) for v, red in sc])
            xt_cols.append(cols)
            order = [v for v, _ in sc]
            # key the column by (variable, level) pairs in the term's variable order
            xt_keys.extend(
                (i, tuple(sorted(zip(order, k, strict=True), key=lambda vl: t.variables.index(vl[0])))) for k in keys
            )
            xt_term.extend([i] * cols.shape[1])
    rdX = np.concatenate(rd_cols, axis=1)
    XT = np.concatenate(xt_cols, axis=1)
    xt_term_arr = np.array(xt_term)
    same_coding = XT.shape == X.shape and np.allclose(XT, X, rtol=1e-12, atol=1e-12)
    if same_coding:
        XT = X
    else:
        keep = np.setdiff1d(np.arange(XT.shape[1]), aliased_columns(XT))
        XT, xt_term_arr = XT[:, keep], xt_term_arr[keep]
        xt_keys = [xt_keys[j] for j in keep]
    L = zapsmall(np.linalg.pinv(XT) @ rdX).T  # (m, pT)
    cols_of = {i: np.flatnonzero(xt_term_arr == i) for i in range(len(terms.terms))}
    contains = _contains(terms)
    order = sorted(range(len(terms.terms)), key=lambda i: -terms.terms[i].order)
    for i in order:
        if contains[i]:
            C = L[:, np.concatenate([cols_of[j] for j in contains[i]])]
            Y = L[:, cols_of[i]]
            coef, *_ = np.linalg.lstsq(C, Y, rcond=None)
            L[:, cols_of[i]] = zapsmall(Y - C @ coef)
    rd_index = {key: j for j, key in enumerate(rd_keys)}
    rows = np.array([rd_index[key] for key in xt_keys])
    LT = L[rows, :]  # (pT, pT): rows = X_T coefficients
    mapping = None if same_coding else zapsmall(np.linalg.pinv(XT) @ X)
    out = {}
    for i, t in enumerate(terms.terms):
        Lt = LT[:, cols_of[i]].T
        Lt = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
        out[t.label] = Lt if mapping is None else Lt @ mapping
    return out
