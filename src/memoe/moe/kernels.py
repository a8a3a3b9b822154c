"""Products of many tiny matrices, vectorised over subjects.

numpy's batched ``matmul``/``einsum`` on stacks of 2 x 2 or 3 x 3 matrices spends its time in
per-matrix overhead (tens of times slower than the arithmetic). For the small dimensions of
longitudinal random effects the loops below run over the matrix entries, each step a vector
operation over all N subjects, which is what makes an EM iteration cost a few vector passes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bmm", "bmtm", "bmv", "btmv", "colmv", "congruence", "logdet_chol", "logsumexp_rows", "right_const", "rowdot",
]


def bmm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A[n] @ B[n]`` for A (N, a, k), B (N, k, b); returns (N, a, b)."""
    N, a, k = A.shape
    b = B.shape[2]
    out = np.empty((N, a, b))
    for i in range(a):
        for j in range(b):
            s = A[:, i, 0] * B[:, 0, j]
            for m in range(1, k):
                s += A[:, i, m] * B[:, m, j]
            out[:, i, j] = s
    return out


def bmtm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A[n]' @ B[n]`` for A (N, k, a), B (N, k, b); returns (N, a, b)."""
    N, k, a = A.shape
    b = B.shape[2]
    out = np.empty((N, a, b))
    for i in range(a):
        for j in range(b):
            s = A[:, 0, i] * B[:, 0, j]
            for m in range(1, k):
                s += A[:, m, i] * B[:, m, j]
            out[:, i, j] = s
    return out


def bmv(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A[n] @ x[n]`` for A (N, a, k), x (N, k); returns (N, a)."""
    N, a, k = A.shape
    out = np.empty((N, a))
    for i in range(a):
        s = A[:, i, 0] * x[:, 0]
        for m in range(1, k):
            s += A[:, i, m] * x[:, m]
        out[:, i] = s
    return out


def btmv(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A[n]' @ x[n]`` for A (N, k, a), x (N, k); returns (N, a)."""
    N, k, a = A.shape
    out = np.empty((N, a))
    for i in range(a):
        s = A[:, 0, i] * x[:, 0]
        for m in range(1, k):
            s += A[:, m, i] * x[:, m]
        out[:, i] = s
    return out


# above this dimension the flat BLAS product wins over the entry-wise loops
_LOOP_MAX = 4


def congruence(A: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``lam' A[n] lam`` for A (N, q, q) and a constant lam (q, q).

    Notes
    -----
    For small q two entry-wise passes (``B = A lam``, then ``lam' B``), skipping the structural zeros
    of a triangular ``lam``: a BLAS product of an (N, q*q) array by ``kron(lam, lam)`` measured
    10-30x slower on a loaded 2-core machine (thread start-up and contention for a tiny inner
    dimension). Larger q: row-major ``vec(lam' A lam) = vec(A) @ kron(lam, lam)``.
    """
    N, q, _ = A.shape
    if q > _LOOP_MAX:
        return (A.reshape(N, q * q) @ np.kron(lam, lam)).reshape(N, q, q)
    return _left_const_t(lam, right_const(A, lam))


def _lincomb(cols: list[np.ndarray], coef: np.ndarray, N: int) -> np.ndarray:
    """``sum_m coef[m] * cols[m]`` over the nonzero coefficients (vectors of length N)."""
    s = None
    for c, v in zip(coef, cols, strict=True):
        if c == 0.0:
            continue
        s = c * v if s is None else s + c * v
    return np.zeros(N) if s is None else s


def _left_const_t(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``M' @ B[n]`` for a constant M (k, a) and B (N, k, b); returns (N, a, b)."""
    N, k, b = B.shape
    a = M.shape[1]
    out = np.empty((N, a, b))
    for j in range(b):
        cols = [B[:, m, j] for m in range(k)]
        for i in range(a):
            out[:, i, j] = _lincomb(cols, M[:, i], N)
    return out


def colmv(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``A @ v`` for a tall A (N, k) and v (k,), as a sum of scaled columns (no BLAS, see :func:`congruence`)."""
    N, k = A.shape
    if k > 4 * _LOOP_MAX:
        return A @ v
    return _lincomb([A[:, m] for m in range(k)], np.asarray(v, dtype=float), N)


def right_const(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``A[n] @ M`` for A (N, a, k) and a constant M (k, b) (entry-wise for small k, see :func:`congruence`)."""
    N, a, k = A.shape
    b = M.shape[1]
    if k > _LOOP_MAX or b > _LOOP_MAX:
        return (A.reshape(N * a, k) @ M).reshape(N, a, b)
    out = np.empty((N, a, b))
    for i in range(a):
        cols = [A[:, i, m] for m in range(k)]
        for j in range(b):
            out[:, i, j] = _lincomb(cols, M[:, j], N)
    return out


def logdet_chol(L: np.ndarray) -> np.ndarray:
    """``log det(L L')`` of stacked Cholesky factors (N, q, q), shape (N,)."""
    q = L.shape[1]
    if q == 0:
        return np.zeros(L.shape[0])
    d = L[:, 0, 0].copy()
    for j in range(1, q):
        d *= L[:, j, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * np.log(d)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products of (N, k) arrays, shape (N,) (a loop over the k columns)."""
    k = a.shape[1]
    if k == 0:
        return np.zeros(a.shape[0])
    s = a[:, 0] * b[:, 0]
    for j in range(1, k):
        s += a[:, j] * b[:, j]
    return s


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """``log sum_k exp(a[:, k])`` for (N, K) arrays with few columns, shape (N,).

    Column by column (``np.maximum`` and ``np.exp`` over N-vectors): numpy's ``a.max(axis=1)`` over a
    3-wide axis was measured 6x slower than the whole computation done this way.
    """
    K = a.shape[1]
    cols = [a[:, k] for k in range(K)]
    m = cols[0].copy()
    for c in cols[1:]:
        np.maximum(m, c, out=m)
    # rows without a finite maximum (all -inf, +inf or NaN) keep their value through exp and log
    m[~np.isfinite(m)] = 0.0
    s = np.exp(cols[0] - m)
    for c in cols[1:]:
        t = c - m
        np.exp(t, out=t)
        s += t
    with np.errstate(divide="ignore"):
        np.log(s, out=s)
    s += m
    return s
