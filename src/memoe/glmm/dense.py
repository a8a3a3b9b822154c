"""Weighted penalised least squares with one dense Cholesky factor, for small crossed designs.

With several grouping factors :class:`memoe.pls.PLSProblem` rebuilds its sparse cross-products and
Schur-complement map for every new set of weights, which dominates a PIRLS iteration when the model
has a few hundred random effects (grouseticks: 181; 10 ms per iteration there, 0.5 ms here). Here the
column pattern of ``Z`` is built once and each iteration accumulates ``Lambda' Z' W Z Lambda + I``
(q x q) with ``np.bincount`` and factors it densely; the blocked
:class:`PLSProblem` stays the path for large models and for everything computed once per fit.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from memoe.covariance import ThetaMap

__all__ = ["DenseWpls"]


class DenseWpls:
    """``min_{u, beta} || W^1/2 (z - Z Lambda u - X beta) ||^2 + ||u||^2`` with a dense factor.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    codes, nlevels, Z : per factor block, as :class:`memoe.pls.PLSProblem`
    theta_map : ThetaMap

    Notes
    -----
    ``Z Lambda`` has the sparsity of ``Z``: row i has ``m = sum_k q_k`` entries, in columns ``cols``
    (block offset + level * q_k + j; the order of ``u`` in :class:`~memoe.glmm.pirls.PirlsProblem`)
    with values ``Z_k[i] @ lambda_k`` per block. The cross-products are accumulated from these
    (n, m) arrays with ``np.bincount``, with no sparse-matrix objects per iteration.
    With ``A = Lambda' Z' W Z Lambda + I = L L'``, ``G = L^-1 Lambda' Z' W X`` and
    ``R_X R_X' = X' W X - G' G`` (Bates et al. 2015, eqs. 18-21), ``beta`` solves
    ``R_X R_X' beta = X' W z - G' c_u`` with ``c_u = L^-1 Lambda' Z' W z``, and
    ``u = L'^-1 (c_u - G beta)``.
    """

    def __init__(self, X, codes, nlevels, Z, theta_map: ThetaMap) -> None:
        cols, offset = [], 0
        for c, lk, Zk in zip(codes, nlevels, Z, strict=True):
            qk = Zk.shape[1]
            cols.append(offset + c[:, None] * qk + np.arange(qk)[None, :])
            offset += lk * qk
        self.cols = np.ascontiguousarray(np.hstack(cols))  # (n, m)
        self.q = offset
        self.Z = Z
        self.X = X
        self.theta_map = theta_map
        m = self.cols.shape[1]
        # flat (i, a, b) -> A index, built once
        self._pair_index = (self.cols[:, :, None] * self.q + self.cols[:, None, :]).ravel()
        self._m = m

    def values(self, theta: np.ndarray) -> np.ndarray:
        """Entries of ``Z Lambda`` at ``cols``, shape (n, m)."""
        lams = self.theta_map.lambdas(theta)
        return np.hstack([Zk @ lam for Zk, lam in zip(self.Z, lams, strict=True)])

    def solve(self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """Modes ``u`` (flat), ``beta`` (empty without X) and ``log det(L L')``."""
        q = self.q
        V = self.values(theta)
        WV = V * w[:, None]
        A = np.bincount(
            self._pair_index, weights=(WV[:, :, None] * V[:, None, :]).ravel(), minlength=q * q
        ).reshape(q, q)
        A[np.diag_indices_from(A)] += 1.0
        L = sla.cholesky(A, lower=True, check_finite=False)
        ldL2 = 2.0 * float(np.log(np.diag(L)).sum())
        flat = self.cols.ravel()
        rhs = np.bincount(flat, weights=(WV * z[:, None]).ravel(), minlength=q)
        cu = sla.solve_triangular(L, rhs, lower=True, check_finite=False)
        if not with_beta or self.X.shape[1] == 0:
            u = sla.solve_triangular(L, cu, lower=True, trans="T", check_finite=False)
            return u, np.zeros(0), ldL2
        WX = self.X * w[:, None]
        ZtWX = np.column_stack(
            [np.bincount(flat, weights=(V * WX[:, [j]]).ravel(), minlength=q) for j in range(self.X.shape[1])]
        )
        G = sla.solve_triangular(L, ZtWX, lower=True, check_finite=False)
        S = self.X.T @ WX - G.T @ G
        beta = sla.solve(S, WX.T @ z - G.T @ cu, assume_a="pos", check_finite=False)
        u = sla.solve_triangular(L, cu - G @ beta, lower=True, trans="T", check_finite=False)
        return u, beta, ldL2
