"""Weighted penalised least squares for one grouping factor, re-weighted every PIRLS iteration.

With one grouping factor, ``L L' = Lambda' Z' W Z Lambda + I`` is block diagonal: one q x q block per
level. PIRLS changes the weights ``W`` at every iteration; building a fresh
:class:`memoe.lmm.objective.PLSProblem` on the rows scaled by ``sqrt(w)`` for each step (its general set-up:
column matching, blocked per-level sums of every product of the scaled [Z X y] columns, rank
bookkeeping) cost 4-6 ms of the ~8 ms of a step on 10^5 rows. This class accumulates only the
weighted per-level sums one step needs (``np.bincount`` over the level codes, level index last as in
:mod:`memoe.core.linalg.soa`) and factors the q x q blocks with memoe's batched kernels.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from memoe.core.covariance import ThetaMap
from memoe.core.linalg.soa import soa_backward_solve_t, soa_cholesky, soa_forward_solve

__all__ = ["MAX_Q", "SingleWpls"]

#: the structure-of-arrays kernels are used up to this many random effects per level
MAX_Q = 6


def _sandwich(lam: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``Lambda' S_l Lambda`` for every level l of ``S`` (q, q, levels).

    For q <= 3 as 2 q^3 scaled additions of level vectors (no zero entry of Lambda costs anything): einsum's
    generic loop over the same (q, q, q, q, levels) index space is ~3x slower at 10^4 levels.
    """
    q = lam.shape[0]
    if q > 3:
        return np.einsum("ca,cdl,db->abl", lam, S, lam)
    T = np.zeros_like(S)  # T[a, d] = sum_c lam[c, a] S[c, d]
    for a in range(q):
        for c in range(q):
            if lam[c, a] != 0.0:
                T[a] += lam[c, a] * S[c]
    A = np.zeros_like(S)
    for b in range(q):
        for d in range(q):
            if lam[d, b] != 0.0:
                A[:, b] += lam[d, b] * T[:, d]
    return A


