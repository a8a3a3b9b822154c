"""The analytic gradient of lme4's Laplace deviance for several grouping factors with few random effects in all.

The single-factor gradient (:meth:`memoe.glmm.single.SingleWpls.laplace_gradient`) works per level; with crossed
or nested factors ``A = Lambda' Z' W Z Lambda + I`` couples the levels, so here every piece is a dense ``Q x Q``
matrix (``Q`` random effects in all, at most :data:`CROSSED_GRADIENT_MAX_Q`) and ``Z`` a sparse matrix built once.
The formulas are the single-factor ones with ``A_j`` replaced by ``A``:

    D = sum dev_i + ||u||^2 + log det A,
    dD/dtheta_t = rho' E_t u + 2 tr(A^-1 Lambda' C E_t) + v' (Z E_t u + Z Lambda du/dtheta_t [+ X dbeta/dtheta_t]),
    dD/dbeta = X' r + X' v - (Lambda' Z' Wo X)' Ao^-1 Lambda' Z' v,

with ``rho = Z' r``, ``C = Z' W Z``, ``E_t = dLambda/dtheta_t``, ``v_i = h_i dw_i``, ``h_i = (Z Lambda A^-1 Lambda'
Z')_ii`` and the modes moving by the stationarity condition ``Lambda' Z' r / 2 + u = 0``:
``Ao du/dtheta_t = -(E_t' rho / 2 + Lambda' Co E_t u)``, ``Ao = Lambda' Co Lambda + I`` with the observed curvature
(``Co = C`` for a canonical link). With ``joint`` (lme4's nAGQ = 0 objective) beta is stationary too, and (u, beta)
move together by the penalised deviance's joint Hessian.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg.lapack import dpotri as _dpotri

__all__ = ["CROSSED_GRADIENT_MAX_Q", "CrossedGradient"]

#: the dense Q x Q algebra (two Cholesky factors and an inverse per evaluation) pays up to about this many random
#: effects in all: crossed_bin (Q = 90) 136 -> 58 ms CPU, while VerbAgg (Q = 340) went 0.36 -> 0.42 s (its ~20 ms
#: gradient outweighs the 125 -> 22 evaluations), so beyond it the crossed fits keep BOBYQA
CROSSED_GRADIENT_MAX_Q = 200


class CrossedGradient:
    """Laplace-deviance gradient for the dense multi-factor path (``Q <= CROSSED_GRADIENT_MAX_Q``).

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    codes, nlevels, Z : per factor block (level codes, level counts, raw random-effects columns)
    theta_map : memoe.core.covariance.ThetaMap
    """

    def __init__(self, X, codes, nlevels, Z, theta_map) -> None:
        self.X = X
        self.XT = np.ascontiguousarray(X.T)
        self.theta_map = theta_map
        qk = [Zk.shape[1] for Zk in Z]
        self.offsets = np.concatenate(([0], np.cumsum([lk * q for lk, q in zip(nlevels, qk, strict=True)])))
        self.Q = int(self.offsets[-1])
        n = X.shape[0]
        # Z's entries per row: column (n, m) and raw value (n, m), m = sum of q_k; Z Lambda has the same pattern
        cols = [self.offsets[b] + np.asarray(c)[:, None] * qk[b] + np.arange(qk[b])[None, :]
                for b, c in enumerate(codes)]
        self._cols = np.ascontiguousarray(np.hstack(cols))
        self._Z = Z
        vals = np.hstack([np.asarray(Zk, dtype=float) for Zk in Z])
        m = self._cols.shape[1]
        self.Zs = sp.csr_matrix((vals.ravel(), (np.repeat(np.arange(n), m), self._cols.ravel())), shape=(n, self.Q))
        self.ZsT = self.Zs.T.tocsr()
        # E_t's entries: for theta t (block b, row r, column c of Lambda_b) the pairs (o_b + l q_b + r, o_b + l q_b + c)
        self._E = []
        for t in range(theta_map.size):
            b, r, c = int(theta_map.block[t]), int(theta_map.row[t]), int(theta_map.col[t])
            base = self.offsets[b] + np.arange(nlevels[b]) * qk[b]
            self._E.append((base + r, base + c))
        self._nlevels, self._qk = list(nlevels), qk
        # Z' W Z by one bincount over the pairs of each row's entries (no sparse products per call)
        self._pair_idx = (self._cols[:, :, None] * self.Q + self._cols[:, None, :]).ravel()
        self._zz = (vals[:, :, None] * vals[:, None, :]).reshape(n, m * m)
        self._diagonal = all(q == 1 for q in qk)  # scalar factors only: Lambda is diagonal
        #: ``(du/dtheta, dbeta/dtheta)`` of the last joint gradient (rows per theta)
        self.sensitivity: tuple[np.ndarray, np.ndarray] | None = None

    def _lambda(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lambda (dense Q x Q: linear in theta, one scatter per entry) and ``Z Lambda``'s values on Z's pattern."""
        lam = np.zeros((self.Q, self.Q))
        for t, (ri, ci) in enumerate(self._E):
            lam[ri, ci] = theta[t]
        lams = self.theta_map.lambdas(theta)
        V = np.hstack([np.asarray(Zk, dtype=float) @ lb for Zk, lb in zip(self._Z, lams, strict=True)])
        return lam, V

    def _cross(self, w: np.ndarray) -> np.ndarray:
        """``Z' W Z`` (dense Q x Q)."""
        Q = self.Q
        return np.bincount(self._pair_idx, weights=(self._zz * w[:, None]).ravel(), minlength=Q * Q).reshape(Q, Q)

    def posterior_blocks(self, theta: np.ndarray, w: np.ndarray, u: np.ndarray):
        """Per factor: the spherical modes (levels, q) and the diagonal blocks of ``A^-1`` (levels, q, q), for the
        EM start of the first stage; None where ``A`` is not positive definite."""
        lam, _ = self._lambda(theta)
        C = self._cross(w)
        A = lam.T @ C @ lam
        A[np.diag_indices(self.Q)] += 1.0
        inv = _factor_and_inverse(A)
        if inv is None:
            return None
        Ainv = inv[1]
        out = []
        for b, (nl, q) in enumerate(zip(self._nlevels, self._qk, strict=True)):
            idx = self.offsets[b] + np.arange(nl * q).reshape(nl, q)
            out.append((u[idx], Ainv[idx[:, :, None], idx[:, None, :]]))
        return out

    def gradient(self, theta: np.ndarray, u: np.ndarray, r: np.ndarray, w: np.ndarray, dw: np.ndarray,
                 joint: bool = False, wo: np.ndarray | None = None) -> np.ndarray | None:
        """Gradient in ``(theta, beta)`` (``joint``: in theta, beta moving with the joint modes); arguments as
        :meth:`memoe.glmm.single.SingleWpls.laplace_gradient`. None where a factorisation fails."""
        ZsT, XT = self.ZsT, self.XT
        Q, k, p = self.Q, self.theta_map.size, XT.shape[0]
        lam, Vv = self._lambda(theta)
        wc = w if wo is None else wo
        C = self._cross(w)
        if self._diagonal:
            d = np.diag(lam)
            LtC = d[:, None] * C  # Lambda' C
            A = LtC * d[None, :]
        else:
            LtC = lam.T @ C
            A = LtC @ lam
        A[np.diag_indices(Q)] += 1.0
        if wo is None:
            LtCo, Ao = LtC, A
        else:
            Co = self._cross(wo)
            LtCo = d[:, None] * Co if self._diagonal else lam.T @ Co
            Ao = (LtCo * d[None, :] if self._diagonal else LtCo @ lam) + np.eye(Q)
        inv = _factor_and_inverse(A)
        if inv is None:
            return None
        cA, Ainv = inv
        try:
            cAo = cA if wo is None else sla.cho_factor(Ao, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        # h_i = (Z Lambda A^-1 Lambda' Z')_ii from the few entries of row i: sum_ab V_ia V_ib Ainv[c_ia, c_ib]
        cols, m = self._cols, self._cols.shape[1]
        h = np.zeros(len(r))
        for a in range(m):
            for b in range(m):
                h += Vv[:, a] * Vv[:, b] * Ainv[cols[:, a], cols[:, b]]
        v = h * dw
        rho = ZsT @ r
        zeta = ZsT @ v
        lz = lam.T @ zeta
        Xv = XT @ v
        X_w = self.X * wc[:, None]
        ZWoX = ZsT @ X_w  # (Q, p): Z' Wo X
        LZWoX = lam.T @ ZWoX
        if joint:
            H = np.empty((Q + p, Q + p))
            H[:Q, :Q] = Ao
            H[:Q, Q:] = LZWoX
            H[Q:, :Q] = LZWoX.T
            H[Q:, Q:] = XT @ X_w
            try:
                cH = sla.cho_factor(H, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                return None
            dU, dB = np.empty((k, Q)), np.empty((k, p))
        g = np.empty(k if joint else k + p)
        for t in range(k):
            ri, ci = self._E[t]
            Etu = np.zeros(Q)
            Etu[ri] = u[ci]
            Etrho = np.zeros(Q)
            Etrho[ci] = rho[ri]
            # tr(A^-1 Lambda' C E_t) = sum over E_t's entries (r_l, c_l) of (A^-1 Lambda' C)[c_l, r_l]
            direct = float(rho @ Etu) + 2.0 * float(np.einsum("lj,jl->", Ainv[ci], LtC[:, ri]))
            rhs_u = 0.5 * Etrho + LtCo @ Etu
            through_w = float(zeta @ Etu)
            if joint:
                sol = -sla.cho_solve(cH, np.concatenate([rhs_u, ZWoX.T @ Etu]), check_finite=False)
                du, db = sol[:Q], sol[Q:]
                through_w += float(Xv @ db)
                dU[t], dB[t] = du, db
            else:
                du = -sla.cho_solve(cAo, rhs_u, check_finite=False)
            g[t] = direct + through_w + float(lz @ du)
        if joint:
            self.sensitivity = (dU, dB)
            return g
        g[k:] = XT @ r + Xv - LZWoX.T @ sla.cho_solve(cAo, lz, check_finite=False)
        return g


def _factor_and_inverse(A: np.ndarray):
    """Cholesky factor (``cho_factor`` form) and full symmetric inverse of the SPD ``A``; None if not SPD.

    The inverse comes from the factor by LAPACK's ``potri`` (Q^3 / 3 flops; a solve with I costs 2 Q^3).
    """
    try:
        cA = sla.cho_factor(A, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    Ainv, info = _dpotri(cA[0], lower=1)
    if info != 0:
        return None
    return cA, np.tril(Ainv) + np.tril(Ainv, -1).T
