"""Penalised least squares for linear mixed models: the objective of theta.

The blocked Cholesky factor is organised as in MixedModels.jl. Columns are ordered
``[Z_1, Z_rest, X, y]`` where ``Z_1`` belongs to the grouping factor with the most levels.
``Lambda' Z_1' Z_1 Lambda + I`` is block diagonal (one q1 x q1 block per level), so it is factored
by batched small Cholesky factorisations; what remains (the other random-effects columns, X and y)
is the dense Schur complement ``M`` of size ``m_z + p + 1``, factored by LAPACK.

Everything that depends only on the data (per-level cross-products of the first factor, sparse
cross-products with the other factors) is computed once in ``__init__``; each evaluation of the
objective only rescales these by theta. Optional per-level weights of the first factor (posterior
probabilities in a mixture) rescale each level's contribution, again without touching the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from memoe.covariance import ThetaMap
from memoe.deviance import profiled_deviance
from memoe.errors import MemoeError
from memoe.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.linalg.sufficient import group_crossprod

__all__ = ["PLSProblem", "Factorization", "PLSSolution"]

# The dense Schur complement grows with the levels of the second and later factors.
MAX_DENSE_REST = 30_000


@dataclass(frozen=True)
class Factorization:
    """The blocked Cholesky factor at one theta.

    Attributes
    ----------
    lambdas : list of numpy.ndarray
        Relative covariance factor of each block.
    L1 : numpy.ndarray, shape (l1, q1, q1)
        Diagonal blocks for the first factor.
    C : numpy.ndarray, shape (l1, q1, p + 1)
        ``L1^-1 lambda_1' Z_1' [X y]`` per level (the [X y] rows of L below the first block).
    G : scipy.sparse matrix or None, shape (l1 q1, m_z)
        ``L1^-1 lambda_1' Z_1' Z_rest Lambda_rest`` (transpose of the Z_rest rows of L).
    Lr : numpy.ndarray, shape (m_z + p + 1, m_z + p + 1)
        Lower Cholesky factor of the Schur complement.
    logdet_level : numpy.ndarray, shape (l1,)
        ``log det(L1_j L1_j')``, unweighted.
    logdet_Z, logdet_X, pwrss, n_eff : float
    """

    lambdas: list[np.ndarray]
    L1: np.ndarray
    C: np.ndarray
    G: sp.spmatrix | None
    Lr: np.ndarray
    logdet_level: np.ndarray
    logdet_Z: float
    logdet_X: float
    pwrss: float
    n_eff: float
    ok: bool


@dataclass(frozen=True)
class PLSSolution:
    """Conditional modes and fixed effects at a given theta."""

    beta: np.ndarray
    u: list[np.ndarray]
    b: list[np.ndarray]
    sigma: float
    deviance: float
    RX_inv_t: np.ndarray
    factor: Factorization

    @property
    def vcov_unscaled(self) -> np.ndarray:
        """``(R_X' R_X)^-1``; times sigma^2 gives lme4's ``vcov``."""
        return self.RX_inv_t @ self.RX_inv_t.T


class PLSProblem:
    """Profiled (RE)ML deviance of a linear mixed model as a function of theta.

    Parameters
    ----------
    y : numpy.ndarray, shape (n,)
    X : numpy.ndarray, shape (n, p)
    codes : list of numpy.ndarray of int, each shape (n,)
        Level of each row, one array per factor block (block 0 with the most levels).
    nlevels : list of int
    Z : list of numpy.ndarray, each shape (n, q_k)
        Raw random-effects columns of each block.
    theta_map : ThetaMap
    """

    def __init__(
        self,
        y: np.ndarray,
        X: np.ndarray,
        codes: list[np.ndarray],
        nlevels: list[int],
        Z: list[np.ndarray],
        theta_map: ThetaMap,
    ) -> None:
        self.n = len(y)
        self.p = X.shape[1]
        self.m = self.p + 1
        self.theta_map = theta_map
        self.nlevels = list(nlevels)
        self.q = [z.shape[1] for z in Z]
        self.codes = codes
        xy_cols = [X[:, j] for j in range(self.p)] + [y]
        c1, l1, Z1 = codes[0], nlevels[0], Z[0]
        z1_cols = [Z1[:, j] for j in range(Z1.shape[1])]
        self.level_n = np.bincount(c1, minlength=l1).astype(float)
        self.ZtZ1 = group_crossprod(c1, l1, z1_cols)
        self.ZtXY1 = group_crossprod(c1, l1, z1_cols, xy_cols)
        self.multi = len(Z) > 1
        if self.multi:
            # only the unweighted total of [X y]'[X y] is needed
            XY = np.column_stack(xy_cols)
            self.XYtXY_level = None
            self.XYtXY = XY.T @ XY
            self._setup_rest(y, X, codes, nlevels, Z)
        else:
            self.XYtXY_level = group_crossprod(c1, l1, xy_cols)
            self.XYtXY = self.XYtXY_level.sum(axis=0)
            self.mz = 0
        self.weights: np.ndarray | None = None
        self._wXYtXY = self.XYtXY
        self._n_eff = float(self.n)

    # ------------------------------------------------------------------ setup
    def _setup_rest(self, y, X, codes, nlevels, Z) -> None:
        n = self.n
        rows = np.arange(n)
        # sparse Z of the first factor, columns ordered level-major (level j: q1 columns)
        q1 = self.q[0]
        Z1s = self._sparse_block(rows, codes[0], nlevels[0], Z[0])
        rest = [self._sparse_block(rows, codes[k], nlevels[k], Z[k]) for k in range(1, len(Z))]
        Zr = sp.hstack(rest, format="csc")
        self.rest_offsets = np.cumsum([0] + [nlevels[k] * self.q[k] for k in range(1, len(Z))])
        self.mz = Zr.shape[1]
        if self.mz > MAX_DENSE_REST:
            raise MemoeError(
                f"the grouping factors after the largest one have {self.mz} random effects in all; "
                f"the dense part of the factorisation is limited to {MAX_DENSE_REST}"
            )
        XY = np.column_stack([X, y])
        self.Z1tZr = (Z1s.T @ Zr).tocsr()
        self.ZrtZr = (Zr.T @ Zr).toarray()
        self.ZrtXY = np.asarray(Zr.T @ XY)
        del Z1s
        self._q1 = q1

    @staticmethod
    def _sparse_block(rows, codes, nlev, Zk) -> sp.csc_matrix:
        n, q = Zk.shape
        cols = (codes[:, None] * q + np.arange(q)[None, :]).ravel()
        r = np.repeat(rows, q)
        return sp.csc_matrix((Zk.ravel(), (r, cols)), shape=(n, nlev * q))

    # ------------------------------------------------------------------ weights
    def set_group_weights(self, weights: np.ndarray | None) -> None:
        """Weight each level of the (single) grouping factor's whole likelihood contribution.

        Parameters
        ----------
        weights : numpy.ndarray, shape (l1,), or None
            Non-negative weights (e.g. posterior class probabilities); ``None`` removes them.
        """
        if weights is None:
            self.weights = None
            self._wXYtXY = self.XYtXY
            self._n_eff = float(self.n)
            return
        if self.multi:
            raise MemoeError("group weights need a single grouping factor")
        w = np.asarray(weights, dtype=float)
        if w.shape != (self.nlevels[0],):
            raise MemoeError(f"group weights must have shape ({self.nlevels[0]},), got {w.shape}")
        self.weights = w
        self._wXYtXY = np.einsum("j,jab->ab", w, self.XYtXY_level)
        self._n_eff = float(w @ self.level_n)

    # ------------------------------------------------------------------ objective
    def factorize(self, theta: np.ndarray) -> Factorization:
        """Blocked Cholesky factor at ``theta`` (set theta -> update L)."""
        lambdas = self.theta_map.lambdas(np.asarray(theta, dtype=float))
        lam1 = lambdas[0]
        q1 = lam1.shape[0]
        l1 = self.nlevels[0]
        if q1 == 1:
            s = lam1[0, 0]
            L1 = np.sqrt(s * s * self.ZtZ1 + 1.0)
            C = (s * self.ZtXY1) / L1
        else:
            S = np.einsum("ba,nbc,cd->nad", lam1, self.ZtZ1, lam1, optimize=True)
            idx = np.arange(q1)
            S[:, idx, idx] += 1.0
            L1 = batched_cholesky(S)
            C = batched_forward_solve(L1, np.einsum("ba,nbm->nam", lam1, self.ZtXY1, optimize=True))
        logdet_level = batched_logdet_chol(L1)
        w = self.weights
        if w is None:
            C2 = C.reshape(l1 * q1, self.m)
            logdet_Z = float(logdet_level.sum())
        else:
            C2 = (C * np.sqrt(w)[:, None, None]).reshape(l1 * q1, self.m)
            logdet_Z = float(w @ logdet_level)
        M_xy = self._wXYtXY - C2.T @ C2
        G = None
        if self.multi:
            G, M = self._schur_rest(lambdas, L1, C2, M_xy)
        else:
            M = M_xy
        try:
            Lr = sla.cholesky(M, lower=True, check_finite=True)
            ok = bool(np.all(np.isfinite(logdet_level)))
        except (np.linalg.LinAlgError, ValueError):
            Lr = np.full_like(M, np.nan)
            ok = False
        d = np.diagonal(Lr)
        mz, p = self.mz, self.p
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet_Z += 2.0 * float(np.log(d[:mz]).sum())
            logdet_X = 2.0 * float(np.log(d[mz : mz + p]).sum())
        pwrss = float(d[-1] ** 2)
        return Factorization(
            lambdas=lambdas,
            L1=L1,
            C=C,
            G=G,
            Lr=Lr,
            logdet_level=logdet_level,
            logdet_Z=logdet_Z,
            logdet_X=logdet_X,
            pwrss=pwrss,
            n_eff=self._n_eff,
            ok=ok,
        )

    def _block_diag_lambda(self, lambdas: list[np.ndarray]) -> sp.csr_matrix:
        """Sparse ``Lambda_rest`` = blockdiag(I_{l_k} kron lambda_k) for the blocks after the first."""
        mats = [sp.kron(sp.identity(self.nlevels[k], format="csr"), sp.csr_matrix(lambdas[k])) for k in range(1, len(lambdas))]
        return sp.block_diag(mats, format="csr")

    def _schur_rest(self, lambdas, L1, C2, M_xy):
        q1 = L1.shape[1]
        l1 = self.nlevels[0]
        lam1 = lambdas[0]
        # T = blockdiag(L1_j^-1 lambda_1'), the map from Z_1' columns to the L rows of the first block
        if q1 == 1:
            Tj = lam1[0, 0] / L1
        else:
            Tj = batched_forward_solve(L1, np.ascontiguousarray(np.broadcast_to(lam1.T, L1.shape)))
        T = sp.bsr_matrix((Tj, np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1)).tocsr()
        Lam_r = self._block_diag_lambda(lambdas)
        G = (T @ self.Z1tZr @ Lam_r).tocsr()
        A = Lam_r.T @ (Lam_r.T @ self.ZrtZr).T
        M_zz = A - (G.T @ G).toarray()
        M_zz[np.diag_indices_from(M_zz)] += 1.0
        M_zxy = np.asarray(Lam_r.T @ self.ZrtXY) - np.asarray(G.T @ C2)
        M = np.block([[M_zz, M_zxy], [M_zxy.T, M_xy]])
        return G, M

    def deviance(self, theta: np.ndarray, reml: bool) -> float:
        """The objective: -2 log-likelihood (ML) or REML criterion at ``theta``."""
        f = self.factorize(theta)
        if not f.ok:
            return np.inf
        return profiled_deviance(f.logdet_Z, f.logdet_X, f.pwrss, f.n_eff, self.p, reml)

    # ------------------------------------------------------------------ solution
    def solve(self, theta: np.ndarray, reml: bool) -> PLSSolution:
        """Fixed effects, spherical and natural-scale random effects at ``theta``."""
        f = self.factorize(theta)
        mz, p = self.mz, self.p
        Lr = f.Lr
        LXX = Lr[mz : mz + p, mz : mz + p]
        lyX = Lr[-1, mz : mz + p]
        beta = sla.solve_triangular(LXX, lyX, trans="T", lower=True) if p else np.zeros(0)
        RX_inv_t = sla.solve_triangular(LXX, np.eye(p), lower=True).T if p else np.zeros((0, 0))
        u_rest = np.zeros(0)
        if mz:
            rhs = Lr[-1, :mz] - Lr[mz : mz + p, :mz].T @ beta
            u_rest = sla.solve_triangular(Lr[:mz, :mz], rhs, trans="T", lower=True)
        rhs1 = f.C[:, :, -1] - f.C[:, :, :p] @ beta
        if f.G is not None:
            rhs1 = rhs1 - (f.G @ u_rest).reshape(rhs1.shape)
        u1 = batched_backward_solve_t(f.L1, rhs1[:, :, None])[:, :, 0]
        u = [u1]
        for k in range(1, len(self.q)):
            o0, o1 = self.rest_offsets[k - 1], self.rest_offsets[k]
            u.append(u_rest[o0:o1].reshape(self.nlevels[k], self.q[k]))
        b = [uk @ lam.T for uk, lam in zip(u, f.lambdas, strict=True)]
        dev = profiled_deviance(f.logdet_Z, f.logdet_X, f.pwrss, f.n_eff, p, reml)
        nr = f.n_eff - p if reml else f.n_eff
        sigma = float(np.sqrt(f.pwrss / nr))
        return PLSSolution(beta=beta, u=u, b=b, sigma=sigma, deviance=dev, RX_inv_t=RX_inv_t, factor=f)

    def conditional_variances(self, sol: PLSSolution) -> list[np.ndarray]:
        """lme4's ``condVar``: ``sigma^2 Lambda (L_Z L_Z')^-1 Lambda'`` diagonal blocks, per block and level.

        Returns
        -------
        list of numpy.ndarray, each shape (l_k, q_k, q_k)
        """
        f = sol.factor
        s2 = sol.sigma**2
        q1, l1 = self.q[0], self.nlevels[0]
        eye = np.broadcast_to(np.eye(q1), f.L1.shape)
        L1inv = batched_forward_solve(f.L1, np.ascontiguousarray(eye))
        V1 = np.einsum("nki,nkj->nij", L1inv, L1inv)
        out = []
        mz = self.mz
        if mz:
            L22 = f.Lr[:mz, :mz]
            # W = L22^-1 L21 blockdiag(L1^-1), with L21 = G'
            Binv = sp.bsr_matrix((L1inv, np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1))
            GtB = np.asarray((Binv.T @ f.G).T.todense()) if sp.issparse(f.G) else f.G.T
            W = sla.solve_triangular(L22, GtB, lower=True)
            Wr = W.reshape(mz, l1, q1)
            V1 = V1 + np.einsum("kni,knj->nij", Wr, Wr)
            L22inv = sla.solve_triangular(L22, np.eye(mz), lower=True)
            Vr = L22inv.T @ L22inv
        lam = f.lambdas
        out.append(s2 * np.einsum("ab,nbc,dc->nad", lam[0], V1, lam[0]))
        for k in range(1, len(self.q)):
            o0, o1 = self.rest_offsets[k - 1], self.rest_offsets[k]
            qk, lk = self.q[k], self.nlevels[k]
            levels = np.arange(lk)
            blocks = Vr[o0:o1, o0:o1].reshape(lk, qk, lk, qk)[levels, :, levels, :]
            out.append(s2 * np.einsum("ab,nbc,dc->nad", lam[k], blocks, lam[k]))
        return out
