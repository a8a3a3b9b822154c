"""Products of many tiny matrices, vectorised over subjects.

numpy's batched ``matmul``/``einsum`` on stacks of 2 x 2 or 3 x 3 matrices spends its time in
per-matrix overhead (tens of times slower than the arithmetic). For the small dimensions of
longitudinal random effects the loops below run over the matrix entries, each step a vector
operation over all N subjects, which is what makes an EM iteration cost a few vector passes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bmm", "bmtm", "bmv", "btmv", "congruence", "logdet_chol", "logsumexp_rows", "right_const", "rowdot"]


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


def congruence(A: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``lam' A[n] lam`` for A (N, q, q) and a constant lam (q, q) by one flat matrix product.

    Notes
    -----
    Row-major ``vec(lam' A lam) = vec(A) @ kron(lam, lam)``.
    """
    N, q, _ = A.shape
    return (A.reshape(N, q * q) @ np.kron(lam, lam)).reshape(N, q, q)


def right_const(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``A[n] @ M`` for A (N, a, k) and a constant M (k, b)."""
    N, a, k = A.shape
    return (A.reshape(N * a, k) @ M).reshape(N, a, M.shape[1])


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
    """``log sum_k exp(a[:, k])`` for (N, K) arrays with few columns, shape (N,)."""
    m = a.max(axis=1)
    m = np.where(np.isfinite(m), m, 0.0)
    s = np.zeros(a.shape[0])
    for k in range(a.shape[1]):
        s += np.exp(a[:, k] - m)
    with np.errstate(divide="ignore"):
        return m + np.log(s)
