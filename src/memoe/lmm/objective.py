"""Penalised least squares for linear mixed models: the objective of theta.

The blocked Cholesky factor is organised as in MixedModels.jl. Columns are ordered
``[Z_1, Z_rest, X, y]`` where ``Z_1`` belongs to the grouping factor with the most levels.
``Lambda' Z_1' Z_1 Lambda + I`` is block diagonal (one q1 x q1 block per level), so it is factored
by batched small Cholesky factorisations; what remains (the other random-effects columns, X and y)
is the dense Schur complement ``M`` of size ``m_z + p + 1``, factored by LAPACK. When the
random effects of the later factors split into small connected components (nested designs with the
inner factor first), ``M_zz`` is factored by a sparse LDL' instead
(:mod:`memoe.core.linalg.sparse_schur`) and only the ``[X y]`` corner is dense; the choice is made
once, before any large allocation (:meth:`PLSProblem._choose_schur`).

Everything that depends only on the data (per-level cross-products of the first factor, sparse
cross-products with the other factors) is computed once in ``__init__``; each evaluation of the
objective only rescales these by theta. Optional per-level weights of the first factor (posterior
probabilities in a mixture) rescale each level's contribution, again without touching the rows.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import lapack
from scipy.sparse.csgraph import connected_components

from memoe.core.covariance import ThetaMap
from memoe.core.design.scaling import LinearScaling
from memoe.core.linalg.batched import batched_backward_solve_t, batched_forward_solve
from memoe.core.linalg.crossed import RestSchur
from memoe.core.linalg.dense_small import DenseSmall, prefer_dense_small
from memoe.core.linalg.matrix_free import MatrixFreeSchur, matrix_free_preferred
from memoe.core.linalg.soa import (
    soa_backward_solve_t,
    soa_cholesky,
    soa_congruence,
    soa_forward_solve,
    soa_lincomb,
    soa_logdet_chol,
)
from memoe.core.linalg.sparse_schur import SparseSchur, SparseSchurFactor, have_sparse_cholesky
from memoe.core.linalg.split_inverse import potrf_lower, split_workers
from memoe.core.linalg.sufficient import GroupSums
from memoe.core.linalg.threads import blas_threads
from memoe.errors import MemoeError
from memoe.lmm.deviance import profiled_deviance, sigma_hat

__all__ = ["Factorization", "MLDerivatives", "MLFactor", "PLSProblem", "PLSSolution"]

# The dense Schur complement grows with the levels of the second and later factors.
MAX_DENSE_REST = 30_000
# From this many random effects after the first factor the sparse LDL' of M_zz is tried: below it a
# dense factor of order m_z costs under a millisecond or two and the sparse machinery does not pay.
SPARSE_MIN_REST = 500
# The sparse path is chosen when its factor has at most this fraction of the entries of a dense
# triangle (fill measured by one symbolic + numeric factorisation at the starting theta).
SPARSE_MAX_FILL = 0.05
# Largest factor (entries of L) the sparse path accepts: 12 bytes each, about 2.4 GB.
MAX_SPARSE_NNZ = 200_000_000
# Largest M_zz the sparse path tries when its fill is unknown: its dense triangle stays below 2^31
# entries, so the 32-bit counts of qdldl cannot overflow whatever the fill.
MAX_SPARSE_REST = 65_000
# Order of the dense Schur complement from which BLAS keeps its own thread count.
AUTO_DENSE_THREADS = 2000
# Paths of the Schur complement of the later factors (PLSProblem(schur=...), FitControl.solver).
SCHUR_PATHS = ("auto", "dense", "sparse", "matrix-free", "dense_small")
# Bytes of per-level statistics and temporaries processed together, so that they stay in the
# L2/L3 cache (for q1 = 2, p = 3 that is ~13,000 levels; 8,192 to 16,384 measured best).
LEVEL_CHUNK_BYTES = 2**21
# One grouping factor with q1 <= 2 and at most this many levels: the deviance is evaluated by the lean
# kernel (:meth:`PLSProblem._deviance_lean`), a dozen NumPy calls on whole arrays with no chunk loop.
# Its theta-free arrays take at most 8 m^2 bytes per level (2.6 MB for 20,000 levels, m = 4).
LEAN_MAX_LEVELS = 20_000
# Bytes of temporaries per batch of PLSProblem.deviance_many (the derivative check's stencil in one batch):
# 18 levels take all 12 points of (t | g) at once, 10,000 levels about 3 (~1 MiB more peak memory than one).
LEAN_BATCH_BYTES = 2**20
# Up to this order the lean kernel factors the [X y] corner in plain Python (cheaper than the LAPACK wrapper).
LEAN_PY_CHOL = 5


def _available_bytes() -> float:
    """MemAvailable from /proc/meminfo (inf where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.inf


def check_memory(nbytes: float, what: str) -> None:
    """Refuse (MemoeError) an allocation of ``nbytes`` that exceeds the memory available now.

    A dense array larger than the free memory gets the process killed or crashes inside LAPACK;
    refusing first names the step and the size instead.
    """
    avail = _available_bytes()
    if nbytes > avail:
        raise MemoeError(
            f"{what} needs {nbytes / 2**30:.1f} GiB of dense memory but only {avail / 2**30:.1f} GiB is available"
        )


# the ufunc reductions themselves: ndarray.sum/min go through a Python wrapper (a few us per call here)
_SUM = np.add.reduce
_MIN = np.minimum.reduce


def _small_chol_diag(a: list[float], m: int) -> list[float] | None:
    """Diagonal of the lower Cholesky factor of a small symmetric matrix (row-major list), or None.

    Plain Python floats: for m <= 5 this is faster than one LAPACK call through its wrapper, and the
    lean kernel needs only the diagonal (log det and the penalised RSS). None when a pivot is not
    positive or not finite (the matrix is not numerically positive definite), as ``dpotrf``'s info.
    """
    L = [0.0] * (m * m)
    d = [0.0] * m
    for j in range(m):
        rj = j * m
        s = a[rj + j]
        for k in range(j):
            s -= L[rj + k] * L[rj + k]
        if not (s > 0.0 and s < math.inf):
            return None
        djj = math.sqrt(s)
        d[j] = djj
        L[rj + j] = djj
        for i in range(j + 1, m):
            ri = i * m
            s = a[ri + j]
            for k in range(j):
                s -= L[ri + k] * L[rj + k]
            L[ri + j] = s / djj
    return d


def _lapack_chol_diag(a: np.ndarray) -> list[float] | None:
    """:func:`_small_chol_diag` by LAPACK ``dpotrf`` for larger matrices."""
    c, info = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        return None
    d = c.diagonal().tolist()
    return d if all(map(math.isfinite, d)) else None


def _lower_in_place(c: np.ndarray) -> np.ndarray:
    """``np.tril(c)`` in place for a square Fortran-ordered ``c`` (strict upper triangle zeroed column by column).

    ``np.tril`` allocates a new array and selects through a mask (~5 ms at order 1,155); the column slices
    of the upper triangle are contiguous and the matrix is ours.
    """
    if not c.flags.f_contiguous:
        return np.tril(c)
    for j in range(1, c.shape[1]):
        c[:j, j] = 0.0
    return c


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def _add_gram(out: np.ndarray, C: np.ndarray, w: np.ndarray | None) -> None:
    """``out += sum_i C[i] diag(w) C[i]'`` for a C-contiguous C of shape (q, m, N)."""
    q, m, N = C.shape
    # one (q m, N) x (N, q m) product, then the q diagonal (m, m) blocks are summed
    Cf = C.reshape(q * m, N)
    G = (Cf if w is None else Cf * w) @ Cf.T
    for i in range(q):
        out += G[i * m : (i + 1) * m, i * m : (i + 1) * m]


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
    # on the sparse path: the LDL' of M_zz (then Lr is only the m x m [X y] corner of the factor)
    sparse: SparseSchurFactor | None = None


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


@dataclass(frozen=True)
class MLFactor:
    """The ML profiled deviance at one theta and the per-level factor behind it (:meth:`PLSProblem.ml_factor`).

    Attributes
    ----------
    theta : numpy.ndarray
    lam : numpy.ndarray, shape (q1, q1)
    deviance : float
    L : numpy.ndarray, shape (q1, q1, l1), or None
    C : numpy.ndarray, shape (q1, p + 1, l1), or None
        Per-level factor and reduced ``[X y]`` (None unless kept).
    beta_s : numpy.ndarray, shape (p,)
        Profiled fixed effects of the (possibly scaled) columns the problem works on.
    pwrss : float
    """

    theta: np.ndarray
    lam: np.ndarray
    deviance: float
    L: np.ndarray | None
    C: np.ndarray | None
    beta_s: np.ndarray
    pwrss: float


@dataclass(frozen=True)
class MLDerivatives:
    """Gradient and expected Hessian of the ML profiled deviance in theta, and the profiled beta and sigma."""

    gradient: np.ndarray
    hessian: np.ndarray
    beta: np.ndarray
    sigma: float


def _dense_cross_products(xy_cols, codes, nlevels, Z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Z_1'Z_r`` (l1 q1, m_z), ``Z_r'Z_r`` (m_z, m_z) and ``Z_r'[X y]`` (m_z, m), dense, by bincount over rows.

    Columns of each block are level-major (level j, column a at ``offset_k + j q_k + a``), as the sparse
    products of :meth:`PLSProblem._setup_rest` lay them out. One ``bincount`` per pair of columns: the
    number of calls depends on the ``q_k`` only, never on the levels or rows.
    """
    q = [z.shape[1] for z in Z]
    offs = np.cumsum([0] + [nl * qk for nl, qk in zip(nlevels, q, strict=True)])
    K, n1 = len(Z), int(offs[1])
    mz = int(offs[-1]) - n1
    Z1tZr = np.empty((n1, mz))
    ZrtZr = np.zeros((mz, mz))
    for k in range(K):
        ck, lk, qk = codes[k], nlevels[k], q[k]
        # rows of block k in its target: Z_1'Z_r for the first block, Z_r'Z_r for the later ones
        out, o = (Z1tZr, 0) if k == 0 else (ZrtZr, int(offs[k]) - n1)
        if k > 0:
            # within a later block only a level's own columns meet: its (q_k, q_k) diagonal blocks
            idx = o + np.arange(lk) * qk
            for a in range(qk):
                for b in range(a, qk):
                    v = np.bincount(ck, Z[k][:, a] * Z[k][:, b], lk)
                    ZrtZr[idx + a, idx + b] = v
                    ZrtZr[idx + b, idx + a] = v
        for k2 in range(max(k + 1, 1), K):
            c2, l2, q2, o2 = codes[k2], nlevels[k2], q[k2], int(offs[k2]) - n1
            flat = ck * l2 + c2
            for a in range(qk):
                for b in range(q2):
                    v = np.bincount(flat, Z[k][:, a] * Z[k2][:, b], lk * l2).reshape(lk, l2)
                    out[o + a : o + lk * qk : qk, o2 + b : o2 + l2 * q2 : q2] = v
                    if k > 0:
                        ZrtZr[o2 + b : o2 + l2 * q2 : q2, o + a : o + lk * qk : qk] = v.T
    m = len(xy_cols)
    ZrtXY = np.empty((mz, m))
    for k in range(1, K):
        ck, lk, qk, o = codes[k], nlevels[k], q[k], int(offs[k]) - n1
        for a in range(qk):
            for j, col in enumerate(xy_cols):
                ZrtXY[o + a : o + lk * qk : qk, j] = np.bincount(ck, Z[k][:, a] * col, lk)
    return Z1tZr, ZrtZr, ZrtXY


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
    scaling : LinearScaling, optional
        Fit on centred and scaled ``[X y]`` (see :mod:`memoe.core.design.scaling`); every public
        output (deviance, factor, solution, statistics) is mapped back to the original columns.
    log_weights : float
        ``sum(log w)`` of lme4's prior weights when ``y``, ``X`` and ``Z`` are the working rows
        ``sqrt(w) y`` etc.; the deviance is lme4's ``ldL2 - ldW + ...`` (this term is included in
        ``Factorization.logdet_Z``).
    schur : {"auto", "dense", "sparse", "matrix-free"}
        How the Schur complement of the later factors is factored (see :meth:`_choose_schur`);
        "auto" decides from the design, the others force a path (tests, benchmarks, ``FitControl.solver``).
        "matrix-free" (:mod:`memoe.core.linalg.matrix_free`) never forms it: conjugate gradients and a
        stochastic log-determinant, for crossed designs with scalar random effects after the first factor.

    Notes
    -----
    The per-level statistics of the first block are stored structure-of-arrays (level index last,
    see :mod:`memoe.core.linalg.soa`): ``_zz`` (q1, q1, l1), ``_zxy`` (q1, m, l1), ``_xyxy`` (m, m, l1).
    ``ZtZ1``, ``ZtXY1`` and ``XYtXY_level`` are read-only ``(l1, ., .)`` views of them. An unweighted
    fit needs only the total ``XYtXY``, so ``_xyxy`` (the largest, 16 values per level for p = 3)
    is summed from the rows the first time group weights or ``XYtXY_level`` ask for it.
    """

    def __init__(
        self,
        y: np.ndarray,
        X: np.ndarray,
        codes: list[np.ndarray],
        nlevels: list[int],
        Z: list[np.ndarray],
        theta_map: ThetaMap,
        scaling: LinearScaling | None = None,
        log_weights: float = 0.0,
        schur: str = "auto",
    ) -> None:
        if schur not in SCHUR_PATHS:
            raise MemoeError(f"schur must be one of {', '.join(map(repr, SCHUR_PATHS))}, got {schur!r}")
        self.schur_request = schur
        self.sparse: SparseSchur | MatrixFreeSchur | None = None
        self.dense_small: DenseSmall | None = None
        self.weights: np.ndarray | None = None
        self.scaling = scaling
        self._rest: RestSchur | None = None
        self._rest_dense: tuple | None = None
        # lme4's ldW = sum(log w) of prior weights: the deviance subtracts it (y, X, Z are the working
        # sqrt(w)-scaled rows); folded into logdet_Z so every deviance built from a factor includes it
        self.log_weights = float(log_weights)
        if scaling is not None:
            X, y = scaling.scaled(X, y)
            self._B = scaling.B
        self.n = len(y)
        self.p = X.shape[1]
        self.m = self.p + 1
        self.theta_map = theta_map
        self.nlevels = list(nlevels)
        self.q = [z.shape[1] for z in Z]
        self.codes = codes
        # column views, never a stacked copy of [X y]
        xy_cols = [X[:, j] for j in range(self.p)] + [y]
        c1, l1, Z1 = codes[0], nlevels[0], Z[0]
        z1_cols = [Z1[:, j] for j in range(Z1.shape[1])]
        sums = GroupSums(c1, l1)
        self.multi = len(Z) > 1
        sums.prepare(z1_cols + xy_cols)
        self.level_n = sums.count
        self._zz = sums.cross(z1_cols)
        self._zxy = sums.cross(z1_cols, xy_cols)
        if self.multi:
            # only the unweighted total of [X y]'[X y] is needed
            self._xyxy = None
            self.XYtXY = sums.total(xy_cols)
            self._setup_rest(xy_cols, codes, nlevels, Z)
        else:
            self._xyxy = None
            self.XYtXY = sums.total(xy_cols)
            # the rows (views, no copies) to build the per-level [X y]'[X y] on demand
            self._xy_rows = (c1, l1, xy_cols)
            self.mz = 0
            self.rest = None
        del sums
        self.weights: np.ndarray | None = None
        self._wXYtXY = self.XYtXY
        self._n_eff = float(self.n)
        self._buffer: np.ndarray | None = None
        # a gradient evaluation's factor kept for the result at the same theta (offer_factor), and the
        # spare buffer the next offer copies into
        self._kept: tuple | None = None
        self._kept_spare: np.ndarray | None = None
        # the lean one-factor kernel's theta-free arrays (built on its first use, _lean_setup)
        self._lean: tuple | None = None
        # True while a caller (LMM.fit) holds blas_threads(self.blas_threads) around many evaluations:
        # the lean kernel then skips re-entering it (a few microseconds of a ~30 us evaluation)
        self.threads_held = False
        # BLAS thread cap for every evaluation: one thread unless the dense part is large (the
        # calls are small enough that thread hand-off costs more than it saves; memoe.core.linalg.threads)
        self.blas_threads: int | None = 1 if self.mz + self.m < AUTO_DENSE_THREADS else None

    # ------------------------------------------------------------------ statistics (public views)
    @property
    def ZtZ1(self) -> np.ndarray:
        """Per-level ``Z_1j' Z_1j``, shape (l1, q1, q1) (read-only view)."""
        return _readonly(np.moveaxis(self._zz, -1, 0))

    @property
    def ZtXY1(self) -> np.ndarray:
        """Per-level ``Z_1j' [X_j y_j]``, shape (l1, q1, p + 1) (read-only view)."""
        zxy = np.moveaxis(self._zxy, -1, 0)
        return _readonly(zxy if self.scaling is None else zxy @ self._B)

    @property
    def XYtXY_level(self) -> np.ndarray | None:
        """Per-level ``[X_j y_j]' [X_j y_j]``, shape (l1, p + 1, p + 1); None with several factors."""
        xyxy = self._xyxy_level()
        if xyxy is None:
            return None
        xyxy = np.moveaxis(xyxy, -1, 0)
        return _readonly(xyxy if self.scaling is None else self._B.T @ xyxy @ self._B)

    def _xyxy_level(self) -> np.ndarray | None:
        if self._xyxy is None and not self.multi:
            c1, l1, xy_cols = self._xy_rows
            sums = GroupSums(c1, l1)
            sums.prepare(xy_cols)
            self._xyxy = sums.cross(xy_cols)
        return self._xyxy

    # ------------------------------------------------------------------ setup
    def _setup_rest(self, xy_cols, codes, nlevels, Z) -> None:
        q1 = self.q[0]
        self.rest_offsets = np.cumsum([0] + [nlevels[k] * self.q[k] for k in range(1, len(Z))])
        self.mz = int(self.rest_offsets[-1])
        self._q1 = q1
        # small designs: the PLS system dense (memoe.core.linalg.dense_small); RestSchur builds its entry
        # map on first use, so the blocked path below costs nothing unless another path is chosen later
        self._small_args = (q1 * nlevels[0], self.mz, self.m, all(qk == 1 for qk in self.q[1:]))
        want_small = self.schur_request == "dense_small" or (
            self.schur_request == "auto" and prefer_dense_small(*self._small_args))
        if want_small:
            check_memory(8.0 * (q1 * nlevels[0] + 4 * self.mz + 8) * (self.mz + self.m), "the dense small-problem path")
            # the cross-products straight from the rows by bincount, dense: building the sparse Z blocks and
            # their products cost ~1 ms of scipy.sparse overhead per fit, more than the whole optimisation
            # of Penicillin; RestSchur (sparse) is built from these only if a later call needs it
            Z1tZr, ZrtZr, ZrtXY = _dense_cross_products(xy_cols, codes, nlevels, Z)
            self.dense_small = self._new_dense_small(Z1tZr, ZrtZr, ZrtXY)
            self._rest_dense = (Z1tZr, ZrtZr, ZrtXY)
            self._rest = None
            return
        n = self.n
        rows = np.arange(n)
        Z1s = self._sparse_block(rows, codes[0], nlevels[0], Z[0])
        rest = [self._sparse_block(rows, codes[k], nlevels[k], Z[k]) for k in range(1, len(Z))]
        Zr = sp.hstack(rest, format="csc")
        del rest
        if self.schur_request == "dense" and self.mz > MAX_DENSE_REST:
            raise MemoeError(self._dense_limit_message())
        ZrT = Zr.T.tocsr()
        Z1tZr = (Z1s.T @ Zr).tocsr()
        ZrtZr = (ZrT @ Zr).tocsr()
        ZrtXY = np.column_stack([ZrT @ c for c in xy_cols])
        del Z1s, Zr, ZrT
        self._rest = RestSchur(Z1tZr, ZrtZr, ZrtXY, nlevels[0], q1, self.q[1:], self.nlevels[1:])
        self._choose_schur()

    def _new_dense_small(self, Z1tZr, ZrtZr, ZrtXY) -> DenseSmall:
        """The dense small path, on ``[X y]`` centred against its first column (the intercept as a rule).

        Centring is the exact reparameterisation ``[X y] B`` with ``B`` unit upper triangular (``log det B =
        0``: the deviance is unchanged), but it removes the cancellation in the penalised RSS (the last
        pivot of the bordered factor, ``y'y`` minus terms of the same size when ``y`` has a large mean): on
        Penicillin (``y`` about 25, residual SD 0.55) the deviance's rounding noise drops from ~5e-11 to the
        level of a centred fit, and the gradient optimiser no longer backtracks 30 times at the rounding
        level (41-130 instead of 7-12 evaluations in 5 of 40 simulated nested ML fits).
        :meth:`DenseSmall.factor_parts` maps its factor back to the original columns.
        """
        Binv = None
        zxy, ZrtXY_c, XYtXY = self._zxy, ZrtXY, self.XYtXY
        if self.p > 0 and self.XYtXY[0, 0] > 0 and self.scaling is None:
            # column j -> column j - (x_0'x_j / x_0'x_0) x_0 for j >= 1: centring when x_0 is the intercept
            # (sqrt(w) with prior weights: the weighted centring), an exact reparameterisation for any x_0
            B = np.eye(self.m)
            B[0, 1:] = -XYtXY[0, 1:] / XYtXY[0, 0]
            Binv = np.eye(self.m)
            Binv[0, 1:] = -B[0, 1:]
            zxy = np.einsum("aml,mk->akl", zxy, B)
            ZrtXY_c = ZrtXY @ B
            XYtXY = B.T @ XYtXY @ B
            # exact zeros where the centring makes them so (the intercept's cross-products with the rest)
            XYtXY[0, 1:] = 0.0
            XYtXY[1:, 0] = 0.0
        ds = DenseSmall.from_blocks(self._zz, zxy, Z1tZr, ZrtZr, ZrtXY_c, XYtXY, self.q, self.nlevels)
        ds.Binv = Binv
        return ds

    @property
    def rest(self) -> RestSchur | None:
        """The later factors' cross-products and Schur complement builder (None with one grouping factor).

        On the dense small path it is built from the dense cross-products on first use (the deviance,
        its gradient, the solution and the conditional variances never need it there).
        """
        if self._rest is None and self._rest_dense is not None:
            Z1tZr, ZrtZr, ZrtXY = self._rest_dense
            self._rest = RestSchur(sp.csr_matrix(Z1tZr), sp.csr_matrix(ZrtZr), ZrtXY, self.nlevels[0], self._q1,
                                   self.q[1:], self.nlevels[1:])
        return self._rest

    @rest.setter
    def rest(self, value: RestSchur | None) -> None:
        self._rest = value

    @property
    def Z1tZr(self) -> sp.csr_matrix:
        """``Z_1' Z_r``, shape (l1 q1, m_z), rows level-major (sparse)."""
        return self.rest.Z1tZr

    def _dense_limit_message(self) -> str:
        return (
            f"the grouping factors after the largest one have {self.mz} random effects in all; "
            f"the dense part of the factorisation is limited to {MAX_DENSE_REST}, and the sparse factor to "
            f"{MAX_SPARSE_REST} random effects"
            + ("" if have_sparse_cholesky() else " (the sparse backend 'qdldl' is not installed)")
            + "; fit fewer levels of the later factors, or make the factor with the most random effects nested "
            "within the others"
        )

    def _choose_schur(self) -> None:
        """Dense or sparse factor of the Schur complement, decided before any large allocation.

        The factor of ``M_zz`` cannot fill in across connected components of its graph (two random
        effects are linked when they share a level of the first factor or a row), so
        ``sum_c s_c (s_c + 1) / 2`` over the components' sizes bounds its entries without factoring.
        Nested designs (the inner factor first) fall apart into one small component per outer group:
        the sparse LDL' is taken when that bound is at most ``SPARSE_MAX_FILL`` of a dense triangle.
        Crossed designs are one large component: dense BLAS beats a sparse factor with that much fill,
        so they stay dense up to ``MAX_DENSE_REST``; beyond it the sparse factor is tried (up to
        ``MAX_SPARSE_REST``, where qdldl's 32-bit counts are safe whatever the fill), else refused here,
        never inside LAPACK.
        """
        mz = self.mz
        want = self.schur_request
        if want == "dense" or self.dense_small is not None:
            return  # dense_small evaluates the deviance; the blocked dense path serves factorize / solve
        if want == "sparse":
            self.sparse = SparseSchur(self.rest)
            return
        if want == "matrix-free":
            self.sparse = MatrixFreeSchur(self.rest)
            return
        if mz >= SPARSE_MIN_REST and have_sparse_cholesky():
            bound = self._fill_bound()
            if bound <= SPARSE_MAX_FILL * mz * (mz + 1) / 2 and bound <= MAX_SPARSE_NNZ:
                self.sparse = SparseSchur(self.rest)
                return
        # crossed scalar random effects where the dense factor costs far more than CG + SLQ, or cannot be held
        dense_bytes = 2 * 8.0 * (mz + self.m) ** 2
        if self.rest.diag_lambda and (
            matrix_free_preferred(self.rest, self.m) or mz > MAX_DENSE_REST or dense_bytes > _available_bytes()
        ):
            self.sparse = MatrixFreeSchur(self.rest)
            return
        if mz >= SPARSE_MIN_REST and have_sparse_cholesky() and MAX_DENSE_REST < mz <= MAX_SPARSE_REST:
            self.sparse = SparseSchur(self.rest)
            return
        if mz > MAX_DENSE_REST:
            raise MemoeError(self._dense_limit_message())
        # the evaluation buffer plus LAPACK's factor of it (about two dense copies)
        check_memory(2 * 8.0 * (mz + self.m) ** 2, f"the dense Schur complement of {mz} random effects")

    @property
    def solver(self) -> str:
        """The path of the Schur complement: "none" (one factor), "dense_small", "dense", "sparse" or "matrix-free"."""
        if self.mz == 0:
            return "none"
        if self.dense_small is not None:
            return "dense_small"
        if self.sparse is None:
            return "dense"
        return "matrix-free" if isinstance(self.sparse, MatrixFreeSchur) else "sparse"

    def set_solver(self, schur: str) -> None:
        """Re-choose the Schur complement's path (``FitControl.solver``); a no-op with one grouping factor."""
        if schur not in SCHUR_PATHS:
            raise MemoeError(f"solver must be one of {', '.join(map(repr, SCHUR_PATHS))}, got {schur!r}")
        if schur == self.schur_request or self.rest is None:
            self.schur_request = schur
            return
        if schur == "dense" and self.mz > MAX_DENSE_REST:
            raise MemoeError(self._dense_limit_message())
        rest = self.rest
        if schur == "dense_small" or (schur == "auto" and self._small_args is not None and prefer_dense_small(
                *self._small_args)):
            if self.dense_small is None:
                check_memory(8.0 * (self._q1 * self.nlevels[0] + 4 * self.mz + 8) * (self.mz + self.m),
                             "the dense small-problem path")
                self.dense_small = self._new_dense_small(rest.Z1tZr, rest.ZrtZr, rest.ZrtXY)
        else:
            self.dense_small = None
        self.schur_request = schur
        self.sparse = None
        self._buffer = None
        self.forget_factor()
        self._choose_schur()

    def _fill_bound(self) -> int:
        """Upper bound on the entries of the factor of ``M_zz``: its connected components' triangles."""
        rest = self.rest
        A, B = rest.Z1tZr, rest.ZrtZr
        l1q1 = A.shape[0]
        # bipartite graph: first-factor random effects -> later random effects, plus Z_r'Z_r links; one direction
        # suffices for undirected components, so the CSR arrays are stacked as they are (sp.bmat with the
        # transposed block cost ~12 ms on the InstEval shape, this ~1 ms)
        nn = l1q1 + B.shape[0]
        it = np.int32 if max(nn, A.nnz + B.nnz) < 2**31 - 1 else np.int64
        indptr = np.concatenate([A.indptr.astype(it), it(A.nnz) + B.indptr[1:].astype(it)])
        indices = np.concatenate([A.indices.astype(it) + it(l1q1), B.indices.astype(it) + it(l1q1)])
        graph = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(nn, nn))
        _, labels = connected_components(graph, directed=False)
        sizes = np.bincount(labels[l1q1:]).astype(np.int64)
        return int((sizes * (sizes + 1) // 2).sum())

    @property
    def ZrtZr(self) -> sp.csr_matrix:
        """``Z_r' Z_r`` of the blocks after the first (sparse)."""
        return self.rest.ZrtZr

    @property
    def ZrtXY(self) -> np.ndarray:
        return self.rest.ZrtXY

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
        self.forget_factor()
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
        m = self.m
        self._wXYtXY = (self._xyxy_level().reshape(m * m, -1) @ w).reshape(m, m)
        self._n_eff = float(w @ self.level_n)

    # ------------------------------------------------------------------ objective
    def _first_block(self, lam1: np.ndarray, keep: bool):
        """Factor the first block level by level and reduce it onto ``[X y]``.

        Returns
        -------
        logdet_Z : float
            ``sum_j w_j log det(L_j L_j')``.
        CtC : numpy.ndarray, shape (m, m)
            ``sum_j w_j C_j' C_j`` with ``C_j = L_j^-1 lambda_1' Z_1j'[X_j y_j]``.
        kept : tuple or None
            With ``keep``: ``L`` (q1, q1, l1), ``C`` (q1, m, l1) and ``logdet_level`` (l1,).

        Notes
        -----
        The levels are processed in chunks (``LEVEL_CHUNK_BYTES``) so that the dozen temporaries of the
        small-matrix kernels stay in cache: measured 3x faster than whole-array passes at 10^5 levels.
        """
        q1, m, l1 = self.q[0], self.m, self.nlevels[0]
        w = self.weights
        CtC = np.zeros((m, m))
        logdet_Z = 0.0
        kept = None
        if keep:
            kept = (np.empty((q1, q1, l1)), np.empty((q1, m, l1)), np.empty(l1))
        chunk = max(1024, LEVEL_CHUNK_BYTES // (8 * q1 * (q1 + 2 * m)))
        for s in range(0, l1, chunk):
            e = min(l1, s + chunk)
            L = soa_cholesky(soa_congruence(lam1, self._zz[:, :, s:e], 1.0))
            zxy = self._zxy[:, :, s:e]
            # lambda_1' Z_1j'[X_j y_j] (no BLAS: see soa_lincomb)
            B = lam1[0, 0] * zxy if q1 == 1 else soa_lincomb(lam1.T, zxy)
            C = soa_forward_solve(L, B)
            ld = soa_logdet_chol(L)
            wc = None if w is None else w[s:e]
            logdet_Z += float(ld.sum()) if wc is None else float(wc @ ld)
            _add_gram(CtC, C, wc)
            if keep:
                kept[0][:, :, s:e] = L
                kept[1][:, :, s:e] = C
                kept[2][s:e] = ld
        return logdet_Z, 0.5 * (CtC + CtC.T), kept

    def _schur_inputs(self, lam1: np.ndarray, L: np.ndarray, C: np.ndarray):
        """``W`` entries and ``T'C`` of the first block for :meth:`RestSchur.bordered`."""
        q1, l1 = self.q[0], self.nlevels[0]
        if q1 == 1:
            Tt = lam1[0, 0] / L[0, 0]
            W = Tt * Tt
            TtC = (C[0] * Tt).T
            return W, TtC
        # T_j = L_j^-1 lambda_1' (q1 x q1), W_j = T_j' T_j, (T'C)_j = T_j' C_j
        T = soa_forward_solve(L, np.ascontiguousarray(np.broadcast_to(lam1.T[:, :, None], (q1, q1, l1))))
        W = np.einsum("iaj,ibj->jab", T, T).ravel()
        TtC = np.einsum("iaj,imj->jam", T, C).reshape(l1 * q1, self.m)
        return W, TtC

    def _reduced(self, theta: np.ndarray, keep: bool):
        """Shared core of :meth:`deviance` and :meth:`factorize`."""
        lambdas = self.theta_map.lambdas(np.asarray(theta, dtype=float))
        lam1 = lambdas[0]
        logdet_Z, CtC, kept = self._first_block(lam1, keep or self.multi)
        L, C, logdet_level = kept if kept is not None else (None, None, None)
        M_xy = self._wXYtXY - CtC
        if self.multi:
            W, TtC = self._schur_inputs(lam1, L, C)
            if self.sparse is not None:
                sf = self.sparse.factor(lambdas[1:], W, TtC, M_xy)
                return lambdas, L, C, logdet_level, logdet_Z, sf.Lxy, 0 if sf.ok else 1, sf
            if keep:
                M = self.rest.bordered(lambdas[1:], W, TtC, M_xy)
            else:
                if self._buffer is None:
                    self._buffer = np.zeros((self.rest.nb, self.rest.nb))
                M = self.rest.bordered(lambdas[1:], W, TtC, M_xy, out=self._buffer)
            # M is C-ordered with its upper triangle set: M.T is the Fortran lower triangle; the factor kept
            # for a solution (keep) on two threads when a core is idle (13 -> 7.7 ms on the InstEval shape)
            c, info = potrf_lower(M.T, workers=split_workers()) if keep else lapack.dpotrf(
                M.T, lower=1, clean=0, overwrite_a=1)
        else:
            c, info = lapack.dpotrf(M_xy, lower=1, clean=0, overwrite_a=1)
        return lambdas, L, C, logdet_level, logdet_Z, c, info, None

    def schur_pieces(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(log det of the random-effects factor, the Schur complement on [X y])`` at ``theta``.

        The pieces the profiled deviance is built from before the ``[X y]`` corner is factored, so that
        problems on disjoint blocks of the PLS system (Dask partitions) can be summed and factored once.
        The ``[X y]`` corner is not factored here: a part's complement may be singular. Needs the
        unscaled problem with one factor or on the blocked dense or sparse path (``schur="dense"``/``"sparse"``).

        Returns
        -------
        logdet_Z : float
            ``log det(L_Z L_Z')`` (inf when ``M_zz`` is not positive definite), without prior-weight terms.
        S : numpy.ndarray, shape (p + 1, p + 1)
            ``[X y]'[X y]`` minus the random effects' part, symmetric.
        """
        if self.scaling is not None or self.dense_small is not None or isinstance(self.sparse, MatrixFreeSchur):
            raise MemoeError("schur_pieces needs an unscaled problem on the blocked dense or sparse path "
                             "(schur='dense' or 'sparse')")
        lambdas = self.theta_map.lambdas(np.asarray(theta, dtype=float))
        lam1 = lambdas[0]
        with blas_threads(self.blas_threads):
            logdet_Z, CtC, kept = self._first_block(lam1, self.multi)
            M_xy = self._wXYtXY - CtC
            if not self.multi:
                return logdet_Z - self.log_weights, M_xy
            W, TtC = self._schur_inputs(lam1, kept[0], kept[1])
            if self.sparse is not None:
                # nested designs: M_zz block-diagonal by outer level, its sparse LDL' is linear in the levels
                sf = self.sparse.factor(lambdas[1:], W, TtC, M_xy)
                if not math.isfinite(sf.logdet_zz):
                    return math.inf, np.full_like(M_xy, np.nan)
                S = M_xy - sf.Mzxy.T @ sf.solve(sf.Mzxy)
                return logdet_Z + sf.logdet_zz - self.log_weights, 0.5 * (S + S.T)
            M = self.rest.bordered(lambdas[1:], W, TtC, M_xy)
            mz = self.mz
            # M holds its upper triangle (C order): M[:mz, :mz].T is the lower triangle LAPACK reads
            c, info = lapack.dpotrf(M[:mz, :mz].T, lower=1, clean=1)
            if info != 0:
                return math.inf, np.full_like(M_xy, np.nan)
            Y = sla.solve_triangular(c, M[:mz, mz:], lower=True)
            Mxx = np.triu(M[mz:, mz:])
            S = Mxx + np.triu(Mxx, 1).T - Y.T @ Y
        logdet_Z += 2.0 * float(np.log(np.diagonal(c)).sum())
        return logdet_Z - self.log_weights, 0.5 * (S + S.T)

    def _finish(self, logdet_Z: float, c: np.ndarray, info: int, sf: SparseSchurFactor | None = None):
        d = np.diagonal(c)
        mz, p = self.mz, self.p
        if sf is not None:
            # c is the [X y] corner only; M_zz's log-determinant comes from the LDL' factor
            logdet_Z += sf.logdet_zz
            mz = 0
        ok = info == 0 and math.isfinite(logdet_Z) and bool(np.all(np.isfinite(d)))
        logdet_Z -= self.log_weights
        with np.errstate(divide="ignore", invalid="ignore"):
            if mz:
                logdet_Z += 2.0 * float(np.log(d[:mz]).sum())
            logdet_X = 2.0 * float(np.log(d[mz : mz + p]).sum())
        pwrss = float(d[-1] ** 2)
        return ok, logdet_Z, logdet_X, pwrss

    def factorize(self, theta: np.ndarray) -> Factorization:
        """Blocked Cholesky factor at ``theta`` (set theta -> update L), for the original ``[X y]``."""
        return self._unscaled(self._factorize(theta))

    def _unscaled(self, f: Factorization) -> Factorization:
        """The factor of the original ``[X y] = [X_s y_s] B`` from that of the scaled columns.

        ``L`` becomes ``blockdiag(I, B') L`` (still lower triangular: B is upper triangular), so the
        [X y] rows of the factor, ``log det(R_X' R_X)`` and the penalised RSS follow exactly.
        """
        sc = self.scaling
        if sc is None:
            return f
        B, mz = self._B, (0 if f.sparse is not None else self.mz)
        Lr = f.Lr.copy()
        Lr[mz:, :] = B.T @ f.Lr[mz:, :]
        return Factorization(
            sparse=None if f.sparse is None else replace(f.sparse, Mzxy=f.sparse.Mzxy @ B, Lxy=Lr),
            lambdas=f.lambdas,
            L1=f.L1,
            C=f.C @ B,
            G=f.G,
            Lr=Lr,
            logdet_level=f.logdet_level,
            logdet_Z=f.logdet_Z,
            logdet_X=f.logdet_X + 2.0 * sc.log_abs_det_A,
            pwrss=f.pwrss * sc.y_scale**2,
            n_eff=f.n_eff,
            ok=f.ok,
        )

    def _factorize(self, theta: np.ndarray) -> Factorization:
        """The factor of the (possibly scaled) columns the problem works on."""
        if self.dense_small is not None:
            lambdas = self.theta_map.lambdas(np.asarray(theta, dtype=float))
            with blas_threads(self.blas_threads):
                parts = self.dense_small.factor_parts(lambdas)
            parts["logdet_Z"] -= self.log_weights
            return Factorization(sparse=None, lambdas=lambdas, n_eff=self._n_eff, **parts)
        with blas_threads(self.blas_threads):
            kept = self._take_factor(theta)
            if kept is not None:
                # the gradient evaluation at this theta already factored it (offer_factor): no refactorisation
                lambdas, L, C, logdet_level, logdet_Z, c, info = kept
                sf = None
            else:
                lambdas, L, C, logdet_level, logdet_Z, c, info, sf = self._reduced(theta, keep=True)
            ok, logdet_Z, logdet_X, pwrss = self._finish(logdet_Z, c, info, sf)
            # c is ours (a fresh bordered matrix or the kept copy): its strict upper triangle zeroed in place
            if info != 0:
                Lr = np.full(c.shape, np.nan)
            else:
                Lr = _lower_in_place(c) if self.multi and sf is None else np.tril(c)
            G = self._G(lambdas, L) if self.multi else None
        return Factorization(
            sparse=sf,
            lambdas=lambdas,
            L1=np.moveaxis(L, -1, 0),
            C=np.moveaxis(C, -1, 0),
            G=G,
            Lr=Lr,
            logdet_level=logdet_level,
            logdet_Z=logdet_Z,
            logdet_X=logdet_X,
            pwrss=pwrss,
            n_eff=self._n_eff,
            ok=ok,
        )

    def offer_factor(self, theta: np.ndarray, dev: float, force: bool, pieces: tuple) -> None:
        """Keep a copy of an evaluation's factor for :meth:`_factorize` at the same ``theta`` (dense path).

        Parameters
        ----------
        theta : numpy.ndarray
            Where the evaluation was made (the key: :meth:`_factorize` must be asked for the same bytes).
        dev : float
            Its criterion: an offer replaces the kept factor when ``dev`` is not above the kept one's (the
            optimiser's accepted point is its lowest), or with ``force``.
        force : bool
        pieces : tuple
            ``(lambdas, L, C, logdet_level, logdet_Z, c, info)`` as :meth:`_reduced` returns them, ``logdet_Z``
            before :meth:`_finish`; ``c`` (the bordered factor) is copied, the rest is kept by reference
            (the evaluation allocates them afresh).

        Notes
        -----
        The gradient (:mod:`memoe.lmm.gradient`) overwrites the factor with ``S^-1`` (``potri``) in place; a
        memcpy of the ~10 MB buffer (~1-2 ms, only for the evaluations that improve on the best so far) saves
        the result's refactorisation at the optimum (~30 ms on the InstEval shape: first block, bordered
        matrix, ``potrf``). The result equals a fresh refactorisation to rounding (tested).
        """
        kept = self._kept
        if kept is not None and not force and not dev <= kept[0]:
            return
        c = pieces[5]
        spare = self._kept_spare
        if spare is None or spare.shape != c.shape:
            spare = np.empty(c.shape, order="F")
        np.copyto(spare, c)
        # the buffer of the factor it replaces becomes the next spare
        self._kept_spare = kept[2][5] if kept is not None else None
        self._kept = (float(dev), np.asarray(theta, dtype=float).tobytes(), (*pieces[:5], spare, pieces[6]))

    def forget_factor(self) -> None:
        """Drop the factor kept by :meth:`offer_factor` (and its spare buffer), and the gradient's cache of
        first-block pieces by ``lambda_1`` (:mod:`memoe.lmm.gradient`)."""
        self._kept = None
        self._kept_spare = None
        self.__dict__.pop("_first_cache", None)

    def _take_factor(self, theta: np.ndarray) -> tuple | None:
        """The kept factor's pieces when it was made at ``theta`` (then handed over: no longer kept), else None."""
        kept = self._kept
        if kept is None or self.dense_small is not None or self.sparse is not None:
            return None
        if kept[1] != np.asarray(theta, dtype=float).tobytes():
            return None
        # the Factorization returned owns the buffer from now on
        self._kept = None
        return kept[2]

    def _G(self, lambdas: list[np.ndarray], L: np.ndarray) -> sp.csr_matrix:
        """``blockdiag(L1_j^-1 lambda_1') Z_1'Z_r Lambda_r`` (the Z_r rows of L, transposed)."""
        q1, l1 = self.q[0], self.nlevels[0]
        lam1 = lambdas[0]
        if q1 == 1:
            Tj = (lam1[0, 0] / L[0, 0])[:, None, None]
        else:
            Tj = np.moveaxis(
                soa_forward_solve(L, np.ascontiguousarray(np.broadcast_to(lam1.T[:, :, None], (q1, q1, l1)))), -1, 0
            )
        T = sp.bsr_matrix((np.ascontiguousarray(Tj), np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1))
        return (T @ self.Z1tZr @ self.rest.lambda_rest(lambdas[1:])).tocsr()

    def deviance(self, theta: np.ndarray, reml: bool) -> float:
        """The objective: -2 log-likelihood (ML) or REML criterion at ``theta``."""
        if self.dense_small is not None:
            return self._deviance_small(theta, reml)
        if self.lean:
            if self.threads_held:
                return self._deviance_lean(theta, reml)
            with blas_threads(self.blas_threads):
                return self._deviance_lean(theta, reml)
        with blas_threads(self.blas_threads):
            *_, logdet_Z, c, info, sf = self._reduced(theta, keep=False)
        return self._criterion(*self._finish(logdet_Z, c, info, sf), reml)

    def _criterion(self, ok: bool, logdet_Z: float, logdet_X: float, pwrss: float, reml: bool) -> float:
        """The (RE)ML criterion on the original scale from :meth:`_finish`'s pieces (inf when not ok)."""
        if not ok:
            return np.inf
        dev = profiled_deviance(logdet_Z, logdet_X, pwrss, self._n_eff, self.p, reml)
        if self.scaling is not None:
            dev += self.scaling.deviance_shift(self._n_eff, self.p, reml)
        return dev

    def _lean_setup(self) -> tuple:
        """Theta-free arrays of :meth:`_deviance_lean` (one factor, q1 <= 2), built once.

        ``flat``: where theta lands in the flattened ``lambda``; ``A`` (nu, l1): the unique entries
        ``(00, 10, 11)`` of ``Z_j'Z_j`` (q1 = 2) or ``(00,)``. q1 = 1: ``Z`` (m^2, l1), the outer products
        ``z_j z_j'`` of ``z_j = Z_j'[X_j y_j]``, so that ``sum_j k_j z_j z_j'`` is one matrix-vector product.
        q1 = 2: ``Z`` (2, m l1), the two rows of ``Z_j'[X_j y_j]`` (``buf`` only carries l1).
        """
        q1, m, l1 = self.q[0], self.m, self.nlevels[0]
        zxy = self._zxy
        flat = (self.theta_map.row * q1 + self.theta_map.col).astype(np.intp)
        if q1 == 1:
            A = np.ascontiguousarray(self._zz[0, 0])[None, :]
            z0 = zxy[0]
            Z = (z0[:, None, :] * z0[None, :, :]).reshape(m * m, l1)
            buf = None
        else:
            A = np.stack([self._zz[0, 0], self._zz[1, 0], self._zz[1, 1]])
            Z = np.ascontiguousarray(zxy).reshape(2, m * l1)
            buf = np.empty((0, l1))  # only its shape is read: each evaluation allocates its own C
        self._lean = (flat, A, Z, buf)
        return self._lean

    def _deviance_lean(self, theta: np.ndarray, reml: bool) -> float:
        """:meth:`deviance` for one grouping factor with q1 <= 2 and few levels, in a dozen NumPy calls.

        The chunked kernels' algorithm (per level ``S_j = I + lambda' A_j lambda = L_j L_j'``,
        ``C_j = L_j^-1 lambda' Z_j'[X_j y_j]``, ``sum_j C_j'C_j`` subtracted from ``[X y]'[X y]``) written
        as whole-array expressions: for q1 = 2 the entries of ``S_j`` are one 3 x 3 by 3 x l1 product with
        coefficients from lambda, ``lambda' Z_j'[X_j y_j]`` one 2 x 2 by 2 x (m l1) product, the 2 x 2
        Cholesky factor and the triangular solve closed forms, and ``sum_j C_j'C_j`` one Gram product; for
        q1 = 1 ``sum_j C_j'C_j = sum_j (lambda^2 / S_j) z_j z_j'`` is one matrix-vector product. No chunk
        loop, no temporaries per chunk, the ``[X y]`` corner (order m <= 5) factored in Python: at 18
        levels an evaluation is call overhead, cut from ~60 calls to ~15. Same rounding as the chunked path.
        A non-positive or non-finite pivot gives ``inf`` like a failed factor.
        """
        lean = self._lean if self._lean is not None else self._lean_setup()
        flat, A, Z, buf = lean
        q1, p, m = self.q[0], self.p, self.m
        lamf = np.zeros(q1 * q1)
        lamf[flat] = theta
        if not math.isfinite(math.fsum(lamf.tolist())):  # NaN or infinite theta: no factor (no NumPy warnings)
            return math.inf
        w = self.weights
        if q1 == 1:
            l2 = float(lamf[0]) ** 2
            d = A[0] * l2
            d += 1.0
            if not _MIN(d) > 0.0:  # also catches NaN
                return math.inf
            ld = np.log(d)
            K = l2 / d
            if w is not None:
                K *= w
            CtC = Z @ K
        else:
            l00, _, l10, l11 = lamf.tolist()
            # S00, S10, S11 of lambda' A_j lambda + I
            S = np.array([[l00 * l00, 2.0 * l00 * l10, l10 * l10], [0.0, l00 * l11, l10 * l11],
                          [0.0, 0.0, l11 * l11]]) @ A
            S[0] += 1.0
            S[2] += 1.0
            # squared pivots D = (L00^2, L11^2): L10 = S10 / L00, L11^2 = S11 - S10^2 / S00
            D = S[::2]
            t = S[1] / S[0]
            t *= S[1]
            D[1] -= t
            if not _MIN(D, axis=None) > 0.0:  # also catches NaN
                return math.inf
            # log det S_j = log(L00^2 L11^2): one log per level (S_j >= I, so no overflow short of theta ~ 1e77)
            ld = np.log(D[0] * D[1])
            L = np.sqrt(D)
            l1 = buf.shape[1]
            # B = lambda' Z_j'[X_j y_j] (rows 0 and 1), then C0 = B0 / L00, C1 = (B1 - L10 C0) / L11
            B = (np.array([[l00, l10], [0.0, l11]]) @ Z).reshape(2, m, l1)
            # a fresh array, not a buffer on the problem: evaluations may run on two threads (LMM._stencil_prefetch)
            buf = np.empty((2 * m, l1))
            C0, C1 = buf[:m], buf[m:]
            np.divide(B[0], L[0], out=C0)
            np.multiply(C0, S[1] / L[0], out=C1)
            np.subtract(B[1], C1, out=C1)
            C1 /= L[1]
            G = (buf if w is None else buf * w) @ buf.T
            CtC = (G[:m, :m] + G[m:, m:]).ravel()
        logdet_Z = float(_SUM(ld)) if w is None else float(w @ ld)
        if not math.isfinite(logdet_Z):
            return math.inf
        M = self._wXYtXY.ravel() - CtC
        d = _small_chol_diag(M.tolist(), m) if m <= LEAN_PY_CHOL else _lapack_chol_diag(M.reshape(m, m))
        if d is None:
            return math.inf
        logdet_X = 0.0
        for v in d[:p]:
            logdet_X += math.log(v)
        dev = profiled_deviance(logdet_Z - self.log_weights, 2.0 * logdet_X, d[-1] ** 2, self._n_eff, p, reml)
        if self.scaling is not None:
            dev += self.scaling.deviance_shift(self._n_eff, p, reml)
        return dev

    @property
    def lean(self) -> bool:
        """Whether :meth:`deviance` takes the lean kernel (one factor, q1 <= 2, at most ``LEAN_MAX_LEVELS`` levels)."""
        return not self.multi and self.q[0] <= 2 and self.nlevels[0] <= LEAN_MAX_LEVELS

    def deviance_many(self, thetas: np.ndarray, reml: bool) -> np.ndarray:
        """:meth:`deviance` at several thetas at once (the lean kernel batched over the points).

        Parameters
        ----------
        thetas : numpy.ndarray, shape (K, ntheta)
        reml : bool

        Returns
        -------
        numpy.ndarray, shape (K,)
            The criterion at each point (``inf`` where the factor fails).

        Notes
        -----
        The post-fit derivative check evaluates ``2k + k (k - 1) / 2`` independent points (12 for
        ``(t | g)``); on small data each evaluation is NumPy call overhead, so the same expressions on
        ``(K, ., l1)`` arrays cost little more than one evaluation. The values agree with :meth:`deviance`
        to rounding (the same operations per point; only the BLAS kernel of the small products may
        differ). Problems off the lean path, or any non-finite point, are evaluated one by one.

        Examples
        --------
        >>> import numpy as np, memoe
        >>> pb = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).problem
        >>> th = np.array([[1.0, 0.0, 1.0], [0.9, 0.1, 0.2]])
        >>> np.allclose(pb.deviance_many(th, True), [pb.deviance(t, True) for t in th], rtol=1e-12)
        True
        """
        T = np.atleast_2d(np.asarray(thetas, dtype=float))
        if not self.lean or not np.isfinite(T).all():
            return np.array([self.deviance(t, reml) for t in T])
        # points per batch: the batch's (K, 2 m, l1) temporaries stay within LEAN_BATCH_BYTES (with many
        # levels an evaluation is arithmetic, not call overhead, and batching would only add memory)
        per_point = 8 * 4 * self.m * self.nlevels[0]
        size = max(1, LEAN_BATCH_BYTES // per_point)
        outs = []
        with contextlib.nullcontext() if self.threads_held else blas_threads(self.blas_threads):
            for s in range(0, len(T), size):
                out = self._deviance_lean_many(T[s : s + size], reml)
                outs.append(np.array([self.deviance(t, reml) for t in T[s : s + size]]) if out is None else out)
        return np.concatenate(outs)

    def _deviance_lean_many(self, T: np.ndarray, reml: bool) -> np.ndarray | None:
        """:meth:`_deviance_lean` over the rows of ``T`` (None when a pivot fails: the caller goes one by one)."""
        lean = self._lean if self._lean is not None else self._lean_setup()
        flat, A, Z, buf = lean
        q1, p, m = self.q[0], self.p, self.m
        K = T.shape[0]
        lamf = np.zeros((K, q1 * q1))
        lamf[:, flat] = T
        w = self.weights
        if q1 == 1:
            l2 = lamf[:, 0] ** 2
            d = l2[:, None] * A[0]
            d += 1.0
            if not _MIN(d, axis=None) > 0.0:
                return None
            ld = np.log(d)
            Kk = l2[:, None] / d
            if w is not None:
                Kk *= w
            CtC = Kk @ Z.T
        else:
            l00, l10, l11 = lamf[:, 0], lamf[:, 2], lamf[:, 3]
            zero = np.zeros(K)
            cs = np.stack([l00 * l00, 2.0 * l00 * l10, l10 * l10, zero, l00 * l11, l10 * l11, zero, zero, l11 * l11],
                          axis=1).reshape(K, 3, 3)
            S = cs @ A
            S[:, 0] += 1.0
            S[:, 2] += 1.0
            D = S[:, ::2]
            t = S[:, 1] / S[:, 0]
            t *= S[:, 1]
            D[:, 1] -= t
            if not _MIN(D, axis=None) > 0.0:
                return None
            ld = np.log(D[:, 0] * D[:, 1])
            L = np.sqrt(D)
            l1 = buf.shape[1]
            cl = np.stack([l00, l10, zero, l11], axis=1).reshape(K, 2, 2)
            B = (cl @ Z).reshape(K, 2, m, l1)
            Cb = np.empty((K, 2 * m, l1))
            C0, C1 = Cb[:, :m], Cb[:, m:]
            np.divide(B[:, 0], L[:, None, 0], out=C0)
            np.multiply(C0, (S[:, 1] / L[:, 0])[:, None, :], out=C1)
            np.subtract(B[:, 1], C1, out=C1)
            C1 /= L[:, None, 1]
            G = (Cb if w is None else Cb * w) @ Cb.transpose(0, 2, 1)
            CtC = (G[:, :m, :m] + G[:, m:, m:]).reshape(K, m * m)
        logdet = _SUM(ld, axis=1) if w is None else ld @ w
        M = self._wXYtXY.ravel() - CtC
        out = np.empty(K)
        shift = 0.0 if self.scaling is None else self.scaling.deviance_shift(self._n_eff, p, reml)
        for i, (ldz, Mi) in enumerate(zip(logdet.tolist(), M, strict=True)):
            d = _small_chol_diag(Mi.tolist(), m) if m <= LEAN_PY_CHOL else _lapack_chol_diag(Mi.reshape(m, m))
            if d is None or not math.isfinite(ldz):
                out[i] = math.inf
                continue
            logdet_X = 0.0
            for v in d[:p]:
                logdet_X += math.log(v)
            out[i] = profiled_deviance(ldz - self.log_weights, 2.0 * logdet_X, d[-1] ** 2, self._n_eff, p, reml) + shift
        return out

    def ml_factor(self, theta: np.ndarray, keep: bool = True) -> MLFactor | None:
        """The ML profiled deviance at ``theta`` with what :meth:`ml_derivatives` needs (one grouping factor).

        Parameters
        ----------
        theta : numpy.ndarray, shape (ntheta,)
        keep : bool
            Keep the per-level factor (``L``, ``C``) that :meth:`ml_derivatives` needs; False saves
            writing it when only the deviance and the profiled beta and sigma are wanted.

        Returns
        -------
        MLFactor or None
            None where the factorisation fails or the deviance is not finite. Its ``deviance`` equals
            :meth:`deviance` with ``reml=False`` (group weights included).

        Examples
        --------
        >>> f = pls.ml_factor(theta)  # doctest: +SKIP
        >>> d = pls.ml_derivatives(f)  # doctest: +SKIP
        """
        if self.multi:
            raise MemoeError("ml_factor needs a single grouping factor (the per-level derivative pieces)")
        theta = np.asarray(theta, dtype=float)
        p = self.p
        lam1 = self.theta_map.lambdas(theta)[0]
        with blas_threads(self.blas_threads):
            logdet_Z, CtC, kept = self._first_block(lam1, keep)
            c, info = lapack.dpotrf(self._wXYtXY - CtC, lower=1, clean=0, overwrite_a=1)
        L, C, _ = kept if keep else (None, None, None)
        ok, logdet_Z, _, pwrss = self._finish(logdet_Z, c, info)
        if not ok:
            return None
        dev = profiled_deviance(logdet_Z, 0.0, pwrss, self._n_eff, p, False)
        if not math.isfinite(dev):
            return None
        if self.scaling is not None:
            dev += self.scaling.deviance_shift(self._n_eff, p, False)
        beta = sla.solve_triangular(c[:p, :p], c[p, :p], trans="T", lower=True) if p else np.zeros(0)
        return MLFactor(theta=theta, lam=lam1, deviance=dev, L=L, C=C, beta_s=beta, pwrss=pwrss)

    def ml_derivatives(self, f: MLFactor) -> MLDerivatives:
        """Gradient and expected Hessian in theta of the ML profiled deviance, and the profiled beta, sigma.

        Parameters
        ----------
        f : MLFactor
            From :meth:`ml_factor` with the same group weights.

        Returns
        -------
        MLDerivatives

        Notes
        -----
        Per level j, with ``A_j = Z_j'Z_j``, ``S_j = I + Lambda' A_j Lambda``, ``r_j`` the residuals at the
        profiled beta and ``sigma^2 = pwrss / n_w``: ``F_j = sigma^2 Z_j'V_j^-1 Z_j = A_j - A_j Lambda
        S_j^-1 Lambda' A_j`` and ``u_j = sigma^2 Z_j'V_j^-1 r_j``. beta and sigma are profiled out, so by
        the envelope theorem the gradient of the deviance ``-2 sum_j w_j l_j`` in Lambda is
        ``2 (sum_j w_j F_j - sum_j w_j u_j u_j' / sigma^2) Lambda``; entry t of the theta gradient is its
        entry ``(row_t, col_t)``. The expected Hessian is twice the Fisher information of theta with
        sigma^2 profiled (beta is orthogonal): with ``D_t = E_t Lambda' + Lambda E_t'`` (``E_t`` the unit
        matrix at theta_t's position), ``H_st = sum_j w_j tr(F_j D_s F_j D_t) - tr(F D_s) tr(F D_t) / n_w``,
        ``F = sum_j w_j F_j``. All of it is per-level q x q work on the statistics the deviance uses
        (one more pass over the levels). lme4 has no counterpart (its ``devfun`` is derivative-free);
        the gradient is that of ``devfun`` with ``REML = FALSE`` for one grouping factor.
        """
        if f.L is None:
            raise MemoeError("ml_derivatives needs a factor computed with ml_factor(theta, keep=True)")
        q1, m, l1 = self.q[0], self.m, self.nlevels[0]
        lam1, L, C = f.lam, f.L, f.C
        w = self.weights
        n_w = self._n_eff
        s2 = f.pwrss / n_w
        bvec = np.append(-f.beta_s, 1.0)  # r_j = [X_j y_j] bvec
        tri = [(i, k) for i in range(q1) for k in range(i + 1)]
        nu = len(tri)
        W1 = np.zeros(nu)  # sum_j w_j F_j (unique entries)
        T = np.zeros((nu, nu))  # sum_j w_j vec(F_j) vec(F_j)'
        W2 = np.zeros((q1, q1))  # sum_j w_j u_j u_j'
        lamT = np.ascontiguousarray(lam1.T)
        chunk = max(1024, LEVEL_CHUNK_BYTES // (8 * q1 * (q1 + 2 * m)))
        with blas_threads(self.blas_threads):
            for s in range(0, l1, chunk):
                e = min(l1, s + chunk)
                Lc, A = L[:, :, s:e], self._zz[:, :, s:e]
                # m_j = S_j^-1 Lambda' a_j = L_j^-T (C_j bvec); u_j = a_j - A_j Lambda m_j, a_j = Z_j'r_j
                # (one-thread BLAS matrix-vector products over the m rows of each entry)
                cb = np.stack([bvec @ C[i, :, s:e] for i in range(q1)])
                mm = soa_backward_solve_t(Lc, cb[:, None, :])[:, 0, :]
                u = np.stack([bvec @ self._zxy[i, :, s:e] for i in range(q1)])
                lm = soa_lincomb(lam1, mm)
                for i in range(q1):
                    for j in range(q1):
                        u[i] -= A[i, j] * lm[j]
                # F_j = A_j - K_j'K_j with K_j = L_j^-1 Lambda' A_j
                K = soa_forward_solve(Lc, soa_lincomb(lamT, A))
                Fu = np.empty((nu, e - s))
                for t, (i, k) in enumerate(tri):
                    v = K[0, i] * K[0, k]
                    for j in range(1, q1):
                        v += K[j, i] * K[j, k]
                    np.subtract(A[i, k], v, out=Fu[t])
                wc = None if w is None else w[s:e]
                Fw = Fu if wc is None else Fu * wc
                uw = u if wc is None else u * wc
                W1 += Fw.sum(axis=1)
                T += Fw @ Fu.T
                W2 += uw @ u.T
        F = np.zeros((q1, q1))
        Ft = np.zeros((q1, q1, q1, q1))
        for t, (i, k) in enumerate(tri):
            F[i, k] = F[k, i] = W1[t]
            for t2, (j, l) in enumerate(tri):
                for a_, b_ in {(i, k), (k, i)}:
                    for c_, d_ in {(j, l), (l, j)}:
                        Ft[a_, b_, c_, d_] = T[t, t2]
        W2 = 0.5 * (W2 + W2.T)
        tm = self.theta_map
        grad = (2.0 * (F - W2 / s2) @ lam1)[tm.row, tm.col]
        nt = tm.size
        D = np.zeros((nt, q1, q1))
        for t in range(nt):
            E = np.zeros((q1, q1))
            E[tm.row[t], tm.col[t]] = 1.0
            D[t] = E @ lam1.T + lam1 @ E.T
        # sum_j w_j tr(F_j D_s F_j D_t) = sum Ft[i, j, k, l] D_s[j, k] D_t[l, i]
        H = np.einsum("ijkl,sjk,tli->st", Ft, D, D)
        trFD = np.einsum("ij,sji->s", F, D)
        H -= np.outer(trFD, trFD) / n_w
        beta, sigma = self.ml_profiled(f)
        return MLDerivatives(gradient=grad, hessian=0.5 * (H + H.T), beta=beta, sigma=sigma)

    def ml_profiled(self, f: MLFactor) -> tuple[np.ndarray, float]:
        """Profiled ML fixed effects (original columns) and residual SD ``sqrt(pwrss / n_w)`` of a factor."""
        sc = self.scaling
        beta = f.beta_s if sc is None else sc.beta(f.beta_s)
        sigma = math.sqrt(f.pwrss / self._n_eff) * (1.0 if sc is None else sc.y_scale)
        return beta, sigma

    def level_loglik(self, lam: np.ndarray, beta: np.ndarray, sigma: float) -> np.ndarray:
        """Marginal log-likelihood of each level of the (single) grouping factor at natural parameters.

        Parameters
        ----------
        lam : numpy.ndarray, shape (q1, q1)
            Relative covariance factor (``G = sigma^2 lam lam'``).
        beta : numpy.ndarray, shape (p,)
            Fixed effects of the original columns.
        sigma : float
            Residual standard deviation.

        Returns
        -------
        numpy.ndarray, shape (l1,)
            ``log p(y_j)`` under ``y_j ~ N(X_j beta, sigma^2 (I + Z_j lam lam' Z_j'))``, unweighted.

        Notes
        -----
        ``l_j = -[n_j log(2 pi sigma^2) + log|S_j| + (r_j'r_j - |c_j|^2) / sigma^2] / 2`` with
        ``S_j = I + lam' A_j lam = L_j L_j'``, ``c_j = L_j^-1 lam' Z_j'r_j`` and ``r_j'r_j`` from the
        per-level ``[X y]'[X y]``: the per-subject E-step of a Gaussian mixture of mixed models, on the
        structure-of-arrays statistics in cache-sized chunks (the ``(N, q, q)`` layout was 3x slower).
        The R equivalent is the per-subject ``mvtnorm::dmvnorm(y_j, X_j beta, V_j, log = TRUE)``.
        """
        if self.multi:
            raise MemoeError("level_loglik needs a single grouping factor")
        q1, m, l1 = self.q[0], self.m, self.nlevels[0]
        bvec = np.append(-np.asarray(beta, dtype=float), 1.0)
        if self.scaling is not None:
            # [X y] bvec = [X_s y_s] (B bvec): the residuals of the scaled columns
            bvec = self._B @ bvec
        xyxy = self._xyxy_level().reshape(m * m, l1)
        out = np.empty(l1)
        s2 = float(sigma) ** 2
        lamT = np.ascontiguousarray(lam.T)
        chunk = max(1024, LEVEL_CHUNK_BYTES // (8 * q1 * (q1 + 2 * m)))
        with blas_threads(self.blas_threads):
            rr_all = np.outer(bvec, bvec).ravel() @ xyxy
            for s in range(0, l1, chunk):
                e = min(l1, s + chunk)
                L = soa_cholesky(soa_congruence(lam, self._zz[:, :, s:e], 1.0))
                a = np.stack([bvec @ self._zxy[i, :, s:e] for i in range(q1)])
                c = soa_forward_solve(L, soa_lincomb(lamT, a)[:, None, :])[:, 0, :]
                quad = rr_all[s:e] - np.einsum("in,in->n", c, c)
                out[s:e] = soa_logdet_chol(L) + quad / s2
        out += self.level_n * math.log(2.0 * math.pi * s2)
        out *= -0.5
        return out

    def deviance_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """ML profiled deviance and its gradient in theta (one grouping factor; group weights allowed).

        Parameters
        ----------
        theta : numpy.ndarray, shape (ntheta,)

        Returns
        -------
        deviance : float
            :meth:`deviance` with ``reml=False`` (``inf`` where the factor fails).
        gradient : numpy.ndarray, shape (ntheta,)
            NaN where the deviance is not finite (see :meth:`ml_derivatives`).
        """
        f = self.ml_factor(theta)
        if f is None:
            return np.inf, np.full(np.shape(theta), np.nan)
        return f.deviance, self.ml_derivatives(f).gradient

    def _deviance_small(self, theta: np.ndarray, reml: bool) -> float:
        """:meth:`deviance` on the dense small path (same pieces, same formula)."""
        lambdas = self.theta_map.lambdas(np.asarray(theta, float))
        if self.threads_held:
            # LMM.fit holds the thread cap around the whole fit (a context manager costs ~10 us an evaluation)
            ok, logdet_Z, logdet_X, pwrss = self.dense_small.pieces(lambdas)
        else:
            with blas_threads(self.blas_threads):
                ok, logdet_Z, logdet_X, pwrss = self.dense_small.pieces(lambdas)
        if not ok:
            return np.inf
        dev = profiled_deviance(logdet_Z - self.log_weights, logdet_X, pwrss, self._n_eff, self.p, reml)
        if self.scaling is not None:
            dev += self.scaling.deviance_shift(self._n_eff, self.p, reml)
        return dev

    @property
    def path(self) -> str:
        """How the deviance is factored: "one factor", "dense_small", "dense" or "sparse" (Schur complement)."""
        if not self.multi:
            return "one factor"
        return "dense_small" if self.dense_small is not None else ("sparse" if self.sparse is not None else "dense")

    # ------------------------------------------------------------------ solution
    def solve(self, theta: np.ndarray, reml: bool) -> PLSSolution:
        """Fixed effects, spherical and natural-scale random effects at ``theta``."""
        with blas_threads(self.blas_threads):
            return self._solve(theta, reml)

    def _solve(self, theta: np.ndarray, reml: bool) -> PLSSolution:
        sol = self._solve_scaled(theta, reml)
        sc = self.scaling
        if sc is None:
            return sol
        s = sc.y_scale
        return PLSSolution(
            beta=sc.beta(sol.beta),
            u=[s * uk for uk in sol.u],
            b=[s * bk for bk in sol.b],
            sigma=s * sol.sigma,
            deviance=sol.deviance + sc.deviance_shift(sol.factor.n_eff, self.p, reml),
            RX_inv_t=sc.solve_A(sol.RX_inv_t),
            factor=self._unscaled(sol.factor),
        )

    def _solve_scaled(self, theta: np.ndarray, reml: bool) -> PLSSolution:
        f = self._factorize(theta)
        mz, p = self.mz, self.p
        Lr = f.Lr
        if f.sparse is not None:
            return self._solve_sparse(f, reml)
        LXX = Lr[mz : mz + p, mz : mz + p]
        lyX = Lr[-1, mz : mz + p]
        beta = sla.solve_triangular(LXX, lyX, trans="T", lower=True) if p else np.zeros(0)
        RX_inv_t = sla.solve_triangular(LXX, np.eye(p), lower=True).T if p else np.zeros((0, 0))
        u_rest = np.zeros(0)
        if mz:
            # L_zz^-T rhs by one solve with the whole bordered factor and a zero border (its last m entries
            # solve to exact zeros): the leading block Lr[:mz, :mz] is a strided view that solve_triangular
            # would copy and scan (~16 ms at m_z = 1,151, more than the solve)
            rhs = np.zeros(Lr.shape[0])
            rhs[:mz] = Lr[-1, :mz] - Lr[mz : mz + p, :mz].T @ beta
            u_rest = sla.solve_triangular(Lr, rhs, trans="T", lower=True, check_finite=not f.ok)[:mz]
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
        sigma = sigma_hat(f.pwrss, f.n_eff, p, reml)
        return PLSSolution(beta=beta, u=u, b=b, sigma=sigma, deviance=dev, RX_inv_t=RX_inv_t, factor=f)

    def _solve_sparse(self, f: Factorization, reml: bool) -> PLSSolution:
        """:meth:`_solve_scaled` on the sparse path: ``u_r = M_zz^-1 (M_zy - M_zX beta)``."""
        p, sf, Lr = self.p, f.sparse, f.Lr
        LXX, lyX = Lr[:p, :p], Lr[-1, :p]
        beta = sla.solve_triangular(LXX, lyX, trans="T", lower=True) if p else np.zeros(0)
        RX_inv_t = sla.solve_triangular(LXX, np.eye(p), lower=True).T if p else np.zeros((0, 0))
        u_rest = sf.solve(sf.Mzxy[:, -1] - sf.Mzxy[:, :p] @ beta)
        rhs1 = f.C[:, :, -1] - f.C[:, :, :p] @ beta - (f.G @ u_rest).reshape(f.C.shape[0], -1)
        u = [batched_backward_solve_t(f.L1, rhs1[:, :, None])[:, :, 0]]
        for k in range(1, len(self.q)):
            o0, o1 = self.rest_offsets[k - 1], self.rest_offsets[k]
            u.append(u_rest[o0:o1].reshape(self.nlevels[k], self.q[k]))
        b = [uk @ lam.T for uk, lam in zip(u, f.lambdas, strict=True)]
        dev = profiled_deviance(f.logdet_Z, f.logdet_X, f.pwrss, f.n_eff, p, reml)
        sigma = sigma_hat(f.pwrss, f.n_eff, p, reml)
        return PLSSolution(beta=beta, u=u, b=b, sigma=sigma, deviance=dev, RX_inv_t=RX_inv_t, factor=f)

    def conditional_variances(self, sol: PLSSolution) -> list[np.ndarray]:
        """lme4's ``condVar``: ``sigma^2 Lambda (L_Z L_Z')^-1 Lambda'`` diagonal blocks, per block and level.

        Returns
        -------
        list of numpy.ndarray, each shape (l_k, q_k, q_k)
        """
        with blas_threads(self.blas_threads):
            return self._conditional_variances(sol)

    def _conditional_variances(self, sol: PLSSolution) -> list[np.ndarray]:
        f = sol.factor
        s2 = sol.sigma**2
        q1, l1 = self.q[0], self.nlevels[0]
        eye = np.broadcast_to(np.eye(q1), f.L1.shape)
        L1inv = batched_forward_solve(f.L1, np.ascontiguousarray(eye))
        V1 = np.einsum("nki,nkj->nij", L1inv, L1inv)
        out = []
        mz = self.mz
        if f.sparse is not None:
            # Wr'Wr per level = blocks of (G' B^-1)' M_zz^-1 (G' B^-1); Vr = blocks of M_zz^-1
            Binv = sp.bsr_matrix((L1inv, np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1))
            V1 = V1 + f.sparse.quadratic_blocks((Binv.T @ f.G).T, q1)
            lam = f.lambdas
            out.append(s2 * np.einsum("ab,nbc,dc->nad", lam[0], V1, lam[0]))
            for k in range(1, len(self.q)):
                o0, o1 = self.rest_offsets[k - 1], self.rest_offsets[k]
                E = sp.identity(mz, format="csc")[:, o0:o1]
                blocks = f.sparse.quadratic_blocks(E, self.q[k])
                out.append(s2 * np.einsum("ab,nbc,dc->nad", lam[k], blocks, lam[k]))
            return out
        if mz:
            # W (m_z x l1 q1), L22^-1 and Vr are dense
            check_memory(8.0 * mz * (l1 * q1 + 2 * mz), "the conditional variances (dense path)")
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
