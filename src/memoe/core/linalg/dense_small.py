"""Dense profiled deviance for small crossed or nested random-effects designs.

When all random effects together are few (a few hundred: kb07, Penicillin, Pastes), the blocked
factorisation of :mod:`memoe.lmm.objective` spends its time in fixed per-evaluation overheads
(scipy.sparse objects built per theta, sparse scatters), not in flops. Here everything that does
not depend on theta is dense and built once from the cross-products of ``[Z X y]`` (per-level
``Z_1j'Z_1j``, ``Z_1'[Z_r X y]``, ``Z_r'Z_r``, ``Z_r'[X y]``, ``[X y]'[X y]``; ``Z_1`` the factor with the
most levels, ``Z_r`` the others, ``m = p + 1``), and each evaluation factors the bordered system of
lme4's penalised least squares (Bates et al. 2015, eqs. 18 and 31-34)::

    M = [ Lambda' Z'Z Lambda + I   Lambda' Z'[X y] ]
        [ [X y]' Z Lambda          [X y]'[X y]     ]

with ``Lambda = blockdiag_k(I_{l_k} kron lambda_k)`` applied by small dense products (each block's
columns reshaped to ``(rows * l_k, q_k)`` times ``lambda_k``). The first block (the factor with the
most levels) is block diagonal, ``S_j = lambda_1' Z_1j'Z_1j lambda_1 + I``: it is factored level by
level by one batched LAPACK call, ``G = blockdiag_j(L_j^-1 lambda_1') Z_1'[Z_r Lambda_r, X, y]`` is
formed densely, and LAPACK factors the Schur complement
``M_rr - G'G`` (``dsyrk`` + ``dpotrf``, order ``m_z + m``). The diagonals of the factors give
``log det(L_Z L_Z')``, ``log det(R_X' R_X)`` and the penalised RSS (the last diagonal entry squared),
the quantities of the blocked path of :mod:`memoe.lmm.objective`, so the deviance agrees with it to
rounding; the difference is that nothing sparse is touched per evaluation.

The caller (:meth:`memoe.lmm.objective.PLSProblem._new_dense_small`) passes the cross-products of
``[X y] B``, the columns centred against the first one (``B`` unit upper triangular: an exact
reparameterisation with ``log det B = 0``), which removes the cancellation in the last pivot (the penalised
RSS) when ``y`` has a large mean; :meth:`DenseSmall.factor_parts` maps the factor back (``Binv``). The
analytic gradient of this path is :mod:`memoe.lmm.gradient_small`; it reads the buffers :meth:`factor`
leaves (``_L``, ``_B``, ``_Rl``).

The cost per evaluation is about ``l_1 q_1 (m_z + m)^2 + (m_z + m)^3 / 3`` flops plus ~20 small
numpy calls; the blocked path costs ``(m_z + m)^3 / 3`` plus a sparse product whose size grows with the
data, and a fixed overhead of a few milliseconds. The choice is made by :func:`prefer_dense_small`
(thresholds measured, see ``benchmarks/README.md``, "Small problems").
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas, lapack

__all__ = ["DENSE_SMALL_WORK", "DENSE_SMALL_WORK_SCALAR", "DenseSmall", "prefer_dense_small"]

# Work (flops of the per-evaluation dsyrk + potrf, ``n1 nr^2 + nr^3 / 3``) up to which "auto" takes the
# dense path. Measured per evaluation against the blocked path (benchmarks/README.md, "Small problems"):
# when a later factor has vector-valued random effects the blocked path pays ~2 ms of sparse overhead
# per evaluation, and the dense path wins up to ~2e7 (150 x 3 + 60 x 2 random effects: 0.7 against
# 2.2 ms; 300 x 3 + 100 x 2: even); with scalar later factors it scatters a precomputed map and stays
# lean, so the dense path only paid below ~5e5 when first measured; after the leaner dense evaluation and its
# analytic gradient (branch i13small4) the scalar crossover is ~4e6 for value + gradient and ~3.5e6 for the
# value alone (branch i13lpanel, one BLAS thread: 200 x 100 levels 0.62 against 1.12 ms value + gradient,
# 300 x 100 0.80 against 0.93, 500 x 100 1.18 against 1.03), and the dense path's set-up is cheaper
# (no scipy.sparse cross-products, no RestSchur): 10,000 rows of 200 x 100 levels fit in 33 instead of 63 ms.
DENSE_SMALL_WORK = 2e7
DENSE_SMALL_WORK_SCALAR = 4e6


def prefer_dense_small(n1: int, m_z: int, m: int, scalar_rest: bool) -> bool:
    """Whether "auto" takes the dense path.

    Parameters
    ----------
    n1 : int
        Random effects of the first (largest) factor, ``l_1 q_1``.
    m_z : int
        Random effects of the later factors.
    m : int
        Columns of ``[X y]``.
    scalar_rest : bool
        Every later factor has one random effect per level (the blocked path is leanest then).

    Returns
    -------
    bool

    Examples
    --------
    >>> prefer_dense_small(56 * 3, 32 * 3, 5, scalar_rest=False)  # kb07's maximal model
    True
    >>> prefer_dense_small(2972, 1151, 2, scalar_rest=True)  # InstEval: the blocked path
    False
    """
    nr = m_z + m
    work = n1 * nr * nr + nr**3 / 3.0
    return work <= (DENSE_SMALL_WORK_SCALAR if scalar_rest else DENSE_SMALL_WORK)


def _rmul_lambda(X: np.ndarray, offsets: np.ndarray, q: list[int], lambdas: list[np.ndarray], out: np.ndarray) -> None:
    """``out = X Lambda`` for ``Lambda = blockdiag_k(I_{l_k} kron lambda_k)`` (columns level-major per block)."""
    r = X.shape[0]
    for k, lam in enumerate(lambdas):
        o0, o1 = offsets[k], offsets[k + 1]
        if o1 == o0:
            continue
        qk = q[k]
        if qk == 1:
            np.multiply(X[:, o0:o1], lam[0, 0], out=out[:, o0:o1])
        else:
            # (r, l_k q_k) -> (r l_k, q_k): one small GEMM instead of l_k block products
            blk = np.ascontiguousarray(X[:, o0:o1]).reshape(-1, qk)
            out[:, o0:o1] = (blk @ lam).reshape(r, o1 - o0)


class DenseSmall:
    """The PLS system of a small multi-factor LMM, built once densely and factored per theta.

    Parameters
    ----------
    Z : scipy.sparse matrix, shape (n, q_total)
        Random-effects model matrix, blocks in order (block 0 first), each level-major (level j,
        column a at ``offset_k + j q_k + a``) as in :class:`memoe.lmm.objective.PLSProblem`.
    xy_cols : list of numpy.ndarray, each shape (n,)
        Columns of ``[X y]`` (possibly centred and scaled: the deviance is on those columns).
    XYtXY : numpy.ndarray, shape (m, m)
        ``[X y]'[X y]``.
    q : list of int
        Columns of each block.
    nlevels : list of int
        Levels of each block.

    Notes
    -----
    Prior weights enter through the working rows (``sqrt(w)`` times ``Z``, ``X``, ``y``) and the
    caller subtracts their ``sum(log w)`` from ``logdet_Z``; offsets are already subtracted from
    ``y``. Group weights of a mixture (single factor only) never reach this path.

    R equivalent
    ------------
    The dense special case of lme4's ``mkLmerDevfun`` / ``PLSupdateL`` (Bates et al. 2015, eq. 34).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> rng = np.random.default_rng(0)
    >>> g, h = np.repeat(np.arange(4), 6), np.tile(np.arange(3), 8)
    >>> Z = sp.hstack([sp.csr_matrix(np.eye(4)[g]), sp.csr_matrix(np.eye(3)[h])])
    >>> y = rng.normal(size=24)
    >>> XYtXY = np.array([[24.0, y.sum()], [y.sum(), y @ y]])
    >>> ds = DenseSmall(Z, [np.ones(24), y], XYtXY, [1, 1], [4, 3])
    >>> ok, logdet_Z, logdet_X, pwrss = ds.pieces([np.eye(1), np.eye(1)])
    >>> ok and pwrss > 0
    True
    """

    def __init__(
        self, Z: sp.spmatrix, xy_cols: list[np.ndarray], XYtXY: np.ndarray, q: list[int], nlevels: list[int]
    ) -> None:
        Z = sp.csc_matrix(Z)
        n1 = int(q[0]) * int(nlevels[0])
        l1, q1 = int(nlevels[0]), int(q[0])
        Z1, Zr = Z[:, :n1], Z[:, n1:]
        Z1T, ZrT = Z1.T.tocsr(), Zr.T.tocsr()
        # Z_1'Z_1 is block diagonal: its (l1, q1, q1) blocks, read off the sparse product entry by entry
        ZZ1 = (Z1T @ Z1).tocsr()
        lev = np.arange(l1) * q1
        d = np.empty((l1, q1, q1))
        for a in range(q1):
            for b in range(q1):
                d[:, a, b] = np.asarray(ZZ1[lev + a, lev + b]).ravel()
        Z1tXY = np.column_stack([Z1T @ c for c in xy_cols])
        self._setup(
            np.ascontiguousarray(np.moveaxis(d, 0, -1)),
            np.ascontiguousarray(np.moveaxis(Z1tXY.reshape(l1, q1, -1), 0, -1)),
            Z1T @ Zr, ZrT @ Zr, np.column_stack([ZrT @ c for c in xy_cols]), XYtXY, q, nlevels,
        )

    @classmethod
    def from_blocks(cls, zz, zxy, Z1tZr, ZrtZr, ZrtXY, XYtXY, q, nlevels) -> DenseSmall:
        """Build from the cross-products :class:`memoe.lmm.objective.PLSProblem` already holds.

        Parameters
        ----------
        zz : numpy.ndarray, shape (q1, q1, l1)
            Per-level ``Z_1j'Z_1j`` (structure of arrays).
        zxy : numpy.ndarray, shape (q1, m, l1)
            Per-level ``Z_1j'[X_j y_j]``.
        Z1tZr : scipy.sparse matrix or numpy.ndarray, shape (l1 q1, m_z)
        ZrtZr : scipy.sparse matrix or numpy.ndarray, shape (m_z, m_z)
        ZrtXY : numpy.ndarray, shape (m_z, m)
        XYtXY : numpy.ndarray, shape (m, m)
        q, nlevels : list of int

        Returns
        -------
        DenseSmall
        """
        self = cls.__new__(cls)
        self._setup(zz, zxy, Z1tZr, ZrtZr, ZrtXY, XYtXY, q, nlevels)
        return self

    def _setup(self, zz, zxy, Z1tZr, ZrtZr, ZrtXY, XYtXY, q, nlevels) -> None:
        # set by the caller when the inputs are those of [X y] B (centred columns): factor_parts maps back
        self.Binv: np.ndarray | None = None
        self.q = [int(v) for v in q]
        self.nlevels = [int(v) for v in nlevels]
        self.offsets = np.cumsum([0] + [lk * qk for lk, qk in zip(self.nlevels, self.q, strict=True)])
        self.nz = int(self.offsets[-1])
        self.m = ZrtXY.shape[1]
        self.p = self.m - 1
        q1, l1 = self.q[0], self.nlevels[0]
        n1 = q1 * l1
        self.n1 = n1
        self.mz = self.nz - n1
        if Z1tZr.shape != (n1, self.mz):
            raise ValueError(f"Z_1'Z_r has shape {Z1tZr.shape}, the blocks ({n1}, {self.mz})")
        mz, nr = self.mz, self.nz - n1 + self.m
        self.nr = nr
        # first block: per-level Z_1j'Z_1j, (l1, q1, q1) for the batched LAPACK Cholesky
        self._zz = np.ascontiguousarray(np.moveaxis(zz, -1, 0))
        self._eye1 = np.eye(q1)
        # Z_1'[Z_r X y] with its rows reordered column-major within the block (row a l1 + j for level j,
        # column a): then lambda_1' acts on all levels by one GEMM of shape (q1, q1) x (q1, l1 nr), and
        # the rows' order does not matter to G'G
        R = np.empty((q1, l1, nr))
        dense = sp.csr_matrix(Z1tZr).toarray() if sp.issparse(Z1tZr) else np.asarray(Z1tZr, dtype=float)
        R[:, :, :mz] = dense.reshape(l1, q1, mz).transpose(1, 0, 2)
        R[:, :, mz:] = np.moveaxis(zxy, -1, 1)
        self._R = R.reshape(n1, nr)
        self._ZrtZr = np.ascontiguousarray(sp.csr_matrix(ZrtZr).toarray() if sp.issparse(ZrtZr) else ZrtZr, dtype=float)
        # stored transposed, (m, mz), so that Lambda_r multiplies it from the right like Z_r'Z_r
        self._XYtZr = np.ascontiguousarray(np.asarray(ZrtXY).T)
        self.XYtXY = np.array(XYtXY, dtype=float)
        self._offsets_r = self.offsets[1:] - n1
        # buffers reused across evaluations (no allocation of the large pieces per theta); the [X y]
        # columns of _Rl do not depend on theta and are copied once
        self._Rl = self._R.copy()
        self._B = np.empty((q1, l1 * nr))
        self._T = np.empty((mz, mz))
        self._S = np.empty((mz, mz))
        self._XYZ = np.empty((self.m, mz))
        self._M = np.empty((nr, nr))
        self._diag = np.arange(mz)
        # scalar fast paths of factor(): the first block's A_jj as a vector, later blocks' column counts
        self._zz1 = np.ascontiguousarray(self._zz[:, 0, 0]) if q1 == 1 else None
        self._rest_scalar = all(qk == 1 for qk in self.q[1:])
        self._rest_counts = np.diff(self._offsets_r)
        # block of each later column, and each block's first column (scalar blocks: where its lambda sits in dcol)
        self._col_block = np.repeat(np.arange(len(self._rest_counts)), self._rest_counts)
        self._block_first = self._offsets_r[:-1].astype(np.intp)
        # index sets that symmetrise an (m_z, m_z) triangle in place (gradient: memoe.lmm.gradient_small)
        self._triu = np.triu_indices(mz, 1)

    def factor(self, lambdas: list[np.ndarray]) -> tuple[float, np.ndarray, int]:
        """Factor the system at the relative factors ``lambdas``.

        Parameters
        ----------
        lambdas : list of numpy.ndarray, each shape (q_k, q_k)

        Returns
        -------
        logdet_1 : float
            ``log det`` of the first block's ``S_j`` summed over levels (NaN when one is not positive definite).
        c : numpy.ndarray, shape (m_z + m, m_z + m)
            Fortran-ordered; its lower triangle is the Cholesky factor of the Schur complement
            ``M_rr - G'G`` (the strict upper triangle is junk).
        info : int
            LAPACK's ``info`` (0 on success).

        Notes
        -----
        The evaluation is a few dozen small NumPy/LAPACK calls, so their count is the cost (~60 us on
        Penicillin): scalar blocks take elementwise paths (a scalar first block needs no Cholesky,
        ``S_j = lambda^2 A_jj + 1 >= 1``; scalar later blocks scale ``Z_r'Z_r`` by one outer product) and no
        floating-point context manager is entered (the checks are explicit).
        """
        mz, q1, l1, nr = self.mz, self.q[0], self.nlevels[0], self.nr
        lam1, lam_r = lambdas[0], lambdas[1:]
        offs = self._offsets_r
        Rl = self._Rl
        if self._rest_scalar:
            # one scale per later column: Lambda_r = diag(dcol)
            dcol = np.repeat([lk[0, 0] for lk in lam_r], self._rest_counts) if mz else np.zeros(0)
            np.multiply(self._R[:, :mz], dcol, out=Rl[:, :mz])
        else:
            dcol = None
            _rmul_lambda(self._R[:, :mz], offs, self.q[1:], lam_r, Rl[:, :mz])
        if q1 == 1:
            # S_j = lambda^2 A_jj + 1 >= 1: positive whatever lambda, its "Cholesky factor" a square root
            l1v = float(lam1[0, 0])
            s1 = self._zz1 * (l1v * l1v)
            s1 += 1.0
            d1 = np.sqrt(s1)
            self._L = d1.reshape(l1, 1, 1)
            logdet_1 = float(np.log(s1).sum())
            # G = diag(lambda / d_j) Z_1'[Z_r Lambda_r, X, y]
            np.multiply(Rl, (l1v / d1)[:, None], out=self._B.reshape(l1, nr))
            G = self._B.reshape(l1, nr)
        else:
            # first block, level by level: S_j = lambda_1' Z_1j'Z_1j lambda_1 + I = L_j L_j' (one batched
            # LAPACK call: several times faster than the structure-of-arrays loops at these sizes)
            S1 = lam1.T @ self._zz @ lam1
            S1 += self._eye1
            try:
                L = np.linalg.cholesky(S1)
            except np.linalg.LinAlgError:
                self._L = None
                return math.nan, self._M.T, 1
            self._L = L
            dL = np.diagonal(L, axis1=1, axis2=2)
            if not bool((dL > 0.0).all()):
                self._L = None
                return math.nan, self._M.T, 1
            logdet_1 = 2.0 * float(np.log(dL).sum())
            # G = blockdiag_j(L_j^-1 lambda_1') Z_1'[Z_r Lambda_r, X, y]: Lambda_r on the columns, lambda_1'
            # on all levels at once, then the q1 x q1 forward substitution vectorised over levels
            B = np.matmul(lam1.T, Rl.reshape(q1, l1 * nr), out=self._B).reshape(q1, l1, nr)
            for a in range(q1):
                Ba = B[a]
                for b in range(a):
                    Ba -= L[:, a, b][:, None] * B[b]
                Ba /= L[:, a, a][:, None]
            G = B.reshape(q1 * l1, nr)
        # M_rr: Lambda_r' Z_r'Z_r Lambda_r + I, Lambda_r' Z_r'[X y], [X y]'[X y] (upper triangle, C order)
        M = self._M
        if dcol is not None:
            np.multiply(self._ZrtZr, np.multiply.outer(dcol, dcol), out=M[:mz, :mz])
            np.multiply(self._XYtZr.T, dcol[:, None], out=M[:mz, mz:])
        else:
            T, S = self._T, self._S
            _rmul_lambda(self._ZrtZr, offs, self.q[1:], lam_r, T)
            _rmul_lambda(T.T, offs, self.q[1:], lam_r, S)
            _rmul_lambda(self._XYtZr, offs, self.q[1:], lam_r, self._XYZ)
            M[:mz, :mz] = S
            M[:mz, mz:] = self._XYZ.T
        M[self._diag, self._diag] += 1.0
        M[mz:, mz:] = self.XYtXY
        # M.T is F-contiguous and its lower triangle is M's upper one: M_rr - G'G in place (dsyrk on
        # G' = F-contiguous view of the C-ordered G), then potrf in place, no copies
        Mf = blas.dsyrk(-1.0, G.T, beta=1.0, c=M.T, trans=0, lower=1, overwrite_c=1)
        c, info = lapack.dpotrf(Mf, lower=1, clean=0, overwrite_a=1)
        return logdet_1, c, int(info)

    def pieces(self, lambdas: list[np.ndarray]) -> tuple[bool, float, float, float]:
        """``(ok, logdet_Z, logdet_X, pwrss)`` at ``lambdas`` (``logdet_Z`` without prior-weight terms).

        Parameters
        ----------
        lambdas : list of numpy.ndarray, each shape (q_k, q_k)

        Returns
        -------
        ok : bool
            False when a factorisation fails (the caller returns an infinite deviance).
        logdet_Z, logdet_X, pwrss : float
            ``log det(Lambda'Z'Z Lambda + I)``, ``log det(R_X'R_X)`` and the penalised RSS.
        """
        return self._summaries(*self.factor(lambdas))

    def _summaries(self, logdet_1: float, c: np.ndarray, info: int) -> tuple[bool, float, float, float]:
        if info != 0 or not math.isfinite(logdet_1):
            return False, math.inf, math.inf, math.nan
        # potrf succeeded: the diagonal is positive (finite unless the input was not), so no errstate is needed
        d = np.diagonal(c)
        mz, p = self.mz, self.p
        logd = np.log(d[: mz + p])
        logdet_Z = logdet_1 + 2.0 * float(logd[:mz].sum())
        logdet_X = 2.0 * float(logd[mz:].sum())
        pwrss = float(d[-1] ** 2)
        ok = math.isfinite(logdet_Z) and math.isfinite(logdet_X) and math.isfinite(pwrss)
        return ok, logdet_Z, logdet_X, pwrss

    def factor_parts(self, lambdas: list[np.ndarray]) -> dict:
        """The blocked factor at ``lambdas`` in the layout of :class:`memoe.lmm.objective.Factorization`.

        Parameters
        ----------
        lambdas : list of numpy.ndarray, each shape (q_k, q_k)

        Returns
        -------
        dict
            ``L1`` (l1, q1, q1), ``C`` (l1, q1, m), ``G`` (csr, (l1 q1, m_z)), ``Lr`` (lower factor of the
            Schur complement, order m_z + m, NaN when it failed), ``logdet_level`` (l1,), ``logdet_Z``
            (without prior-weight terms), ``logdet_X``, ``pwrss`` and ``ok``: the same factor the blocked
            path computes (the first block is eliminated the same way), so every consumer of it
            (solution, conditional variances, Satterthwaite) reads it unchanged.
        """
        logdet_1, c, info = self.factor(lambdas)
        ok, logdet_Z, logdet_X, pwrss = self._summaries(logdet_1, c, info)
        mz, q1, l1, nr = self.mz, self.q[0], self.nlevels[0], self.nr
        if self._L is None:
            L = np.full((l1, q1, q1), np.nan)
            Bl = np.full((l1, q1, nr), np.nan)
        else:
            L = self._L
            # back to level-major rows (level j, column a)
            Bl = self._B.reshape(q1, l1, nr).transpose(1, 0, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet_level = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        C = np.ascontiguousarray(Bl[:, :, mz:])
        Lr = np.tril(c) if info == 0 else np.full(c.shape, np.nan)
        if self.Binv is not None:
            # the system was built on [X y] B (centred columns): back to the caller's columns
            C = C @ self.Binv
            Lr[mz:, :] = self.Binv.T @ Lr[mz:, :]
        return {
            "L1": L.copy(),
            "C": C,
            "G": sp.csr_matrix(Bl[:, :, :mz].reshape(l1 * q1, mz)),
            "Lr": Lr,
            "logdet_level": logdet_level,
            "logdet_Z": logdet_Z,
            "logdet_X": logdet_X,
            "pwrss": pwrss,
            "ok": ok,
        }
