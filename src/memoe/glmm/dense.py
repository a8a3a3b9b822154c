"""Weighted penalised least squares for several grouping factors, re-weighted every PIRLS iteration.

:class:`memoe.pls.PLSProblem` computes its cross-products once per data set and rebuilds the sparse
cross-products and the Schur-complement map of the later factors whenever the data change. PIRLS
changes the weights at every iteration, and with a few hundred random effects that rebuild dominates
(grouseticks: 10 ms per iteration, 1 ms here). This class keeps the same blocked layout (first factor
batched by level, the rest dense) but builds only index arrays once; each iteration accumulates the
weighted cross-products with ``np.bincount`` and factors them. The single-factor case stays on
:class:`PLSProblem`, whose per-level statistics are cheap to rebuild.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from memoe.covariance import ThetaMap
from memoe.linalg.batched import batched_backward_solve_t, batched_cholesky, batched_forward_solve

__all__ = ["DenseWpls", "dense_size"]


def dense_size(nlevels: list[int], q: list[int], p: int) -> int:
    """Entries of the dense arrays :class:`DenseWpls` needs: ``(m1 + r + p) (r + p)``."""
    m1 = nlevels[0] * q[0]
    r = sum(lk * qk for lk, qk in zip(nlevels[1:], q[1:], strict=True)) + p
    return (m1 + r) * r


class DenseWpls:
    """``min_{u, beta} || W^1/2 (z - Z Lambda u - X beta) ||^2 + ||u||^2`` in two blocks.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    codes, nlevels, Z : per factor block, as :class:`memoe.pls.PLSProblem` (block 0 = most levels)
    theta_map : ThetaMap

    Notes
    -----
    ``Z Lambda`` has the sparsity of ``Z``: row i has ``m = sum_k q_k`` entries, in the columns
    ``cols[i]`` (block offset + level * q_k + j, the order of ``u`` in
    :class:`~memoe.glmm.pirls.PirlsProblem`) with values ``Z_k[i] @ lambda_k``. Write
    ``A = Lambda' Z' W Z Lambda + I`` with ``A_11`` the first factor's block (block diagonal, one
    q1 x q1 block per level) and append X to the rest ("2"):

        L_1 = chol(A_11) (batched),   G = L_1^-1 A_12,   L_2 = chol(A_22 - G' G),

    the blocked Cholesky factor of Bates et al. (2015, eqs. 18-21). ``log det(L L')`` sums the
    diagonals of ``L_1`` and of the random-effects part of ``L_2``.
    """

    def __init__(self, X, codes, nlevels, Z, theta_map: ThetaMap) -> None:
        self.X = X
        self.Z = Z
        self.theta_map = theta_map
        self.q1 = Z[0].shape[1]
        self.l1 = nlevels[0]
        self.m1 = self.l1 * self.q1
        cols, offset = [], 0
        for c, lk, Zk in zip(codes[1:], nlevels[1:], Z[1:], strict=True):
            qk = Zk.shape[1]
            cols.append(offset + c[:, None] * qk + np.arange(qk)[None, :])
            offset += lk * qk
        self.rz = offset
        q1, rz = self.q1, self.rz
        c1 = codes[0]
        # flat indices into the per-level (l1, q1, q1) block, the (m1, rz) coupling and the (rz, rz) rest
        a = np.arange(q1)
        self._idx11 = (c1[:, None, None] * q1 * q1 + a[None, :, None] * q1 + a[None, None, :]).ravel()
        cr = np.hstack(cols)  # (n, mr)
        self._cr = cr
        self._idx12 = ((c1[:, None] * q1 + a[None, :])[:, :, None] * rz + cr[:, None, :]).ravel()
        self._idx22 = (cr[:, :, None] * rz + cr[:, None, :]).ravel()
        self._c1 = c1

    def solve(self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """Modes ``u`` (flat; first factor then the rest), ``beta`` (empty without X) and ``log det(L L')``."""
        lams = self.theta_map.lambdas(theta)
        V1 = self.Z[0] @ lams[0]  # (n, q1)
        Vr = np.hstack([Zk @ lam for Zk, lam in zip(self.Z[1:], lams[1:], strict=True)])  # (n, mr)
        q1, l1, m1, rz = self.q1, self.l1, self.m1, self.rz
        W1 = V1 * w[:, None]
        Wr = Vr * w[:, None]
        A11 = np.bincount(self._idx11, weights=(W1[:, :, None] * V1[:, None, :]).ravel(), minlength=l1 * q1 * q1)
        A11 = A11.reshape(l1, q1, q1)
        A11[:, np.arange(q1), np.arange(q1)] += 1.0
        A12 = np.bincount(self._idx12, weights=(W1[:, :, None] * Vr[:, None, :]).ravel(), minlength=m1 * rz)
        A22 = np.bincount(self._idx22, weights=(Wr[:, :, None] * Vr[:, None, :]).ravel(), minlength=rz * rz)
        A12 = A12.reshape(m1, rz)
        A22 = A22.reshape(rz, rz)
        A22[np.diag_indices_from(A22)] += 1.0
        rhs1 = np.bincount(
            (self._c1[:, None] * q1 + np.arange(q1)[None, :]).ravel(), weights=(W1 * z[:, None]).ravel(), minlength=m1
        )
        rhs2 = np.bincount(self._cr.ravel(), weights=(Wr * z[:, None]).ravel(), minlength=rz)
        if with_beta and self.X.shape[1]:
            X = self.X
            WX = X * w[:, None]
            ZtWX1 = np.column_stack(
                [np.bincount((self._c1[:, None] * q1 + np.arange(q1)[None, :]).ravel(),
                             weights=(V1 * WX[:, [j]]).ravel(), minlength=m1) for j in range(X.shape[1])]
            )
            ZtWXr = np.column_stack(
                [np.bincount(self._cr.ravel(), weights=(Vr * WX[:, [j]]).ravel(), minlength=rz)
                 for j in range(X.shape[1])]
            )
            A12 = np.hstack([A12, ZtWX1])
            A22 = np.block([[A22, ZtWXr], [ZtWXr.T, X.T @ WX]])
            rhs2 = np.concatenate([rhs2, WX.T @ z])
        r = A22.shape[0]
        L1 = batched_cholesky(A11)
        G = batched_forward_solve(L1, np.ascontiguousarray(A12.reshape(l1, q1, r))).reshape(m1, r)
        L2 = sla.cholesky(A22 - G.T @ G, lower=True, check_finite=False)
        d1 = np.diagonal(L1, axis1=1, axis2=2)
        ldL2 = 2.0 * float(np.log(d1).sum() + np.log(np.diag(L2)[:rz]).sum())
        c1 = batched_forward_solve(L1, rhs1.reshape(l1, q1, 1)).reshape(m1)
        c2 = sla.solve_triangular(L2, rhs2 - G.T @ c1, lower=True, check_finite=False)
        x2 = sla.solve_triangular(L2, c2, lower=True, trans="T", check_finite=False)
        u1 = batched_backward_solve_t(L1, (c1 - G @ x2).reshape(l1, q1, 1)).reshape(m1)
        u = np.concatenate([u1, x2[:rz]])
        beta = x2[rz:] if with_beta else np.zeros(0)
        return u, beta, ldL2
