"""Variance parameters on the standard-deviation / correlation scale, named as lme4 names them.

lme4's ``confint(..., oldNames = FALSE)`` and ``profile`` report, for each random-effects term in
theta order (lower triangle, column by column), ``sd_<column>|<group>`` for a diagonal entry and
``cor_<row column>.<column>|<group>`` for an off-diagonal one, then ``sigma``. This module maps between
that vector ``phi`` and lme4's ``(theta, sigma)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VarParSpace"]

SD, COR, SIGMA = 0, 1, 2


@dataclass(frozen=True)
class _TermIndex:
    q: int
    rows: np.ndarray  # row of each theta entry of the term (column-major lower triangle)
    cols: np.ndarray
    theta_slice: slice


@dataclass(frozen=True)
class VarParSpace:
    """The sd/cor/sigma parameterisation of a design's covariance parameters.

    Attributes
    ----------
    names : list of str
        lme4's names, theta order then ``"sigma"``.
    kinds : numpy.ndarray of int
        0 = standard deviation, 1 = correlation, 2 = sigma.
    lower, upper : numpy.ndarray
        Box of the parameter space: sd and sigma in ``[0, inf)``, correlations in ``[-1, 1]``.
    """

    names: list[str]
    kinds: np.ndarray
    terms: tuple[_TermIndex, ...]
    ntheta: int

    @classmethod
    def from_design(cls, design) -> VarParSpace:
        names: list[str] = []
        kinds: list[int] = []
        terms = []
        for t in design.terms:
            rows, cols = [], []
            for c in range(t.q):
                for r in range(c, t.q):
                    rows.append(r)
                    cols.append(c)
                    if r == c:
                        names.append(f"sd_{t.columns[r]}|{t.group}")
                        kinds.append(SD)
                    else:
                        names.append(f"cor_{t.columns[r]}.{t.columns[c]}|{t.group}")
                        kinds.append(COR)
            terms.append(_TermIndex(t.q, np.array(rows), np.array(cols), t.theta_slice))
        names.append("sigma")
        kinds.append(SIGMA)
        return cls(names=names, kinds=np.array(kinds), terms=tuple(terms), ntheta=design.theta_map.size)

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def lower(self) -> np.ndarray:
        return np.where(self.kinds == COR, -1.0, 0.0)

    @property
    def upper(self) -> np.ndarray:
        return np.where(self.kinds == COR, 1.0, np.inf)

    def phi(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        """``(theta, sigma)`` -> sd/cor/sigma vector."""
        out = np.empty(self.size)
        for ti in self.terms:
            L = np.zeros((ti.q, ti.q))
            L[ti.rows, ti.cols] = theta[ti.theta_slice]
            cov = sigma**2 * (L @ L.T)
            sd = np.sqrt(np.diag(cov))
            vals = np.empty(len(ti.rows))
            for k, (r, c) in enumerate(zip(ti.rows, ti.cols, strict=True)):
                if r == c:
                    vals[k] = sd[r]
                else:
                    den = sd[r] * sd[c]
                    vals[k] = cov[r, c] / den if den > 0 else 0.0
            out[ti.theta_slice] = vals
        out[-1] = sigma
        return out

    def theta(self, phi: np.ndarray) -> np.ndarray | None:
        """sd/cor/sigma vector -> theta; ``None`` outside the space (correlations not positive semi-definite).

        Notes
        -----
        Per term, ``Cov = S C S`` with ``S = diag(sd)`` and ``C`` the correlation matrix; with ``C = L_C L_C'``
        the relative factor is ``S L_C / sigma``, lower triangular with a non-negative diagonal as lme4's.
        """
        sigma = phi[-1]
        if not sigma > 0:
            return None
        theta = np.empty(self.ntheta)
        for ti in self.terms:
            vals = phi[ti.theta_slice]
            if ti.q == 1:
                theta[ti.theta_slice] = vals / sigma
                continue
            C = np.eye(ti.q)
            sd = np.empty(ti.q)
            for v, r, c in zip(vals, ti.rows, ti.cols, strict=True):
                if r == c:
                    sd[r] = v
                else:
                    C[r, c] = C[c, r] = v
            Lc = _chol_psd_corr(C)
            if Lc is None:
                return None
            L = (sd[:, None] * Lc) / sigma
            theta[ti.theta_slice] = L[ti.rows, ti.cols]
        return theta


def _chol_psd_corr(C: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a correlation matrix, allowing the singular boundary (|cor| = 1)."""
    try:
        return np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        pass
    # semi-definite: column-by-column Cholesky that tolerates a zero pivot
    q = C.shape[0]
    L = np.zeros_like(C)
    for j in range(q):
        d = C[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-10:
            return None
        L[j, j] = np.sqrt(max(d, 0.0))
        for i in range(j + 1, q):
            s = C[i, j] - L[i, :j] @ L[j, :j]
            if L[j, j] > 1e-12:
                L[i, j] = s / L[j, j]
            elif abs(s) > 1e-8:
                return None
    return L
