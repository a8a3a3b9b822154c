"""A sparse Cholesky (LDL') of the random-effects part of the Schur complement.

:class:`memoe.core.linalg.crossed.RestSchur` forms the bordered matrix ``M`` (random effects of the
later factors, then ``[X y]``) densely. For nested designs (the inner factor eliminated first leaves
the outer factor's block diagonal) and for crossed designs whose levels meet few levels of the first
factor, ``M_zz`` stays sparse and its factor has little fill, so it is factored here instead::

    M_zz = P' (I + L) D (I + L)' P          (qdldl: AMD ordering, up-looking LDL')
    S    = M_xy - M_zxy' M_zz^-1 M_zxy      (m x m, dense Cholesky)

``log det M_zz = sum(log D)``; ``chol(S)`` is exactly the ``[X y]`` corner of the dense factor, so
``logdet_X`` and the penalised RSS come out as on the dense path. ``M_zz`` is symmetric positive
definite (``I`` plus a positive semi-definite matrix), so an LDL' factorisation without pivoting is
stable; a non-positive ``D`` entry (rounding at an extreme theta) is reported as a failed factor.

qdldl (the OSQP project's LDL', a self-contained PyPI wheel without system libraries) keeps its
symbolic analysis across :meth:`qdldl.Solver.update` when the pattern is fixed, which it is when every
later factor has scalar random effects (``M_zz`` is then a diagonal rescaling of a fixed-pattern matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg import lapack

from memoe.core.linalg.crossed import RestSchur
from memoe.errors import MemoeError

__all__ = ["SparseSchur", "SparseSchurFactor", "have_sparse_cholesky"]

# Columns solved together in the triangular solves of the conditional variances (bounds the temporaries).
SOLVE_CHUNK = 256


def have_sparse_cholesky() -> bool:
    """Whether the sparse LDL' backend (the ``qdldl`` wheel) is importable."""
    try:
        import qdldl  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return True


def _qdldl():
    try:
        import qdldl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MemoeError(
            "this crossed/nested design needs the sparse Cholesky backend: install the 'qdldl' package "
            "(pip install qdldl)"
        ) from exc
    return qdldl


