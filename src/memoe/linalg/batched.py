"""Cholesky factorisations and triangular solves of many small matrices at once.

Arrays are stacked along the first axis, shape (N, q, q). For the small q of longitudinal random
effects the loops run over the q(q+1)/2 entries, each step vectorised over the N groups; this is
several times faster than a gufunc call per matrix and never loops over groups in Python.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batched_backward_solve_t", "batched_cholesky", "batched_forward_solve", "batched_logdet_chol"]

_SMALL_Q = 6


def batched_cholesky(S: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of symmetric positive-definite matrices.

    Parameters
    ----------
    S : numpy.ndarray, shape (N, q, q)

    Returns
    -------
    L : numpy.ndarray, shape (N, q, q)
        Lower triangular with ``L[n] @ L[n].T == S[n]``. Entries with non-positive pivots become NaN,
        which the caller turns into an infinite objective.
    """
    _, q, _ = S.shape
    if q == 1:
        with np.errstate(invalid="ignore"):
            return np.sqrt(S)
    if q > _SMALL_Q:
        try:
            return np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return np.full_like(S, np.nan)
    L = np.zeros_like(S)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(q):
            d = S[:, j, j].copy()
            for k in range(j):
                d -= L[:, j, k] ** 2
            ljj = np.sqrt(d)
            L[:, j, j] = ljj
            for i in range(j + 1, q):
                v = S[:, i, j].copy()
                for k in range(j):
                    v -= L[:, i, k] * L[:, j, k]
                L[:, i, j] = v / ljj
    return L


def batched_forward_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L[n] @ X[n] = B[n]`` for lower-triangular ``L``.

    Parameters
    ----------
    L : numpy.ndarray, shape (N, q, q)
    B : numpy.ndarray, shape (N, q, m)

    Returns
    -------
    X : numpy.ndarray, shape (N, q, m)
    """
    _, q, _ = L.shape
    if q == 1:
        return B / L
    if q > _SMALL_Q:
        return np.linalg.solve(L, B)
    X = np.empty(B.shape, dtype=np.result_type(L, B))
    for i in range(q):
        acc = B[:, i, :].copy()
        for k in range(i):
            acc -= L[:, i, k, None] * X[:, k, :]
        X[:, i, :] = acc / L[:, i, i, None]
    return X


def batched_backward_solve_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L[n].T @ X[n] = B[n]`` for lower-triangular ``L``.

    Parameters
    ----------
    L : numpy.ndarray, shape (N, q, q)
    B : numpy.ndarray, shape (N, q, m)
    """
    _, q, _ = L.shape
    if q == 1:
        return B / L
    if q > _SMALL_Q:
        return np.linalg.solve(np.swapaxes(L, 1, 2), B)
    X = np.empty(B.shape, dtype=np.result_type(L, B))
    for i in range(q - 1, -1, -1):
        acc = B[:, i, :].copy()
        for k in range(i + 1, q):
            acc -= L[:, k, i, None] * X[:, k, :]
        X[:, i, :] = acc / L[:, i, i, None]
    return X


def batched_logdet_chol(L: np.ndarray) -> np.ndarray:
    """``log det(L L')`` for each stacked Cholesky factor, shape (N,)."""
    d = np.diagonal(L, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * np.log(d).sum(axis=1)
