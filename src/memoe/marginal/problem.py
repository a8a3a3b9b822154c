"""The profiled marginal likelihood of a linear model with grouped residual covariance.

For group i with rows y_i (n_i), fixed design X_i and random-effects design Z_i,

    Var(y_i) = sigma^2 W_i,    W_i = Z_i D Z_i' + S_i C_i S_i,

with D = lam lam' the relative covariance of the random effects (lam from lme4's theta), C_i the
correlation structure and S_i = diag(s_i) the variance function's SD ratios.

Nested grouping levels (nlme's ``random = list(Dog = ~ day, Side = ~ 1)``): the groups i are those
of the outermost factor, and level q contributes ``Z_iq (I kron D_q) Z_iq'``, block-diagonal over
the level-q groups within i. Entry (a, b) of that term is ``[g_q(a) = g_q(b)] z_qa' D_q z_qb``, so
W_i is built densely with one (G, n, n) mask per inner level and bucket, no per-group loop; C_i is
block-diagonal over the innermost groups (:func:`memoe.marginal.layout.cross_bucket_index`). With
W_i = L_i L_i' (Cholesky) and the whitened [X~ y~]_i = L_i^{-1} [X y]_i, beta and sigma^2 are
profiled out as in nlme (Pinheiro & Bates 2000, sec. 2.4 and 5.1):

    A = sum_i [X~ y~]_i' [X~ y~]_i = R R'   (lower Cholesky; R_X its leading p x p block),
    rss = R[p, p]^2,   logdet = sum_i log det W_i,
    ML:    -2 log L   = logdet + N (1 + log(2 pi rss / N))
    REML:  -2 log L_R = logdet + log det(R_X R_X') + (N - p) (1 + log(2 pi rss / (N - p)))

The per-group Cholesky factors and triangular solves are batched over the groups of one size
(:mod:`memoe.marginal.layout`), so one evaluation loops over the distinct group sizes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from memoe.core.covariance import ThetaMap
from memoe.core.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.marginal.correlation import BoundCorrelation
from memoe.marginal.layout import GroupLayout, cross_bucket_index
from memoe.marginal.variance import BoundVariance

__all__ = ["MarginalProblem", "MarginalSolution", "RandomLevel"]

_LOG2PI = float(np.log(2.0 * np.pi))
# per size bucket, the per-pattern Gram matrices may hold at most this many doubles (64 MiB)
_PATTERN_MAX_ENTRIES = 2**23


@dataclass(frozen=True)
class RandomLevel:
    """One grouping level of the random effects.

    Attributes
    ----------
    name : str
        Grouping factor (``"Dog"``, ``"Dog:Side"``).
    Z : numpy.ndarray, shape (N, q)
        Random-effects columns of the level.
    codes : numpy.ndarray of int, shape (N,)
        Group of each row at this level.
    nlevels : int
    block : int
        Index of the level's relative factor in ``ThetaMap.lambdas``.
    """

    name: str
    Z: np.ndarray
    codes: np.ndarray
    nlevels: int
    block: int

    @property
    def q(self) -> int:
        return self.Z.shape[1]


@dataclass(frozen=True)
class MarginalSolution:
    """Everything the result needs at one parameter vector.

    Attributes
    ----------
    params : numpy.ndarray
        [theta, correlation u, variance u].
    deviance : float
        -2 log L (ML) or -2 log L_R (REML).
    beta : numpy.ndarray, shape (p,)
    sigma : float
    vcov_unscaled : numpy.ndarray, shape (p, p)
        (X' W^{-1} X)^{-1}; vcov = sigma^2 vcov_unscaled.
    D : numpy.ndarray, shape (q, q)
        Relative random-effects covariance of the outermost level (empty without random effects).
    b : numpy.ndarray, shape (ngroups, q)
        BLUPs of the outermost level, one row per group code.
    fitted_marginal, fitted_conditional : numpy.ndarray, shape (N,)
    ratios : numpy.ndarray, shape (N,)
        Residual SD ratios of the rows (1 without a variance function).
    effects : numpy.ndarray, shape (p,)
        R_X' beta: the whitened response projected on the orthogonalised columns of X~ (their squares
        are the sequential sums of squares).
    Ds, bs : tuple of numpy.ndarray
        D_q (q_q, q_q) and the BLUPs (ngroups_q, q_q) of every grouping level, outermost first
        (``D``, ``b`` are ``Ds[0]``, ``bs[0]``).
    fitted_levels : tuple of numpy.ndarray, shape (N,) each
        X beta plus the random effects of levels 1..k, for k = 1 .. number of levels (the last is
        ``fitted_conditional``).
    """

    params: np.ndarray
    deviance: float
    beta: np.ndarray
    sigma: float
    vcov_unscaled: np.ndarray
    D: np.ndarray
    b: np.ndarray
    fitted_marginal: np.ndarray
    fitted_conditional: np.ndarray
    ratios: np.ndarray
    effects: np.ndarray
    Ds: tuple = ()
    bs: tuple = ()
    fitted_levels: tuple = ()


class MarginalProblem:
    """Profiled (RE)ML objective of the parameter vector [theta, correlation u, variance u].

    Parameters
    ----------
    y : numpy.ndarray, shape (N,)
    X : numpy.ndarray, shape (N, p)
    layout : GroupLayout
        Independent groups: for ``lme`` the outermost grouping factor, for ``gls`` the groups of the
        residual structure.
    Z : numpy.ndarray, shape (N, q), optional
        Random-effects design of a single grouping factor (the groups of ``layout``).
    theta_map : ThetaMap, optional
    cor : BoundCorrelation, optional
        Bound to ``cor_layout`` when given, else to ``layout``.
    var : BoundVariance, optional
    levels : list of RandomLevel, optional
        Nested grouping levels, outermost (``layout``'s groups) first; replaces ``Z``.
    cor_layout : GroupLayout, optional
        The innermost groups, within which the residual correlation acts, when they differ from
        ``layout``'s.
    """

    def __init__(
        self,
        y: np.ndarray,
        X: np.ndarray,
        layout: GroupLayout,
        Z: np.ndarray | None = None,
        theta_map: ThetaMap | None = None,
        cor: BoundCorrelation | None = None,
        var: BoundVariance | None = None,
        levels: list[RandomLevel] | None = None,
        cor_layout: GroupLayout | None = None,
    ) -> None:
        self.y = np.asarray(y, dtype=float)
        self.X = np.asarray(X, dtype=float)
        self.N, self.p = self.X.shape
        self.layout = layout
        if levels is None and Z is not None:
            Zf = np.asarray(Z, dtype=float)
            levels = [RandomLevel(name=str(layout.name), Z=Zf, codes=layout.codes, nlevels=layout.ngroups, block=0)]
        self.levels: list[RandomLevel] = list(levels or [])
        # the outermost level's design (single-level callers read it)
        self.Z = self.levels[0].Z if self.levels else None
        self.theta_map = theta_map
        self.cor = cor
        self.var = var
        self.n_theta = 0 if theta_map is None else theta_map.size
        self.n_cor = 0 if cor is None else cor.size
        self.n_var = 0 if var is None else var.size
        XY = np.column_stack([self.X, self.y])
        # per-bucket data, gathered once (structure-of-arrays over the groups of one size)
        self._XY = layout.gather(XY)
        self._Z = None if self.Z is None else layout.gather(self.Z)
        # per level, per bucket: Z rows (G, n, q) and, for the inner levels, the same-group mask (G, n, n)
        self._Zq = [layout.gather(lv.Z) for lv in self.levels]
        self._mask = [None] + [
            [c[:, :, None] == c[:, None, :] for c in layout.gather(lv.codes)] for lv in self.levels[1:]
        ]
        self._identity = [np.eye(b.n)[None, :, :] for b in layout.buckets]
        self.cor_layout = layout if cor_layout is None else cor_layout
        self._cor_index = None
        self._cor_shared: list[bool] = []
        if cor_layout is not None and cor is not None:
            # inner buckets whose correlation is one (1, m, m) block (AR(1) over positions, CompSymm)
            self._cor_shared = [np.asarray(a).shape[0] == 1 for a in cor.aux]
            self._cor_index = cross_bucket_index(layout, cor_layout, self._cor_shared)
        self._patterns = self._find_patterns()

    # -- parameter vector ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.n_theta + self.n_cor + self.n_var

    def split(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        params = np.asarray(params, dtype=float)
        a, b = self.n_theta, self.n_theta + self.n_cor
        return params[:a], params[a:b], params[b:]

    @property
    def lower_bounds(self) -> np.ndarray:
        lo_theta = np.zeros(0) if self.theta_map is None else self.theta_map.lower_bounds
        return np.concatenate([lo_theta, np.full(self.n_cor + self.n_var, -np.inf)])

    def level_factors(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factor lam_q of each level, outermost first."""
        if self.theta_map is None or not self.levels:
            return []
        lams = self.theta_map.lambdas(theta)
        return [lams[lv.block] for lv in self.levels]

    def relative_covariances(self, theta: np.ndarray) -> list[np.ndarray]:
        """D_q = lam_q lam_q' of each level, outermost first."""
        return [lam @ lam.T for lam in self.level_factors(theta)]

    def relative_covariance(self, theta: np.ndarray) -> np.ndarray:
        """D = lam lam' (q, q) of the outermost level (empty (0, 0) without random effects)."""
        Ds = self.relative_covariances(theta)
        return Ds[0] if Ds else np.zeros((0, 0))

    def ratios(self, v: np.ndarray) -> np.ndarray:
        return np.ones(self.N) if self.var is None else self.var.ratios(v)

    def correlation_blocks(self, u: np.ndarray) -> list[np.ndarray]:
        """Per bucket of ``layout`` the residual correlation matrices C_i, each (G, n, n) or (1, n, n).

        Nested fits: computed on the innermost groups' buckets, then gathered into the block-diagonal
        C_i of each outer group (:func:`memoe.marginal.layout.cross_bucket_index`).
        """
        if self.cor is None:
            return self._identity
        if self._cor_index is None:
            return self.cor.blocks(u)
        flat = self._inner_correlations(u)
        return [np.where(idx >= 0, flat[np.maximum(idx, 0)], 0.0) for idx in self._cor_index]

    def _inner_correlations(self, u: np.ndarray) -> np.ndarray:
        """The innermost groups' correlation blocks flattened in the order of ``_cor_index``."""
        inner = self.cor_layout.buckets
        blocks = self.cor.blocks(u)
        return np.concatenate([
            (np.asarray(C)[:1] if one else np.broadcast_to(C, (b.size, b.n, b.n))).ravel()
            for b, C, one in zip(inner, blocks, self._cor_shared, strict=True)
        ])

    def _add_random(self, W: np.ndarray, k: int, lams: list[np.ndarray], sel=slice(None)) -> np.ndarray:
        """W + sum_q [same level-q group] (Z_q lam_q)(Z_q lam_q)' for the groups ``sel`` of bucket k."""
        for q, lam in enumerate(lams):
            ZL = self._Zq[q][k][sel] @ lam
            ZZ = ZL @ np.swapaxes(ZL, 1, 2)
            mask = self._mask[q]
            W = W + (ZZ if mask is None else ZZ * mask[k][sel])
        return W

    def covariances(self, params: np.ndarray) -> list[np.ndarray]:
        """Per bucket the relative marginal covariances W_i, each (G, n, n)."""
        theta, u, v = self.split(params)
        s_all = self.ratios(v)
        cors = self.correlation_blocks(u)
        lams = self.level_factors(theta)
        out = []
        for k, bucket in enumerate(self.layout.buckets):
            s = s_all[bucket.rows]
            W = s[:, :, None] * cors[k] * s[:, None, :]
            out.append(self._add_random(W, k, lams))
        return out

    # -- groups that share their covariance ----------------------------------------------------
    def _find_patterns(self) -> list[tuple] | None:
        """Groups whose W_i is the same function of the parameters, and their sufficient statistics.

        W_i depends on the parameters only through Z_i, the correlation structure's inputs of the
        group (lags, visit distances) and the variance strata of its rows. Discrete-visit designs
        (MMRM, AR(1) over visits, random intercepts) have few distinct such *patterns* (at most
        2^visits), however many subjects there are. Then ``A = sum_i [X y]_i' W_i^-1 [X y]_i =
        sum_u sum_{a,b} (W_u^-1)_ab T_u[a, b]`` with ``T_u`` the (n (p+1))^2 Gram matrix of the
        pattern's stacked rows, computed once: an evaluation costs one small Cholesky per pattern
        instead of one per subject. Per bucket: None (per-group path) when it has more than
        1 / (p + 1) as many patterns as groups or its statistics would exceed 64 MiB; None overall
        when no bucket gains (e.g. continuous times), and the objective is then exactly the
        per-group one.
        """
        kk = self.p + 1
        out = []
        for k, b in enumerate(self.layout.buckets):
            G, n = b.rows.shape
            parts = []
            for q in range(len(self.levels)):
                parts.append(self._Zq[q][k].reshape(G, -1))
                if self._mask[q] is not None:
                    parts.append(self._mask[q][k].reshape(G, -1).astype(float))
            aux = None
            if self.cor is not None and self._cor_index is not None:
                # nested: the correlation lives on the inner groups' buckets; when every inner block is
                # shared (position-based), an outer group's C_i is fixed by its innermost same-group mask
                # (already in the key), otherwise the groups differ and the per-group path is used
                if not all(self._cor_shared):
                    return None
            elif self.cor is not None:
                aux = np.asarray(self.cor.aux[k])
                if aux.shape[0] == G and G > 1:
                    parts.append(aux.reshape(G, -1).astype(float))
                elif aux.shape[0] != 1:
                    return None
            if self.var is not None:
                parts.append(self.var.strata[b.rows].astype(float))
            if parts:
                key = np.hstack(parts)
                if not np.all(np.isfinite(key)):
                    return None
                _, rep, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
                inv = inv.reshape(-1)
            else:
                rep, inv = np.zeros(1, dtype=np.intp), np.zeros(G, dtype=np.intp)
            U = len(rep)
            if U * kk > G or U * (n * kk) ** 2 > _PATTERN_MAX_ENTRIES:
                # few groups per pattern: per-pattern statistics cost more than the per-group solves
                out.append(None)
                continue
            counts = np.bincount(inv, minlength=U).astype(float)
            XY = self._XY[k].reshape(G, n * kk)
            T = np.empty((U, n, kk, n, kk))
            for j in range(U):
                Xu = XY[inv == j]
                T[j] = (Xu.T @ Xu).reshape(n, kk, n, kk)
            aux_rep = None if aux is None else (aux if aux.shape[0] == 1 else aux[rep])
            if self._cor_index is not None:
                aux_rep = self._cor_index[k][rep]  # nested: gather indices of the patterns' C_i
            out.append((rep, counts, T, aux_rep, np.eye(n)[None, :, :]))
        return out if any(o is not None for o in out) else None

    def _pattern_deviance(self, params: np.ndarray, reml: bool) -> float:
        """:meth:`deviance` from the per-pattern statistics (see :meth:`_find_patterns`)."""
        theta, u, v = self.split(params)
        s_all = self.ratios(v)
        lams = self.level_factors(theta)
        kk = self.p + 1
        A = np.zeros((kk, kk))
        logdet = 0.0
        flat = None if self._cor_index is None else self._inner_correlations(u)

        def gather(idx: np.ndarray) -> np.ndarray:
            return np.where(idx >= 0, flat[np.maximum(idx, 0)], 0.0)

        for k, (bucket, pattern) in enumerate(zip(self.layout.buckets, self._patterns, strict=True)):
            if pattern is None:
                # this bucket group by group, as _whiten
                s = s_all[bucket.rows]
                if self.cor is None:
                    C = self._identity[k]
                elif flat is not None:
                    C = gather(self._cor_index[k])
                else:
                    C = self.cor.structure.correlation(u, self.cor.aux[k], self.cor.m)
                W = self._add_random(s[:, :, None] * C * s[:, None, :], k, lams)
                L = batched_cholesky(W)
                ld = batched_logdet_chol(L)
                if not np.all(np.isfinite(ld)):
                    return np.inf
                M = batched_forward_solve(L, self._XY[k]).reshape(-1, kk)
                A += M.T @ M
                logdet += float(ld.sum())
                continue
            rep, counts, T, aux_rep, eye = pattern
            s = s_all[bucket.rows[rep]]
            if self.cor is None:
                C = eye
            elif flat is not None:
                C = gather(aux_rep)
            else:
                C = self.cor.structure.correlation(u, aux_rep, self.cor.m)
            W = self._add_random(s[:, :, None] * C * s[:, None, :], k, lams, rep)
            L = batched_cholesky(W)
            ld = batched_logdet_chol(L)
            if not np.all(np.isfinite(ld)):
                return np.inf
            Linv = batched_forward_solve(L, np.ascontiguousarray(np.broadcast_to(eye, W.shape)))
            Winv = np.swapaxes(Linv, 1, 2) @ Linv
            A += np.einsum("uab,uajbk->jk", Winv, T)
            logdet += float(counts @ ld)
        try:
            R = np.linalg.cholesky(0.5 * (A + A.T))
        except np.linalg.LinAlgError:
            return np.inf
        return self._criterion(R, logdet, reml)

    # -- evaluation ------------------------------------------------------------------------------
    def _whiten(self, params: np.ndarray):
        """Cholesky factors, whitened [X y] per bucket and sum log det W; ``None`` if some W_i is not PD."""
        Ls, XYt = [], []
        logdet = 0.0
        for k, W in enumerate(self.covariances(params)):
            # memoe's batched kernels: loops over matrix entries vectorised over the groups for small
            # sizes, LAPACK over the stack above (scipy's batched solve_triangular loops in Python)
            L = batched_cholesky(W)
            ld = batched_logdet_chol(L)
            if not np.all(np.isfinite(ld)):
                return None  # W_i not positive definite (NaN pivots)
            Ls.append(L)
            XYt.append(batched_forward_solve(L, self._XY[k]))
            logdet += float(ld.sum())
        return Ls, XYt, logdet

    def _reduce(self, XYt: list[np.ndarray]) -> np.ndarray | None:
        k = self.p + 1
        # one GEMM per bucket over the stacked rows
        A = sum(M.reshape(-1, k).T @ M.reshape(-1, k) for M in XYt)
        try:
            return np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None

    def deviance(self, params: np.ndarray, reml: bool) -> float:
        """-2 log L (ML) or -2 log L_R (REML) with beta and sigma^2 profiled out; +inf if undefined."""
        if self._patterns is not None:
            return self._pattern_deviance(params, reml)
        w = self._whiten(params)
        if w is None:
            return np.inf
        _, XYt, logdet = w
        R = self._reduce(XYt)
        if R is None:
            return np.inf
        return self._criterion(R, logdet, reml)

    def _criterion(self, R: np.ndarray, logdet: float, reml: bool) -> float:
        p, N = self.p, self.N
        rss = R[p, p] ** 2
        if not rss > 0:
            return np.inf
        if reml:
            nr = N - p
            return float(logdet + 2.0 * np.sum(np.log(np.diag(R)[:p])) + nr * (1.0 + _LOG2PI + np.log(rss / nr)))
        return float(logdet + N * (1.0 + _LOG2PI + np.log(rss / N)))

    def solve(self, params: np.ndarray, reml: bool) -> MarginalSolution:
        """Profiled estimates, BLUPs and fitted values at ``params``."""
        params = np.asarray(params, dtype=float)
        w = self._whiten(params)
        if w is None:
            raise np.linalg.LinAlgError("a marginal covariance matrix is not positive definite")
        Ls, XYt, logdet = w
        R = self._reduce(XYt)
        if R is None:
            raise np.linalg.LinAlgError("X' W^-1 X is singular")
        p = self.p
        RX = R[:p, :p]
        beta = sla.solve_triangular(RX.T, R[p, :p], lower=False)
        rss = R[p, p] ** 2
        sigma = float(np.sqrt(rss / (self.N - p if reml else self.N)))
        RXinv = sla.solve_triangular(RX, np.eye(p), lower=True)
        vcov_unscaled = RXinv.T @ RXinv
        theta, _, v = self.split(params)
        Ds = self.relative_covariances(theta)
        fitted_m = self.X @ beta
        # per level: sum over the rows of each group of z_a (W_i^-1 r_i)_a, then b = D_q (that sum)
        acc = [np.zeros((lv.nlevels, lv.q)) for lv in self.levels]
        for k, bucket in enumerate(self.layout.buckets):
            if not self.levels:
                break
            # W^-1 r_i from the whitened residual: L^-T (L^-1 r_i)
            e = XYt[k][:, :, p] - XYt[k][:, :, :p] @ beta
            Winv_r = batched_backward_solve_t(Ls[k], e[:, :, None])[:, :, 0]
            for q, lv in enumerate(self.levels):
                contrib = (self._Zq[q][k] * Winv_r[:, :, None]).reshape(-1, lv.q)
                codes = lv.codes[bucket.rows].ravel()
                for j in range(lv.q):  # q columns (a handful), each one bincount over the rows
                    acc[q][:, j] += np.bincount(codes, weights=contrib[:, j], minlength=lv.nlevels)
        bs = [a @ D for a, D in zip(acc, Ds, strict=True)]
        fitted_levels = []
        eta = fitted_m.copy()
        for lv, b in zip(self.levels, bs, strict=True):
            eta = eta + np.einsum("nq,nq->n", lv.Z, b[lv.codes])
            fitted_levels.append(eta.copy())
        fitted_c = fitted_levels[-1] if fitted_levels else fitted_m
        D = Ds[0] if Ds else np.zeros((0, 0))
        b = bs[0] if bs else np.zeros((self.layout.ngroups, 0))
        return MarginalSolution(
            params=params,
            deviance=self._criterion(R, logdet, reml),
            beta=beta,
            sigma=sigma,
            vcov_unscaled=vcov_unscaled,
            D=D,
            b=b,
            fitted_marginal=fitted_m,
            fitted_conditional=fitted_c,
            ratios=self.ratios(v),
            effects=R[p, :p].copy(),
            Ds=tuple(Ds),
            bs=tuple(bs),
            fitted_levels=tuple(fitted_levels),
        )
