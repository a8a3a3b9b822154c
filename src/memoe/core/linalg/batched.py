"""Cholesky factorisations and triangular solves of many small matrices, stacked group-first.

Stacks here have the conventional layout ``(N, q, q)`` / ``(N, q, m)``. The arithmetic lives in
:mod:`memoe.core.linalg.soa` (group index last, unit-stride loops over the q(q+1)/2 entries); these
functions only change the layout, so both layouts share one set of kernels. Large q falls back to
numpy's batched LAPACK calls.
"""

from __future__ import annotations

import numpy as np

from memoe.core.linalg.soa import soa_backward_solve_t, soa_cholesky, soa_forward_solve

__all__ = ["batched_backward_solve_t", "batched_cholesky", "batched_forward_solve", "batched_logdet_chol"]

_SMALL_Q = 6


def _to_soa(A: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(A, 0, -1))


def _from_soa(A: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(A, -1, 0))


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
    if S.shape[1] > _SMALL_Q:
        try:
            return np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return np.full_like(S, np.nan)
    return _from_soa(soa_cholesky(_to_soa(S)))


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
    if L.shape[1] > _SMALL_Q:
        return np.linalg.solve(L, B)
    return _from_soa(soa_forward_solve(_to_soa(L), _to_soa(B)))


def batched_backward_solve_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L[n].T @ X[n] = B[n]`` for lower-triangular ``L``.

    Parameters
    ----------
    L : numpy.ndarray, shape (N, q, q)
    B : numpy.ndarray, shape (N, q, m)
    """
    if L.shape[1] > _SMALL_Q:
        return np.linalg.solve(np.swapaxes(L, 1, 2), B)
    return _from_soa(soa_backward_solve_t(_to_soa(L), _to_soa(B)))


def batched_logdet_chol(L: np.ndarray) -> np.ndarray:
    """``log det(L L')`` for each stacked Cholesky factor, shape (N,)."""
    d = np.diagonal(L, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * np.log(d).sum(axis=1)
