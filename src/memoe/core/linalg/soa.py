"""Small dense kernels over many groups, stored structure-of-arrays.

A stack of N small matrices is stored with the group index *last*: shape ``(q, q, N)`` for square
factors and ``(q, m, N)`` for right-hand sides. Every entry ``A[i, j]`` is then one contiguous
N-vector, so the q x q Cholesky factorisation and the triangular solves are short loops over the
``q(q+1)/2`` entries whose every step is a vectorised, unit-stride operation over all groups. This is
several times faster than the same loops on ``(N, q, q)`` arrays (stride ``q*q*8`` bytes) and much
faster than one LAPACK call per group. q = 1 and q = 2 have closed forms.

``np.moveaxis(A, -1, 0)`` views a stack as the conventional ``(N, q, q)`` layout without a copy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "soa_backward_solve_t",
    "soa_cholesky",
    "soa_congruence",
    "soa_forward_solve",
    "soa_lincomb",
    "soa_logdet_chol",
]


def soa_lincomb(coef: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``out[i] = sum_k coef[i, k] A[k]`` for a small coefficient matrix and stacked arrays.

    Parameters
    ----------
    coef : numpy.ndarray, shape (r, k)
    A : numpy.ndarray, shape (k, ...)

    Returns
    -------
    numpy.ndarray, shape (r, ...)

    Notes
    -----
    Written as scaled additions rather than a (r, k) x (k, N) BLAS product on purpose: with a
    tiny inner dimension and a huge N, multi-threaded BLAS was measured 20x slower than these
    unit-stride loops on a busy 2-core machine (thread hand-off dominates), and zeros of a
    triangular ``coef`` are skipped.
    """
    r, k = coef.shape
    out = np.empty((r, *A.shape[1:]), dtype=np.result_type(coef, A))
    for i in range(r):
        o = out[i]
        started = False
        for j in range(k):
            c = coef[i, j]
            if c == 0.0:
                continue
            if started:
                o += c * A[j]
            else:
                np.multiply(A[j], c, out=o)
                started = True
        if not started:
            o.fill(0.0)
    return out


def soa_congruence(lam: np.ndarray, A: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """``lam' A[..., n] lam + shift * I`` for every group n (lower triangle only).

    Parameters
    ----------
    lam : numpy.ndarray, shape (q, q)
    A : numpy.ndarray, shape (q, q, N)
        Symmetric per-group matrices.
    shift : float

    Returns
    -------
    S : numpy.ndarray, shape (q, q, N)
        Entries ``S[i, j]`` with ``i >= j`` are set; the strict upper triangle is left as zeros.

    Notes
    -----
    ``S_ij = sum_k lam[k, i] U_kj`` with ``U = A lam``: both steps are linear combinations of
    contiguous N-vectors (:func:`soa_lincomb`), skipping the zeros of a triangular ``lam``.
    """
    q = lam.shape[0]
    N = A.shape[-1]
    if q == 1:
        S = (lam[0, 0] * lam[0, 0]) * A
        if shift:
            S += shift
        return S
    if q == 2:
        # closed form with shared partial sums (fewest passes over memory)
        l00, l10, l11 = lam[0, 0], lam[1, 0], lam[1, 1]
        S = np.zeros((2, 2, N))
        t = l00 * A[1, 0]
        t += l10 * A[1, 1]
        u = l00 * A[0, 0]
        u += l10 * A[1, 0]
        np.multiply(u, l00, out=S[0, 0])
        S[0, 0] += l10 * t
        np.multiply(t, l11, out=S[1, 0])
        np.multiply(A[1, 1], l11 * l11, out=S[1, 1])
        if shift:
            S[0, 0] += shift
            S[1, 1] += shift
        return S
    # U[k] = (A lam)[k, :]: row k of A combined with the columns of lam
    U = np.stack([soa_lincomb(lam.T, A[k]) for k in range(q)])
    S = np.zeros((q, q, N))
    for j in range(q):
        # S[i, j] = sum_k lam[k, i] U[k, j], only for i >= j
        S[j:, j] = soa_lincomb(lam.T[j:], U[:, j])
        if shift:
            S[j, j] += shift
    return S


def soa_cholesky(S: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack of symmetric positive-definite matrices.

    Parameters
    ----------
    S : numpy.ndarray, shape (q, q, N)
        Only the lower triangle is read.

    Returns
    -------
    L : numpy.ndarray, shape (q, q, N)
        Lower triangular (upper entries 0). A non-positive pivot gives NaN entries, which callers
        turn into an infinite objective.
    """
    q = S.shape[0]
    L = np.empty_like(S)
    with np.errstate(invalid="ignore", divide="ignore"):
        if q == 1:
            np.sqrt(S[0, 0], out=L[0, 0])
            return L
        if q == 2:
            L[0, 1] = 0.0
            l00 = np.sqrt(S[0, 0], out=L[0, 0])
            l10 = np.divide(S[1, 0], l00, out=L[1, 0])
            d = l10 * l10
            np.subtract(S[1, 1], d, out=d)
            np.sqrt(d, out=L[1, 1])
            return L
        L.fill(0.0)
        for j in range(q):
            d = S[j, j].copy()
            for k in range(j):
                d -= L[j, k] * L[j, k]
            ljj = np.sqrt(d, out=L[j, j])
            for i in range(j + 1, q):
                v = S[i, j].copy()
                for k in range(j):
                    v -= L[i, k] * L[j, k]
                np.divide(v, ljj, out=L[i, j])
    return L


def soa_forward_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L[..., n] X[..., n] = B[..., n]`` for lower-triangular ``L``.

    Parameters
    ----------
    L : numpy.ndarray, shape (q, q, N)
    B : numpy.ndarray, shape (q, m, N)

    Returns
    -------
    X : numpy.ndarray, shape (q, m, N)
    """
    q = L.shape[0]
    X = np.empty(B.shape, dtype=np.result_type(L, B))
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(q):
            # one reciprocal per group, then multiplications over the m right-hand sides
            r = 1.0 / L[i, i]
            Xi = X[i]
            if i == 0:
                np.multiply(B[0], r, out=Xi)
                continue
            np.multiply(X[0], L[i, 0], out=Xi)
            np.subtract(B[i], Xi, out=Xi)
            for k in range(1, i):
                Xi -= L[i, k] * X[k]
            Xi *= r
    return X


def soa_backward_solve_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L[..., n]' X[..., n] = B[..., n]`` for lower-triangular ``L``.

    Parameters
    ----------
    L : numpy.ndarray, shape (q, q, N)
    B : numpy.ndarray, shape (q, m, N)

    Returns
    -------
    X : numpy.ndarray, shape (q, m, N)
    """
    q = L.shape[0]
    X = np.empty(B.shape, dtype=np.result_type(L, B))
    for i in range(q - 1, -1, -1):
        acc = B[i].copy()
        for k in range(i + 1, q):
            acc -= L[k, i] * X[k]
        np.divide(acc, L[i, i], out=X[i])
    return X


def soa_logdet_chol(L: np.ndarray) -> np.ndarray:
    """``log det(L L')`` of each group's factor, shape (N,)."""
    q = L.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if q > 4:
            return 2.0 * np.log(np.stack([L[i, i] for i in range(q)])).sum(axis=0)
        # one log of the product of the few pivots instead of q logs (no overflow risk for q <= 4)
        d = L[0, 0]
        for i in range(1, q):
            d = d * L[i, i]
        return 2.0 * np.log(d)