@dataclass(frozen=True)
class SparseSchurFactor:
    """The factor of ``M`` at one theta on the sparse path.

    Attributes
    ----------
    L : scipy.sparse.csc_matrix, shape (m_z, m_z)
        Strictly lower part of the unit lower LDL' factor of ``P M_zz P'``.
    D : numpy.ndarray, shape (m_z,)
    perm : numpy.ndarray of int, shape (m_z,)
        ``M_zz[perm][:, perm] = (I + L) diag(D) (I + L)'``.
    Mzxy : numpy.ndarray, shape (m_z, m)
        ``Lambda_r' (Z_r'[X y] - Z_r'Z_1 T'C)``.
    Lxy : numpy.ndarray, shape (m, m)
        Lower Cholesky factor of ``M_xy - M_zxy' M_zz^-1 M_zxy`` (the ``[X y]`` corner of the dense factor).
    logdet_zz : float
        ``log det M_zz``.
    """

    L: sp.csc_matrix
    D: np.ndarray
    perm: np.ndarray
    Mzxy: np.ndarray
    Lxy: np.ndarray
    logdet_zz: float
    ok: bool

    def solve(self, B: np.ndarray) -> np.ndarray:
        """``M_zz^-1 B`` for B of shape (m_z,) or (m_z, k)."""
        return self._inv_perm_back(self._half(B) / self._dcol(B))

    def _dcol(self, B: np.ndarray) -> np.ndarray:
        return self.D if B.ndim == 1 else self.D[:, None]

    def _half(self, B: np.ndarray) -> np.ndarray:
        """``(I + L)^-1 P B`` (the solve with the unit lower factor)."""
        Bp = np.asarray(B, dtype=float)[self.perm]
        if self.L.nnz == 0:
            return Bp
        return spla.spsolve_triangular(self._lower_csr, Bp, lower=True, unit_diagonal=True)

    def _inv_perm_back(self, Y: np.ndarray) -> np.ndarray:
        if self.L.nnz:
            Y = spla.spsolve_triangular(self._upper_csr, Y, lower=False, unit_diagonal=True)
        out = np.empty_like(Y)
        out[self.perm] = Y
        return out

    @property
    def _lower_csr(self) -> sp.csr_matrix:
        return (self.L + sp.identity(self.L.shape[0], format="csc")).tocsr()

    @property
    def _upper_csr(self) -> sp.csr_matrix:
        return (self.L.T + sp.identity(self.L.shape[0], format="csc")).tocsr()

    def quadratic_blocks(self, Y: sp.spmatrix | np.ndarray, block: int) -> np.ndarray:
        """Diagonal ``block`` x ``block`` blocks of ``Y' M_zz^-1 Y`` (columns of Y grouped consecutively).

        Parameters
        ----------
        Y : sparse or dense matrix, shape (m_z, k * block)
        block : int

        Returns
        -------
        numpy.ndarray, shape (k, block, block)
        """
        ncol = Y.shape[1]
        k = ncol // block
        out = np.empty((k, block, block))
        if self.L.nnz == 0 and sp.issparse(Y):
            # M_zz diagonal (a nested design's outer factor): stay sparse, cost O(nnz(Y))
            H = sp.diags(1.0 / np.sqrt(self.D)) @ sp.csc_matrix(Y)[self.perm]
            for a in range(block):
                for b in range(a, block):
                    v = np.asarray(H[:, a::block].multiply(H[:, b::block]).sum(axis=0)).ravel()
                    out[:, a, b] = out[:, b, a] = v
            return out
        lower = self._lower_csr if self.L.nnz else None
        dinv = 1.0 / np.sqrt(self.D)
        step = max(block, (SOLVE_CHUNK // block) * block)
        Ycsc = sp.csc_matrix(Y) if sp.issparse(Y) else None
        for s in range(0, ncol, step):
            e = min(ncol, s + step)
            chunk = Ycsc[:, s:e].toarray() if Ycsc is not None else np.asarray(Y[:, s:e], dtype=float)
            H = chunk[self.perm]
            if lower is not None:
                H = spla.spsolve_triangular(lower, H, lower=True, unit_diagonal=True)
            H *= dinv[:, None]
            Hr = H.reshape(H.shape[0], (e - s) // block, block)
            out[s // block : e // block] = np.einsum("rka,rkb->kab", Hr, Hr)
        return out


class SparseSchur:
    """Factors ``M`` with a sparse ``M_zz`` for given theta (see the module notes).

    Parameters
    ----------
    rest : RestSchur
        The data-only pieces (``Z_1'Z_r``, ``Z_r'Z_r``, ``Z_r'[X y]``, the map ``P``).
    """

    def __init__(self, rest: RestSchur) -> None:
        self.rest = rest
        self.mz = rest.mz
        self._solver = None
        mz, nb = rest.mz, rest.nb
        self._fixed = rest.P is not None and rest.diag_lambda
        if self._fixed:
            # pattern of the upper triangle of M_zz (positions of P, plus the diagonal for the + I)
            pos = rest.pos
            inside = pos < mz * nb
            r, c = np.divmod(pos[inside], nb)
            inside[inside] = c < mz
            r, c = np.divmod(pos[inside], nb)
            diag = np.arange(mz, dtype=np.int64)
            flat = np.concatenate((r * mz + c, diag * mz + diag))
            up, inv = np.unique(flat, return_inverse=True)
            rr, cc = np.divmod(up, mz)
            # CSC of the upper triangle: sort by (column, row)
            order = np.lexsort((rr, cc))
            where = np.empty(len(up), dtype=np.int64)
            where[order] = np.arange(len(up))
            self._rows, self._cols = rr[order], cc[order]
            self._indptr = np.concatenate(([0], np.cumsum(np.bincount(self._cols, minlength=mz))))
            self._src = where[inv[: int(inside.sum())]]  # data slot of each P row that lies in M_zz
            self._p_rows = np.flatnonzero(inside)
            self._diag_slot = where[inv[int(inside.sum()) :]]
            self._nnz = len(up)
            self._col_scale = rest.col_block

    # ------------------------------------------------------------------ M_zz
    def _mzz(self, lambdas_rest: list[np.ndarray], W: np.ndarray) -> sp.csc_matrix:
        rest, mz = self.rest, self.mz
        if self._fixed:
            dvec = np.array([lam[0, 0] for lam in lambdas_rest])
            vals = rest.P[self._p_rows] @ np.append(W, 1.0)
            data = np.zeros(self._nnz)
            dcol = dvec[self._col_scale]
            data[self._src] = vals * dcol[self._rows[self._src]] * dcol[self._cols[self._src]]
            data[self._diag_slot] += 1.0
            return sp.csc_matrix((data, self._rows, self._indptr), shape=(mz, mz))
        # vector-valued random effects (or no precomputed map): sparse products, pattern may change
        lam_r = rest.lambda_rest(lambdas_rest)
        l1, q1 = rest.l1, rest.q1
        Wb = sp.bsr_matrix((W.reshape(l1, q1, q1), np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1))
        H = rest.ZrtZr - rest.Z1tZr.T @ (Wb @ rest.Z1tZr)
        A = lam_r.T @ H @ lam_r + sp.identity(mz, format="csr")
        return sp.triu(A, format="csc")

    def factor(
        self, lambdas_rest: list[np.ndarray], W: np.ndarray, TtC: np.ndarray, M_xy: np.ndarray
    ) -> SparseSchurFactor:
        """The sparse factor of ``M`` at the theta that produced ``W`` and ``TtC`` (see RestSchur.bordered)."""
        qdldl = _qdldl()
        rest = self.rest
        A = self._mzz(lambdas_rest, W)
        ZrtXY_adj = rest.ZrtXY - rest.Z1tZr.T @ TtC
        if rest.diag_lambda:
            dvec = np.array([lam[0, 0] for lam in lambdas_rest])
            Mzxy = dvec[rest.col_block][:, None] * ZrtXY_adj
        else:
            Mzxy = rest.lambda_rest(lambdas_rest).T @ ZrtXY_adj
        try:
            if self._fixed and self._solver is not None:
                self._solver.update(A)
            else:
                self._solver = qdldl.Solver(A, upper=True)
            L, D, perm = self._solver.factors()
        except (ValueError, RuntimeError):
            # qdldl refuses a zero pivot: the matrix is numerically singular at this theta
            return self._failed(Mzxy, M_xy)
        if not np.all(D > 0) or not np.all(np.isfinite(D)):
            return self._failed(Mzxy, M_xy)
        f0 = SparseSchurFactor(L=L, D=D, perm=np.asarray(perm), Mzxy=Mzxy, Lxy=np.empty((0, 0)), logdet_zz=0.0, ok=True)
        X = f0.solve(Mzxy)
        S = M_xy - Mzxy.T @ X
        c, info = lapack.dpotrf(0.5 * (S + S.T), lower=1, clean=1)
        ok = info == 0 and bool(np.all(np.isfinite(np.diagonal(c))))
        return SparseSchurFactor(
            L=L,
            D=D,
            perm=f0.perm,
            Mzxy=Mzxy,
            Lxy=c if ok else np.full(M_xy.shape, np.nan),
            logdet_zz=float(np.log(D).sum()),
            ok=ok,
        )

    def _failed(self, Mzxy: np.ndarray, M_xy: np.ndarray) -> SparseSchurFactor:
        mz = self.mz
        return SparseSchurFactor(
            L=sp.csc_matrix((mz, mz)),
            D=np.full(mz, np.nan),
            perm=np.arange(mz),
            Mzxy=Mzxy,
            Lxy=np.full(M_xy.shape, np.nan),
            logdet_zz=np.nan,
            ok=False,
        )

