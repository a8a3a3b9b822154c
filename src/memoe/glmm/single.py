"""Weighted penalised least squares for one grouping factor, re-weighted every PIRLS iteration.

With one grouping factor, ``L L' = Lambda' Z' W Z Lambda + I`` is block diagonal: one q x q block per
level. PIRLS changes the weights ``W`` at every iteration; building a fresh
:class:`memoe.lmm.objective.PLSProblem` on the rows scaled by ``sqrt(w)`` for each step (its general set-up:
column matching, blocked per-level sums of every product of the scaled [Z X y] columns, rank
bookkeeping) cost 4-6 ms of the ~8 ms of a step on 10^5 rows. This class accumulates only the
weighted per-level sums one step needs (``np.bincount`` over the level codes, level index last as in
:mod:`memoe.core.linalg.soa`) and factors the q x q blocks with memoe's batched kernels; for q <= 2 (random
intercepts, an intercept and one slope) the per-level factors are closed-form expressions on level vectors
and all weighted products are summed by one call (:meth:`SingleWpls._solve_small`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.linalg.lapack import dposv as _dposv

from memoe.core.covariance import ThetaMap
from memoe.core.linalg.soa import soa_backward_solve_t, soa_cholesky, soa_forward_solve

__all__ = ["GRADIENT_MAX_Q", "MAX_Q", "SingleWpls"]

#: the structure-of-arrays kernels are used up to this many random effects per level
MAX_Q = 6
#: the analytic Laplace gradient up to this many random effects per level (its (levels, q, q) algebra is general;
#: beyond three the k = q (q + 1) / 2 differenced columns of the quasi-Newton start Hessian cost more than they save)
GRADIENT_MAX_Q = 3


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
        # q <= 2: the weighted products whose per-level sums a step needs, as rows of one work array (one
        # reduceat for all of them); (a, b) pairs of Z columns for S, then Z columns for r, then the unmatched
        # X columns' products with each Z column (joint step)
        self._pairs = [(a, b) for a in range(self.q) for b in range(a + 1)]
        self._unmatched = [j for j in range(X.shape[1]) if self._xmatch[j] < 0]
        self._P: np.ndarray | None = None
        self._jidx = None
        npair = len(self._pairs)
        # the row holding w Z_a: the S row of a pair (a, b) with a column of ones Z_b, else r's row npair + a
        # (its product with z is then formed in place, after the S rows have read it)
        self._wz_row = [
            next((i for i, (a2, b2) in enumerate(self._pairs) if a2 == a and self._ones[b2]), npair + a)
            for a in range(self.q)
        ]
        # vech(I) over the S rows, zeros over the r rows (q <= 2)
        self._eye_vech = np.array(
            [[1.0 if a == b else 0.0] for (a, b) in self._pairs] + [[0.0]] * self.q
        )
        self._WX: np.ndarray | None = None
        #: ``X' W X - sum_j G_j' G_j`` of the last joint step (q <= 2): the inverse unscaled covariance of beta
        self.schur: np.ndarray | None = None
        #: ``(du/dtheta, dbeta/dtheta)`` (rows per theta) of the last joint :meth:`laplace_gradient`
        self.sensitivity: tuple[np.ndarray, np.ndarray] | None = None
        # rows sorted by level with every level present: per-level sums by reduceat (faster than bincount)
        c = self.codes
        self._starts = None
        if len(c) and c[0] == 0 and c[-1] == self.l1 - 1:
            d = np.diff(c)
            if np.all((d == 0) | (d == 1)):
                self._starts = np.concatenate(([0], np.flatnonzero(d) + 1))
        # ... and every level with the same number m of rows (balanced longitudinal data): the sums are one
        # matrix-vector product of the (levels, m) view with ones, 4x faster than reduceat's per-segment loop
        self._m: int | None = None
        if self._starts is not None and len(c) % self.l1 == 0:
            m = len(c) // self.l1
            if np.all(np.diff(np.append(self._starts, len(c))) == m):
                self._m, self._ones_m = m, np.ones(m)
        # the unmatched X columns as contiguous rows (their products with the weights, joint step)
        self._XTu = np.ascontiguousarray(self.XT[self._unmatched]) if self._unmatched else None

    @property
    def m(self) -> int | None:
        """Rows per level when the rows are sorted by level and every level has the same number, else None."""
        return self._m

    def _sum(self, values: np.ndarray) -> np.ndarray:
        if self._m is not None:
            return values.reshape(self.l1, self._m) @ self._ones_m
        if self._starts is not None:
            return np.add.reduceat(values, self._starts)
        return np.bincount(self.codes, weights=values, minlength=self.l1)

    def _sums(self, P: np.ndarray) -> np.ndarray:
        """Per-level sums of every row of ``P`` (k, n), C-contiguous -> (k, levels)."""
        if self._m is not None:
            return (P.reshape(-1, self._m) @ self._ones_m).reshape(P.shape[0], self.l1)
        if self._starts is not None:
            return np.add.reduceat(P, self._starts, axis=1)
        return np.stack([np.bincount(self.codes, weights=P[i], minlength=self.l1) for i in range(P.shape[0])])

    def _theta_factors(self, theta: np.ndarray):
        """Lambda at ``theta`` and, for q <= 2, the matrix K with ``vech(Lambda' S Lambda) = K vech(S)``.

        The sandwich is linear in the per-level sums: one small matrix product replaces the 2 q^3 scaled
        additions of level vectors. vech order: (0, 0), (1, 0), (1, 1).
        """
        key = np.asarray(theta, dtype=float).tobytes()
        if key != self._lam_key:  # the same theta at every step of one PIRLS run
            lam = self.theta_map.lambdas(theta)[0]
            if self.q == 1:
                K = np.array([[lam[0, 0] ** 2]])
            elif self.q == 2:
                a, b, c, d = lam[0, 0], lam[0, 1], lam[1, 0], lam[1, 1]
                K = np.array([
                    [a * a, 2.0 * a * c, c * c],
                    [a * b, a * d + c * b, c * d],
                    [b * b, 2.0 * b * d, d * d],
                ])
            else:
                K = None
            if K is not None:
                # [vech(A - I); Lambda' r] = blockdiag(K, Lambda') [vech(S); r]: one product for both per step
                npair = len(self._pairs)
                M = np.zeros((npair + self.q, npair + self.q))
                M[:npair, :npair] = K
                M[npair:, npair:] = lam.T
                K = M
            self._lam_key, self._lam, self._K = key, lam, K
        return self._lam, self._K

    def _joint_index(self):
        """Index arrays of the joint step (q <= 2), built once.

        ``idx[a, j]``: the row of the per-level sums holding ``Z_a' W X_j`` (an S row for an X column equal to a
        Z column, else that column's own product rows); ``matched``, ``mrow``: whether X_j equals a Z column
        and which (0 otherwise); ``unm``: the other columns.
        """
        if self._jidx is None:
            q, npair = self.q, len(self._pairs)
            p = self.X.shape[1]
            idx = np.empty((q, p), dtype=np.intp)
            for j in range(p):
                m = self._xmatch[j]
                for a in range(q):
                    if m >= 0:
                        idx[a, j] = self._pairs.index((max(a, m), min(a, m)))
                    else:
                        idx[a, j] = npair + q + self._unmatched.index(j) * q + a
            matched = self._xmatch >= 0
            unm = np.flatnonzero(~matched)
            self._jidx = (idx, matched, np.where(matched, self._xmatch, 0), unm, np.ix_(unm, unm))
        return self._jidx

    def _solve_small(self, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """:meth:`solve` for q <= 2: the per-level 1 x 1 or 2 x 2 factors in closed form on level vectors.

        One work array holds the weighted products, one reduceat sums them per level, and every per-level
        quantity is a handful of vectorised expressions over the levels (Cholesky ``L = [[l0, 0], [l1, l2]]``:
        ``l0 = sqrt(A_00)``, ``l1 = A_10 / l0``, ``l2 = sqrt(A_11 - l1^2)``): a PIRLS step on 60 levels costs
        tens of microseconds of numpy calls instead of the general kernels' loops.
        """
        q, lam, K = self.q, self._lam, self._K
        ZT, ones = self.ZT, self._ones
        unmatched = self._unmatched if with_beta else []
        nprod = len(self._pairs) + q + q * len(unmatched)
        n = ZT.shape[1]
        if self._P is None or self._P.shape[0] < nprod:
            self._P = np.empty((len(self._pairs) + q + q * len(self._unmatched), n))
        P = self._P[:nprod]
        # w Z_a in its own S row (a, b) with Z_b = 1 where there is one (no copy), else in r's row (see __init__)
        WZ = [w if ones[a] else np.multiply(ZT[a], w, out=P[self._wz_row[a]]) for a in range(q)]
        for i, (a, b) in enumerate(self._pairs):
            if not ones[a] and i == self._wz_row[a]:
                continue
            if ones[b]:
                P[i] = WZ[a]
            else:
                np.multiply(WZ[a], ZT[b], out=P[i])
        npair = len(self._pairs)
        for a in range(q):
            np.multiply(WZ[a], z, out=P[npair + a])
        if unmatched:
            if self._WX is None:
                self._WX = np.empty((len(self._unmatched), n))
            WX = self._WX
            for i, j in enumerate(unmatched):
                np.multiply(self.XT[j], w, out=WX[i])
                for a in range(q):
                    row = P[npair + q + i * q + a]
                    if ones[a]:
                        row[:] = WX[i]
                    else:
                        np.multiply(WX[i], ZT[a], out=row)
        sums = self._sums(P)
        r = sums[npair : npair + q]
        # vech(Lambda' S_j Lambda + I) and Lambda' r_j per level, one product and one addition
        AR = K @ sums[: npair + q]
        AR += self._eye_vech
        A3, rhs = AR[:npair], AR[npair:]
        if q == 1:
            a00 = A3[0]
            l0 = np.sqrt(a00)
            ldL2 = float(np.log(a00).sum())
            c = [rhs[0] / l0]
        else:
            a00 = A3[0]
            l0 = np.sqrt(a00)
            l1 = A3[1] / l0
            d2 = A3[2] - l1 * l1
            l2 = np.sqrt(d2)
            # log det(L L') = sum_j log(A_00 (A_11 - l1^2)): one logarithm per level
            ldL2 = float(np.log(a00 * d2).sum())
            c0 = rhs[0] / l0
            c = [c0, (rhs[1] - l1 * c0) / l2]
        p = self.X.shape[1] if with_beta else 0
        if p:
            idx, matched, mrow, unm, unm_block = self._joint_index()
            # raw per-level sums Z_a' W X_j: a matched column's are S's rows, an unmatched one's its own rows
            ZtWX = sums[idx]  # (q, p, l1)
            T = ZtWX.sum(axis=2)  # Z_a' W X_j over all levels
            M = T[mrow]  # row j: X_j' W X for a column j equal to Z column mrow[j]
            # an unmatched row from the matched columns' rows (every column matched: M is X' W X)
            XtWX = np.where(matched[:, None], M, M.T) if unm.size else M
            XtWz = r.sum(axis=1)[mrow]
            if unm.size:
                WX = self._WX[: unm.size]
                XtWX[unm_block] = WX @ self._XTu.T
                XtWz[unm] = WX @ z
            V = (lam.T @ ZtWX.reshape(q, -1)).reshape(q, p, -1)  # Lambda' Z_j' W X_j
            G0 = V[0] / l0
            G = [G0] if q == 1 else [G0, (V[1] - l1 * G0) / l2]
            Gm = np.concatenate(G, axis=1)  # (p, q l1): sums over (a, level) as matrix products
            Sc = XtWX - Gm @ Gm.T
            rhs_b = XtWz - Gm @ np.concatenate(c)
            # a p x p positive-definite system: LAPACK's dposv directly (~3 us; numpy's solve ~20 us of checks and
            # type dispatch at p = 4), numpy's LU where the Cholesky fails (a Schur complement that lost definiteness)
            self.schur = Sc  # the fixed effects' unscaled information (the caller's whitening reads it)
            _, beta, info = _dposv(Sc, rhs_b, lower=1)
            if info != 0:
                beta = np.linalg.solve(Sc, rhs_b)
            c = [c[a] - beta @ G[a] for a in range(q)]
        else:
            beta = np.zeros(0)
        if q == 1:
            return c[0] / l0, beta, ldL2
        u1 = c[1] / l2
        u0 = (c[0] - l1 * u1) / l0
        u = np.empty((self.l1, 2))
        u[:, 0] = u0
        u[:, 1] = u1
        return u.reshape(-1), beta, ldL2

    def laplace_gradient(
        self, theta: np.ndarray, u: np.ndarray, r: np.ndarray, w: np.ndarray, dw: np.ndarray, joint: bool = False,
        wo: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Gradient in ``(theta, beta)`` of lme4's Laplace deviance at converged uOnly modes (q <= GRADIENT_MAX_Q;
        else None).

        Parameters
        ----------
        theta : numpy.ndarray, shape (k,)
        u : numpy.ndarray, shape (levels q,)
            Conditional modes (level-major).
        r, w, dw : numpy.ndarray, shape (n,)
            ``d dev_i / d eta_i``, the working weights (``d^2 dev_i / d eta_i^2 / 2``: a canonical link) and
            ``d w_i / d eta_i`` at the modes.
        joint : bool, default False
            The modes are joint in (u, beta) (lme4's nAGQ = 0 objective, a function of theta only): returns the
            gradient in theta, with beta moving along the joint modes too.
        wo : numpy.ndarray, shape (n,), optional
            A non-canonical link's observed curvature ``d^2 dev_i / d eta_i^2 / 2`` at the modes (default ``w``):
            the modes move with the penalised deviance's exact Hessian (``S_j``, ``A_j`` of the sensitivities below
            from ``wo``), while ``log det`` keeps lme4's expected weights ``w``.

        Notes
        -----
        ``D = sum dev_i + ||u||^2 + sum_j log det A_j``, ``A_j = Lambda' S_j Lambda + I``, ``S_j = Z_j' W_j Z_j``.
        The penalised deviance is stationary in u at the modes, so its derivative is the partial one:
        ``rho_j' E_t u_j`` (theta_t; ``E_t = d Lambda / d theta_t``, ``rho_j = Z_j' r_j``) and ``X' r`` (beta).
        ``log det A`` has a direct part in theta, ``2 tr(A_j^-1 Lambda' S_j E_t)``, and one through the weights,
        ``v' d eta``, ``v_i = h_i dw_i``, ``h_i = z_i' Lambda A_j^-1 Lambda' z_i``, with the modes moving as
        ``A_j du_j/dtheta_t = -(E_t' rho_j / 2 + Lambda' S_j E_t u_j)`` and ``A_j du_j/dbeta = -Lambda' Z_j' W_j X_j``
        (the derivatives of the stationarity condition ``Lambda' rho_j / 2 + u_j = 0``). With ``joint`` beta is
        stationary too (``X' r = 0``): ``(X' W X - sum_j G_j' A_j^-1 G_j) dbeta/dtheta_t = -sum_j (Z_j' W_j X_j)'
        E_t u_j + sum_j G_j' A_j^-1 b_j`` (``G_j = Lambda' Z_j' W_j X_j``, ``b_j`` the right-hand side above), and
        ``du_j`` gains ``-A_j^-1 G_j dbeta``. All per level in (levels, q, q) arrays.
        """
        q = self.q
        if q > GRADIENT_MAX_Q:
            return None
        tm = self.theta_map
        lam, _ = self._theta_factors(theta)
        ZT, XT, ones, codes = self.ZT, self.XT, self._ones, self.codes
        p, l1 = XT.shape[0], self.l1
        Zc = [None if ones[a] else ZT[a] for a in range(q)]

        def times(a, vec):  # Z_a * vec (no product for a column of ones)
            return vec if Zc[a] is None else Zc[a] * vec

        # per-level sums, one call: wo Z_a Z_b (a >= b), r Z_a, wo Z_a X_k [, w Z_a Z_b: a non-canonical link]
        wc = w if wo is None else wo
        WZ = [times(a, wc) for a in range(q)]
        rows = [times(b, WZ[a]) for a, b in self._pairs] + [times(a, r) for a in range(q)]
        rows += [WZ[a] * XT[k] for k in range(p) for a in range(q)]
        if wo is not None:
            rows += [times(b, times(a, w)) for a, b in self._pairs]
        sums = self._sums(np.array(rows))
        npair = len(self._pairs)
        if q == 1:
            return self._laplace_gradient_scalar(lam[0, 0], u, sums, wc, dw, r, joint,
                                                 None if wo is None else sums[-1])
        S = np.empty((l1, q, q))
        for i, (a, b) in enumerate(self._pairs):
            S[:, a, b] = S[:, b, a] = sums[i]
        rho = sums[npair : npair + q].T  # (l1, q)
        ZWX = sums[npair + q : npair + q + p * q].reshape(p, q, l1).transpose(2, 1, 0)  # (l1, q, p): Z_j' Wo_j X_j
        A = lam.T @ S @ lam
        A[:, range(q), range(q)] += 1.0
        Ainv = np.linalg.inv(A)  # the sensitivities' (observed curvature)
        S_o, Ainv_o = S, Ainv
        if wo is not None:
            # log det's own pieces from the expected weights
            S = np.empty((l1, q, q))
            for i, (a, b) in enumerate(self._pairs):
                S[:, a, b] = S[:, b, a] = sums[npair + q + p * q + i]
            A = lam.T @ S @ lam
            A[:, range(q), range(q)] += 1.0
            Ainv = np.linalg.inv(A)
        LA = lam @ Ainv  # (l1, q, q): Lambda A_j^-1
        M = LA @ lam.T  # Lambda A_j^-1 Lambda'
        # h_i = z_i' M_j z_i, then v = h dw and its per-level sums zeta_j = Z_j' v_j
        h = None
        for a in range(q):
            for b in range(q):
                term = times(a, times(b, np.take(M[:, a, b], codes)))
                h = term if h is None else h + term
        v = h * dw
        zeta = self._sums(np.array([times(a, v) for a in range(q)])).T  # (l1, q)
        U = u.reshape(l1, q)
        lz = zeta @ lam  # rows: (Lambda' zeta_j)'
        # theta part
        k = tm.size
        g = np.empty(k if joint else k + p)
        AinvLtS = Ainv @ lam.T @ S  # A_j^-1 Lambda' S_j
        LZWX = lam.T @ ZWX  # (l1, q, p): G_j
        Xv = XT @ v
        if joint:
            AinvG = Ainv_o @ LZWX  # A_j^-1 G_j
            schur = XT @ (wc * XT).T - np.einsum("lap,laq->pq", LZWX, AinvG)
            dU, dB = np.empty((k, l1 * q)), np.empty((k, p))
        for t in range(k):
            rt, ct = int(tm.row[t]), int(tm.col[t])
            direct = float(rho[:, rt] @ U[:, ct]) + 2.0 * float(AinvLtS[:, ct, rt].sum())
            # A du/dtheta_t = -(e_ct rho_j[rt] / 2 + Lambda' S_j e_rt u_j[ct]) [- G_j dbeta/dtheta_t]
            rhs = (lam.T @ S_o[:, :, rt, None])[:, :, 0] * U[:, ct, None]
            rhs[:, ct] += 0.5 * rho[:, rt]
            Ab = np.einsum("lab,lb->la", Ainv_o, rhs)
            du = -Ab
            through_w = float(zeta[:, rt] @ U[:, ct])
            if joint:
                right = -(U[:, ct] @ ZWX[:, rt, :]) + np.einsum("lap,la->p", LZWX, Ab)
                db = np.linalg.solve(schur, right)
                du = du - AinvG @ db
                through_w += float(Xv @ db)
                dU[t], dB[t] = du.ravel(), db
            g[t] = direct + through_w + float(np.sum(lz * du))
        if joint:
            self.sensitivity = (dU, dB)
            return g
        # beta part: X' r + X' v - sum_j (Lambda' Z_j' W_j X_j)' A_j^-1 Lambda' zeta_j
        x = np.einsum("lab,lb->la", Ainv_o, lz)  # A_j^-1 Lambda' zeta_j
        g[k:] = XT @ r + Xv - np.einsum("lap,la->p", LZWX, x)
        return g

    def _laplace_gradient_scalar(self, lam: float, u, sums, w, dw, r, joint: bool, S_exp=None) -> np.ndarray:
        """:meth:`laplace_gradient` for a scalar random effect: every per-level matrix is a level vector.

        ``sums``: per-level sums of ``w z^2``, ``r z`` and ``w z X_k`` (rows), ``w`` the curvature of the penalised
        deviance. ``A_j = lambda^2 S_j + 1``. ``S_exp``: a non-canonical link's per-level sums of the expected
        weights' ``w z^2`` (log det's; default ``S``).
        """
        XT, codes = self.XT, self.codes
        p = XT.shape[0]
        S_o, rho, ZWX = sums[0], sums[1], sums[2 : 2 + p]  # ZWX: (p, l1)
        A_o = lam * lam * S_o + 1.0
        S = S_o if S_exp is None else S_exp
        A = A_o if S_exp is None else lam * lam * S + 1.0
        h = np.take(lam * lam / A, codes)
        z = None if self._ones[0] else self.ZT[0]
        if z is not None:
            h *= z * z
        v = h * dw
        zeta = self._sum(v if z is None else v * z)
        lz = lam * zeta
        G = lam * ZWX  # (p, l1)
        Xv = XT @ v
        direct = float(rho @ u) + 2.0 * float((lam * S / A).sum())
        Ab = (lam * S_o * u + 0.5 * rho) / A_o
        du = -Ab
        through_w = float(zeta @ u)
        if joint:
            AinvG = G / A_o
            schur = XT @ (w * XT).T - AinvG @ G.T
            db = np.linalg.solve(schur, -(ZWX @ u) + G @ Ab)
            du = du - db @ AinvG
            through_w += float(Xv @ db)
            self.sensitivity = (du[None, :], db[None, :])
            return np.array([direct + through_w + float(lz @ du)])
        g = np.empty(1 + p)
        g[0] = direct + through_w + float(lz @ du)
        g[1:] = XT @ r + Xv - G @ (lz / A_o)
        return g

    def solve(self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """Modes ``u`` (flat, level-major), ``beta`` (empty without X) and ``log det(L L')``."""
        q, l1 = self.q, self.l1
        lam, _ = self._theta_factors(theta)
        if q <= 2:
            return self._solve_small(w, z, with_beta)
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