class SingleWpls:
    """``min_{u, beta} || W^1/2 (z - Z Lambda u - X beta) ||^2 + ||u||^2`` for one grouping factor.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    codes : numpy.ndarray of int, shape (n,)
        Level of each row.
    nlevels : int
    Z : numpy.ndarray, shape (n, q)
        Raw random-effects columns (q <= :data:`MAX_Q`).
    theta_map : ThetaMap

    Notes
    -----
    With ``V = Z Lambda``, per level j: ``A_j = V_j' W_j V_j + I = L_j L_j'``, ``c_j = L_j^-1 V_j' W_j z_j``
    and (joint update) ``G_j = L_j^-1 V_j' W_j X_j``; then ``beta`` solves
    ``(X' W X - sum G_j' G_j) beta = X' W z - sum G_j' c_j``, ``u_j = L_j^-T (c_j - G_j beta)`` and
    ``log det(L L') = 2 sum_j log diag L_j`` (Bates et al. 2015, eqs. 18-21, with one block).
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, nlevels: int, Z: np.ndarray, theta_map: ThetaMap) -> None:
        self.X = X
        self.codes = np.asarray(codes, dtype=np.intp)
        self.l1 = int(nlevels)
        self.q = Z.shape[1]
        self.theta_map = theta_map
        # columns as contiguous rows: (n, q) column slices are strided and (n, q) @ (q, q) is slow
        self.ZT = np.ascontiguousarray(Z.T)
        self.XT = np.ascontiguousarray(X.T)
        # columns of ones (random intercepts): their products with the weights need no multiplication
        self._ones = [bool(np.all(ZT_a == 1.0)) for ZT_a in self.ZT]
        self._lam_key: bytes | None = None
        # X columns equal to a Z column (index into Z, else -1): their weighted sums are S's
        self._xmatch = np.array(
            [next((a for a in range(self.q) if np.array_equal(self.XT[j], self.ZT[a])), -1) for j in range(X.shape[1])],
            dtype=np.intp,
        )
        # rows sorted by level with every level present: per-level sums by reduceat (faster than bincount)
        c = self.codes
        self._starts = None
        if len(c) and c[0] == 0 and c[-1] == self.l1 - 1:
            d = np.diff(c)
            if np.all((d == 0) | (d == 1)):
                self._starts = np.concatenate(([0], np.flatnonzero(d) + 1))

    def _sum(self, values: np.ndarray) -> np.ndarray:
        if self._starts is not None:
            return np.add.reduceat(values, self._starts)
        return np.bincount(self.codes, weights=values, minlength=self.l1)

    def solve(self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """Modes ``u`` (flat, level-major), ``beta`` (empty without X) and ``log det(L L')``."""
        q, l1 = self.q, self.l1
        key = np.asarray(theta, dtype=float).tobytes()
        if key != self._lam_key:  # the same theta at every step of one PIRLS run
            self._lam_key, self._lam = key, self.theta_map.lambdas(theta)[0]
        lam = self._lam
        ZT = self.ZT
        # per-level weighted sums of the raw columns, S_j = Z_j' W_j Z_j and r_j = Z_j' W_j z_j, then
        # A_j = Lambda' S_j Lambda + I on the small (q, q, levels) arrays: fewer passes over the rows than
        # forming Z Lambda first, and a column of ones (the intercept) costs no product at all
        WZ = [w if self._ones[a] else ZT[a] * w for a in range(q)]
        S = np.empty((q, q, l1))
        buf = np.empty(ZT.shape[1])
        for a in range(q):
            for b in range(a + 1):
                S[a, b] = self._sum(WZ[a] if self._ones[b] else np.multiply(WZ[a], ZT[b], out=buf))
                S[b, a] = S[a, b]
        r = np.empty((q, l1))
        for a in range(q):
            r[a] = self._sum(np.multiply(WZ[a], z, out=buf))
        A = _sandwich(lam, S)
        A[np.arange(q), np.arange(q)] += 1.0
        rhs = (lam.T @ r)[:, None, :]
        L = soa_cholesky(A)
        c = soa_forward_solve(L, rhs)  # (q, 1, l1)
        p = self.X.shape[1] if with_beta else 0
        if p:
            # raw sums Z_a' W X_j per level; a column of X equal to a column of Z (the intercept, a random
            # slope's covariate) reuses S, and X' W X, X' W z are then sums of those per-level sums over the
            # levels: only the other columns of X cost passes over the rows
            XT, match = self.XT, self._xmatch
            ZtWX = np.empty((q, p, l1))
            XtWX = np.empty((p, p))
            XtWz = np.empty(p)
            WXj = {}
            for j in range(p):
                if match[j] >= 0:
                    ZtWX[:, j] = S[:, match[j]]
                    continue
                WXj[j] = XT[j] * w
                for a in range(q):
                    ZtWX[a, j] = self._sum(WXj[j] if self._ones[a] else np.multiply(WZ[a], XT[j], out=buf))
            for j in range(p):
                if match[j] >= 0:
                    XtWX[j] = ZtWX[match[j]].sum(axis=-1)
                    XtWz[j] = r[match[j]].sum()
                else:
                    for k in WXj:
                        XtWX[j, k] = WXj[j] @ XT[k]
                    XtWz[j] = WXj[j] @ z
            XtWX = np.where(match[:, None] >= 0, XtWX, XtWX.T)  # rows of unmatched columns from their columns
            ZtWX = (lam.T @ ZtWX.reshape(q, p * l1)).reshape(q, p, l1)
            G = soa_forward_solve(L, ZtWX)  # (q, p, l1)
            # sums over (a, level) as matrix products (BLAS) instead of einsum's loops
            Gm = np.ascontiguousarray(G.transpose(1, 0, 2)).reshape(p, q * l1)
            S = XtWX - Gm @ Gm.T
            rhs_b = XtWz - Gm @ c[:, 0, :].ravel()
            beta = sla.cho_solve(sla.cho_factor(S, lower=True, check_finite=False), rhs_b, check_finite=False)
            c = c - (beta @ Gm).reshape(q, 1, l1)
        else:
            beta = np.zeros(0)
        u = soa_backward_solve_t(L, c)[:, 0, :]  # (q, l1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ldL2 = 2.0 * float(sum(np.log(L[a, a]).sum() for a in range(q)))
        return np.ascontiguousarray(u.T).reshape(l1 * q), beta, ldL2
