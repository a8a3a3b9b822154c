"""Weighted penalised least squares for several grouping factors, re-weighted every PIRLS iteration.

:class:`memoe.lmm.objective.PLSProblem` computes its cross-products once per data set and rebuilds the sparse
cross-products and the Schur-complement map of the later factors whenever the data change. PIRLS
changes the weights at every iteration, and with a few hundred random effects that rebuild dominates
(grouseticks: 10 ms per iteration, 1 ms here). This class keeps the same blocked layout (first factor
batched by level, the rest dense) but builds the sparsity pattern once; each iteration only
accumulates the weighted values into it with ``np.bincount`` and factors. The single-factor case
stays on :class:`PLSProblem`, whose per-level statistics are cheap to rebuild.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from memoe.core.covariance import ThetaMap
from memoe.core.linalg.batched import batched_backward_solve_t, batched_cholesky, batched_forward_solve

__all__ = ["DenseWpls", "dense_size"]


def dense_size(nlevels: list[int], q: list[int], p: int) -> int:
    """Entries of the dense Schur complement :class:`DenseWpls` factors: ``(r + p)^2``."""
    r = sum(lk * qk for lk, qk in zip(nlevels[1:], q[1:], strict=True)) + p
    return r * r


class DenseWpls:
    """``min_{u, beta} || W^1/2 (z - Z Lambda u - X beta) ||^2 + ||u||^2`` in two blocks.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    codes, nlevels, Z : per factor block, as :class:`memoe.lmm.objective.PLSProblem` (block 0 = most levels)
    theta_map : ThetaMap

    Notes
    -----
    ``Z Lambda`` has the sparsity of ``Z``. Write ``A = Lambda' Z' W Z Lambda + I`` with ``A_11`` the
    first factor's block (block diagonal, one q1 x q1 block per level), ``A_1r`` its (sparse)
    coupling with the other factors and ``A_rr`` the rest, and append X to the rest:

        L_1 = chol(A_11) (batched),   G_z = L_1^-1 A_1r (sparse),   G_x = L_1^-1 Lambda_1' Z_1' W X,
        L_2 = chol([A_rr, .; X' W Z_r Lambda_r, X' W X] - G' G)     (dense, (r + p) x (r + p)),

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
        q1, rz, m1 = self.q1, self.rz, self.m1
        a = np.arange(q1)
        self._c1 = codes[0]
        self._rows1 = (self._c1[:, None] * q1 + a[None, :]).ravel()  # row of u_1 per (i, a)
        cr = np.hstack(cols)  # (n, mr): columns of the rest per row
        self._cr = cr
        # flat indices into the per-level (l1, q1, q1) block and the dense (rz, rz) rest
        self._idx11 = (self._c1[:, None, None] * q1 * q1 + a[None, :, None] * q1 + a[None, None, :]).ravel()
        self._idx22 = (cr[:, :, None] * rz + cr[:, None, :]).ravel()
        # CSR pattern of the coupling A_1r, built once; each (i, a, c) entry maps to one stored value
        n, mr = cr.shape
        rows = np.broadcast_to(self._rows1.reshape(n, q1)[:, :, None], (n, q1, mr)).ravel()
        cols12 = np.broadcast_to(cr[:, None, :], (n, q1, mr)).ravel()
        key = rows.astype(np.int64) * rz + cols12
        uniq, self._map12 = np.unique(key, return_inverse=True)
        pattern = sp.csr_matrix((np.ones(len(uniq)), (uniq // rz, uniq % rz)), shape=(m1, rz))
        pattern.sort_indices()
        # with sorted indices the CSR data order is the row-major order of the sorted unique keys
        self._indices, self._indptr = pattern.indices, pattern.indptr
        self._nnz = len(uniq)
        self._pairs = self._pair_map() if q1 == 1 else None
        # Z Lambda of the last theta: PIRLS changes only the weights between its iterations at one theta
        self._v_key: bytes | None = None
        self._v: tuple[np.ndarray, np.ndarray] | None = None
        self._zt_key: bytes | None = None
        if self._pairs is not None:
            # G_z dense (m1 x rz) when it is small and its entry pairs outnumber a dense product's work
            self._dense_g = self.m1 * self.rz <= 2**20 and self.m1 * self.rz * self.rz <= 32 * len(self._pairs[0])
            self._gpos = self._pairs[4] * self.rz + self._indices

    def _pair_map(self):
        """With a scalar first factor: the products ``G_z' G_z`` needs, on the fixed CSR pattern.

        ``G_z = T A_1r`` has the pattern of ``A_1r`` (``T`` is diagonal when q1 = 1), and entry (c, d) of
        ``G_z' G_z`` sums ``G[j, c] G[j, d]`` over the rows j holding both. Every such pair of stored
        entries of one row (c <= d) is listed once here, with its distinct position in the lower
        triangle of the dense (rz x rz) block, so each PIRLS step costs one product per pair and one
        ``bincount`` instead of two sparse-sparse products (3000 x 1000 crossed binary: 26 ms -> ~4 ms
        per step).
        """
        indptr, indices, rz = self._indptr, self._indices, self.rz
        lengths = np.diff(indptr)
        pa, pb = [], []
        for r in np.unique(lengths[lengths > 0]):
            rows = np.flatnonzero(lengths == r)
            ia, ib = np.triu_indices(int(r))
            start = indptr[rows][:, None]
            pa.append((start + ia[None, :]).ravel())
            pb.append((start + ib[None, :]).ravel())
        if not pa:
            return None
        pa, pb = np.concatenate(pa), np.concatenate(pb)
        # indices are sorted within a row, so indices[pa] <= indices[pb]: row-major lower triangle
        target = indices[pb].astype(np.int64) * rz + indices[pa]
        positions, inverse = np.unique(target, return_inverse=True)
        row_of = np.repeat(np.arange(len(lengths)), lengths)
        return pa, pb, positions, inverse.ravel(), row_of

    def _coupling(self, W1: np.ndarray, Vr: np.ndarray) -> sp.csr_matrix:
        """``A_1r = Lambda_1' Z_1' W Z_r Lambda_r`` as CSR (m1 x rz) on the fixed pattern."""
        vals = (W1[:, :, None] * Vr[:, None, :]).ravel()
        data = np.bincount(self._map12, weights=vals, minlength=self._nnz)
        return sp.csr_matrix((data, self._indices, self._indptr), shape=(self.m1, self.rz))

    def _zlambda(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Z_1 Lambda_1`` (n, q1) and the rest's ``Z_r Lambda_r`` (n, mr), cached for the last theta."""
        key = np.asarray(theta, dtype=float).tobytes()
        if key != self._v_key:
            lams = self.theta_map.lambdas(theta)
            V1 = self.Z[0] @ lams[0]
            Vr = np.hstack([Zk @ lam for Zk, lam in zip(self.Z[1:], lams[1:], strict=True)])
            self._v_key, self._v = key, (V1, Vr)
        return self._v

    def solve(self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """Modes ``u`` (flat; first factor then the rest), ``beta`` (empty without X) and ``log det(L L')``."""
        V1, Vr = self._zlambda(theta)
        if self._pairs is not None:
            return self._solve_scalar1(V1[:, 0], Vr, w, z, with_beta)
        q1, l1, m1, rz = self.q1, self.l1, self.m1, self.rz
        W1 = V1 * w[:, None]
        Wr = Vr * w[:, None]
        A11 = np.bincount(self._idx11, weights=(W1[:, :, None] * V1[:, None, :]).ravel(), minlength=l1 * q1 * q1)
        A11 = A11.reshape(l1, q1, q1)
        A11[:, np.arange(q1), np.arange(q1)] += 1.0
        A22 = np.bincount(self._idx22, weights=(Wr[:, :, None] * Vr[:, None, :]).ravel(), minlength=rz * rz)
        A22 = A22.reshape(rz, rz)
        A22[np.diag_indices_from(A22)] += 1.0
        rhs1 = np.bincount(self._rows1, weights=(W1 * z[:, None]).ravel(), minlength=m1)
        rhs2 = np.bincount(self._cr.ravel(), weights=(Wr * z[:, None]).ravel(), minlength=rz)

        L1 = batched_cholesky(A11)
        if self._pairs is not None:
            # scalar first factor: T = diag(1 / L1) scales the rows of A_1r; only the lower triangle of
            # S is formed (and read: the Cholesky below takes the lower triangle)
            pa, pb, positions, inverse, row_of = self._pairs
            A1r = self._coupling(W1, Vr)
            gdata = A1r.data / L1.reshape(l1)[row_of]
            Gz = sp.csr_matrix((gdata, self._indices, self._indptr), shape=(m1, rz))
            S = A22
            S.reshape(-1)[positions] -= np.bincount(inverse, weights=gdata[pa] * gdata[pb], minlength=len(positions))
        else:
            # T = blockdiag(L1_j^-1): G_z = T A_1r keeps the coupling sparse
            Tinv = batched_forward_solve(L1, np.ascontiguousarray(np.broadcast_to(np.eye(q1), (l1, q1, q1))))
            T = sp.bsr_matrix((Tinv, np.arange(l1), np.arange(l1 + 1)), shape=(m1, m1))
            Gz = (T @ self._coupling(W1, Vr)).tocsc()
            S = A22 - (Gz.T @ Gz).toarray()
        c1 = batched_forward_solve(L1, rhs1.reshape(l1, q1, 1)).reshape(m1)
        rhs2 = rhs2 - Gz.T @ c1
        p = self.X.shape[1] if with_beta else 0
        if p:
            WX = self.X * w[:, None]
            ZtWX1 = np.column_stack(
                [np.bincount(self._rows1, weights=(V1 * WX[:, [j]]).ravel(), minlength=m1) for j in range(p)]
            )
            ZtWXr = np.column_stack(
                [np.bincount(self._cr.ravel(), weights=(Vr * WX[:, [j]]).ravel(), minlength=rz) for j in range(p)]
            )
            Gx = batched_forward_solve(L1, np.ascontiguousarray(ZtWX1.reshape(l1, q1, p))).reshape(m1, p)
            Szx = ZtWXr - Gz.T @ Gx
            S = np.block([[S, Szx], [Szx.T, self.X.T @ WX - Gx.T @ Gx]])
            rhs2 = np.concatenate([rhs2, WX.T @ z - Gx.T @ c1])
        L2 = sla.cholesky(S, lower=True, check_finite=False)
        d1 = np.diagonal(L1, axis1=1, axis2=2)
        ldL2 = 2.0 * float(np.log(d1).sum() + np.log(np.diag(L2)[:rz]).sum())
        c2 = sla.solve_triangular(L2, rhs2, lower=True, check_finite=False)
        x2 = sla.solve_triangular(L2, c2, lower=True, trans="T", check_finite=False)
        r1 = c1 - Gz @ x2[:rz]
        if p:
            r1 = r1 - Gx @ x2[rz:]
        u1 = batched_backward_solve_t(L1, r1.reshape(l1, q1, 1)).reshape(m1)
        u = np.concatenate([u1, x2[:rz]])
        beta = x2[rz:] if p else np.zeros(0)
        return u, beta, ldL2

    def _solve_scalar1(self, v1: np.ndarray, Vr: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool):
        """:meth:`solve` with a scalar first factor (q1 = 1): ``L_1`` diagonal, ``G_z`` a row scaling of ``A_1r``.

        Products with ``Z`` go through sparse transposes built once per theta (:meth:`_zt`); ``G_z`` is
        dense when small (``G_z' G_z`` by one BLAS call: VerbAgg's 316 x 24 ``G_z`` has 94,800 entry pairs
        per row-product but only 7,584 entries), else stays on its fixed sparse pattern (the pair map).
        """
        m1, rz = self.m1, self.rz
        pa, pb, positions, inverse, row_of = self._pairs
        Z1T, ZrT = self._zt()
        w1 = v1 * w
        d1 = np.sqrt(np.bincount(self._c1, weights=w1 * v1, minlength=m1) + 1.0)  # L_1 (diagonal)
        Wr = Vr * w[:, None]
        A22 = np.bincount(self._idx22, weights=(Wr[:, :, None] * Vr[:, None, :]).ravel(), minlength=rz * rz)
        S = A22.reshape(rz, rz)
        S[np.diag_indices_from(S)] += 1.0
        # G_z's stored values: A_1r's entries divided by their row's diagonal of L_1
        vals = (w1[:, None] * Vr).ravel() if Vr.shape[1] > 1 else w1 * Vr[:, 0]
        gdata = np.bincount(self._map12, weights=vals, minlength=self._nnz)
        gdata /= d1[row_of]
        if self._dense_g:
            G = np.zeros(m1 * rz)
            G[self._gpos] = gdata
            G = G.reshape(m1, rz)
            S -= G.T @ G
        else:
            S.reshape(-1)[positions] -= np.bincount(inverse, weights=gdata[pa] * gdata[pb], minlength=len(positions))
            G = sp.csr_matrix((gdata, self._indices, self._indptr), shape=(m1, rz))
        wz = w * z
        c1 = np.bincount(self._c1, weights=v1 * wz, minlength=m1) / d1
        rhs2 = ZrT @ wz - G.T @ c1
        p = self.X.shape[1] if with_beta else 0
        if p:
            WX = self.X * w[:, None]
            Gx = Z1T @ WX
            Gx /= d1[:, None]
            Szx = ZrT @ WX - G.T @ Gx
            S = np.block([[S, Szx], [Szx.T, self.X.T @ WX - Gx.T @ Gx]])
            rhs2 = np.concatenate([rhs2, WX.T @ z - Gx.T @ c1])
        L2 = sla.cholesky(S, lower=True, check_finite=False)
        ldL2 = 2.0 * float(np.log(d1).sum() + np.log(np.diag(L2)[:rz]).sum())
        c2 = sla.solve_triangular(L2, rhs2, lower=True, check_finite=False)
        x2 = sla.solve_triangular(L2, c2, lower=True, trans="T", check_finite=False)
        r1 = c1 - G @ x2[:rz]
        if p:
            r1 -= Gx @ x2[rz:]
        u = np.concatenate([r1 / d1, x2[:rz]])
        beta = x2[rz:] if p else np.zeros(0)
        return u, beta, ldL2

    def _zt(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """``(Z_1 Lambda_1)'`` and ``(Z_r Lambda_r)'`` as CSR matrices for the cached theta (q1 = 1)."""
        if self._zt_key != self._v_key:
            V1, Vr = self._v
            n, mr = Vr.shape
            self._zt_cache = (
                sp.csr_matrix((V1[:, 0], (self._c1, np.arange(n))), shape=(self.m1, n)),
                sp.csr_matrix((Vr.ravel(), (self._cr.ravel(), np.repeat(np.arange(n), mr))), shape=(self.rz, n)),
            )
            self._zt_key = self._v_key
        return self._zt_cache
