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

__all__ = ["CROSSED_GRADIENT_MAX_Q", "CrossedGradient"]

#: the dense Q x Q algebra (an inverse and a few products per evaluation) stays below a BOBYQA evaluation's cost
#: up to about this many random effects in all; beyond it the crossed fits keep BOBYQA
CROSSED_GRADIENT_MAX_Q = 400


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
        rows, cols, vals = [], [], []
        for b, (c, Zk) in enumerate(zip(codes, Z, strict=True)):
            for a in range(qk[b]):
                rows.append(np.arange(n))
                cols.append(self.offsets[b] + np.asarray(c) * qk[b] + a)
                vals.append(Zk[:, a])
        self.Zs = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, self.Q))
        self.ZsT = self.Zs.T.tocsr()
        # E_t's entries: for theta t (block b, row r, column c of Lambda_b) the pairs (o_b + l q_b + r, o_b + l q_b + c)
        self._E = []
        for t in range(theta_map.size):
            b, r, c = int(theta_map.block[t]), int(theta_map.row[t]), int(theta_map.col[t])
            base = self.offsets[b] + np.arange(nlevels[b]) * qk[b]
            self._E.append((base + r, base + c))
        self._nlevels, self._qk = list(nlevels), qk
        #: ``(du/dtheta, dbeta/dtheta)`` of the last joint gradient (rows per theta)
        self.sensitivity: tuple[np.ndarray, np.ndarray] | None = None

    def _lambda(self, theta: np.ndarray) -> np.ndarray:
        lams = self.theta_map.lambdas(theta)
        L = np.zeros((self.Q, self.Q))
        for b, lam in enumerate(lams):
            q, o = self._qk[b], self.offsets[b]
            for lvl in range(self._nlevels[b]) if q > 1 else ():
                s = o + lvl * q
                L[s : s + q, s : s + q] = lam
            if q == 1:
                idx = np.arange(o, o + self._nlevels[b])
                L[idx, idx] = lam[0, 0]
        return L

    def gradient(self, theta: np.ndarray, u: np.ndarray, r: np.ndarray, w: np.ndarray, dw: np.ndarray,
                 joint: bool = False, wo: np.ndarray | None = None) -> np.ndarray | None:
        """Gradient in ``(theta, beta)`` (``joint``: in theta, beta moving with the joint modes); arguments as
        :meth:`memoe.glmm.single.SingleWpls.laplace_gradient`. None where a factorisation fails."""
        Zs, ZsT, XT = self.Zs, self.ZsT, self.XT
        Q, k, p = self.Q, self.theta_map.size, XT.shape[0]
        lam = self._lambda(theta)
        wc = w if wo is None else wo
        C = (ZsT.multiply(w[None, :]) @ Zs).toarray()
        Co = C if wo is None else (ZsT.multiply(wo[None, :]) @ Zs).toarray()
        A = lam.T @ C @ lam
        A[np.diag_indices(Q)] += 1.0
        Ao = A if wo is None else lam.T @ Co @ lam + np.eye(Q)
        try:
            cA = sla.cho_factor(A, lower=True, check_finite=False)
            cAo = cA if wo is None else sla.cho_factor(Ao, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        Ainv = sla.cho_solve(cA, np.eye(Q), check_finite=False)
        V = Zs @ lam  # (n, Q) dense: Z Lambda
        h = np.einsum("ij,ij->i", V @ Ainv, V)
        v = h * dw
        rho = ZsT @ r
        zeta = ZsT @ v
        lz = lam.T @ zeta
        M = Ainv @ lam.T @ C  # tr(A^-1 Lambda' C E_t) = sum over E_t's entries (i, j) of M[j, i]
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
        LtCo = lam.T @ Co
        g = np.empty(k if joint else k + p)
        for t in range(k):
            ri, ci = self._E[t]
            Etu = np.zeros(Q)
            Etu[ri] = u[ci]
            Etrho = np.zeros(Q)
            Etrho[ci] = rho[ri]
            direct = float(rho @ Etu) + 2.0 * float(M[ci, ri].sum())
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
