"""Stochastic Lanczos quadrature (SLQ): ``tr f(A)`` of a symmetric positive definite operator.

For a start vector ``z`` the Lanczos process on ``A`` builds a tridiagonal ``T_s`` after ``s``
products with ``A``; ``z' f(A) z`` is approximated by the Gauss quadrature rule
``||z||^2 e_1' f(T_s) e_1 = ||z||^2 sum_i tau_i^2 f(theta_i)`` (Ritz values ``theta_i``, first
components ``tau_i`` of the eigenvectors of ``T_s``; Golub and Meurant 2010, ch. 6). For analytic
``f`` the rule's error falls like ``((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^(2 s)`` with the
condition number ``kappa`` of ``A``, so a well preconditioned operator needs only a few steps.
Averaging ``z' f(A) z`` over Rademacher probes gives Hutchinson's unbiased estimator of
``tr f(A)`` with variance ``2 sum_{i != j} f(A)_ij^2 / k`` for ``k`` probes (Ubaru, Chen and Saad
2017), so the probes' spread is the estimator's own standard error.

All probes run together: one product of ``A`` with an ``(n, k)`` block per step (sparse matrix times a
dense block), and per-probe scalars as length-``k`` vectors. Fixed probes (a fixed seed) make the
estimate a smooth function of the operator's entries, which a derivative-free optimiser needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal

__all__ = ["SLQEstimate", "lanczos_quadrature", "rademacher_probes"]


def rademacher_probes(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` Rademacher vectors (entries +-1 with probability 1/2) of length ``n``, shape (n, k).

    Parameters
    ----------
    n, k : int
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed gives the same probes on every machine.

    Returns
    -------
    numpy.ndarray, shape (n, k)

    Examples
    --------
    >>> rademacher_probes(3, 2, seed=1).shape
    (3, 2)
    """
    rng = np.random.default_rng(seed)
    # drawn probe by probe: the first k probes are the same whatever the number asked for
    Z = np.empty((n, k))
    for j in range(k):
        Z[:, j] = rng.integers(0, 2, size=n)
    return Z * 2.0 - 1.0


@dataclass(frozen=True)
class SLQEstimate:
    """Result of :func:`lanczos_quadrature`.

    Attributes
    ----------
    per_probe : numpy.ndarray, shape (k,)
        ``z_i' f(A) z_i`` for each probe.
    steps : int
        Lanczos steps taken (the longest probe).
    converged : bool
        Every probe's quadrature changed by less than the tolerance in its last step (or its Krylov
        space became invariant, where the rule is exact).
    others : tuple of numpy.ndarray
        ``z_i' f_j(A) z_i`` for the functions passed as ``others`` (same Lanczos runs).
    """

    per_probe: np.ndarray
    steps: int
    converged: bool
    others: tuple = ()

    @property
    def mean(self) -> float:
        """The estimate of ``tr f(A)`` (for probes with ``E[z z'] = I``)."""
        return float(self.per_probe.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` from the probes' spread (0 with one probe)."""
        k = len(self.per_probe)
        return float(self.per_probe.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0


def _quadrature(alpha: np.ndarray, beta: np.ndarray, fs) -> np.ndarray:
    """``e_1' f(T) e_1`` for each f, ``T`` symmetric tridiagonal (diagonal alpha, off-diagonal beta)."""
    if len(alpha) == 1:
        return np.array([float(f(alpha)[0]) for f in fs])
    theta, U = eigh_tridiagonal(alpha, beta)
    w = U[0] ** 2
    return np.array([float(w @ f(theta)) for f in fs])


def lanczos_quadrature(
    matvec: Callable[[np.ndarray], np.ndarray],
    Z: np.ndarray,
    f: Callable[[np.ndarray], np.ndarray],
    max_steps: int = 60,
    tol: float = 1e-12,
    others: tuple = (),
) -> SLQEstimate:
    """Gauss-Lanczos quadrature of ``z' f(A) z`` for every column ``z`` of ``Z``.

    Parameters
    ----------
    matvec : callable
        ``X -> A X`` for ``X`` of shape (n, c) (``A`` symmetric positive definite on the span of ``Z``).
    Z : numpy.ndarray, shape (n, k)
        Start vectors (e.g. :func:`rademacher_probes`, possibly projected).
    f : callable
        Elementwise function of the Ritz values (e.g. ``numpy.log``).
    max_steps : int
        Most Lanczos steps (products with ``A``).
    tol : float
        A probe stops when its quadrature changes by at most ``tol * (1 + |value|)`` from one step to
        the next. With a tight ``tol`` the number of steps is locally constant in the entries of ``A``,
        and where it changes the estimate moves by less than ``tol``.
    others : tuple of callable
        Further functions integrated with the same Lanczos runs (a probe stops when all have converged).

    Returns
    -------
    SLQEstimate

    Notes
    -----
    No reorthogonalisation: loss of orthogonality duplicates converged Ritz values, which the
    quadrature rule tolerates (its weights split between the copies), and the rule converges long
    before that matters for the well-conditioned operators this is used on.

    R equivalent
    ------------
    None in lme4 (which factors exactly); the method of Ubaru, Chen and Saad (2017), "Fast estimation of
    tr(f(A)) via stochastic Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38(4).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.diag([1.0, 2.0, 4.0])
    >>> est = lanczos_quadrature(lambda X: A @ X, np.eye(3), np.log)
    >>> bool(abs(est.per_probe.sum() - np.log(8.0)) < 1e-12)
    True
    """
    Z = np.asarray(Z, dtype=float)
    k = Z.shape[1]
    norms2 = np.einsum("ij,ij->j", Z, Z)
    active = norms2 > 0
    Q = np.zeros_like(Z)
    Q[:, active] = Z[:, active] / np.sqrt(norms2[active])
    Q_prev = np.zeros_like(Z)
    beta_prev = np.zeros(k)
    alphas: list[np.ndarray] = []
    betas: list[np.ndarray] = []
    length = np.zeros(k, dtype=int)  # steps that count for each probe
    fs = (f, *others)
    est = np.zeros((len(fs), k))
    done = ~active
    steps = 0
    for step in range(max_steps):
        cols = np.flatnonzero(~done)
        if len(cols) == 0:
            break
        steps = step + 1
        AQ = matvec(Q[:, cols])
        a = np.einsum("ij,ij->j", Q[:, cols], AQ)
        R = AQ - Q[:, cols] * a - Q_prev[:, cols] * beta_prev[cols]
        b = np.sqrt(np.einsum("ij,ij->j", R, R))
        a_full = np.zeros(k)
        b_full = np.zeros(k)
        a_full[cols], b_full[cols] = a, b
        alphas.append(a_full)
        betas.append(b_full)
        length[cols] += 1
        A_al, A_be = np.array(alphas), np.array(betas)
        for i in cols:
            s = length[i]
            # rows of this probe's steps: it was active from step 0 to s - 1 (probes only ever stop)
            val = _quadrature(A_al[:s, i], A_be[: s - 1, i], fs)
            if s > 1 and np.all(np.abs(val - est[:, i]) <= tol * (1.0 + np.abs(val))):
                done[i] = True
            est[:, i] = val
        # an invariant Krylov space (beta ~ 0): the rule is exact for this probe
        scale = np.maximum(np.abs(a), 1.0)
        inv = b <= 1e-13 * scale
        done[cols[inv]] = True
        keep = cols[~inv & ~done[cols]]
        Q_prev[:, keep] = Q[:, keep]
        sel = np.isin(cols, keep)
        Q[:, keep] = R[:, sel] / b[sel]
        beta_prev[keep] = b[sel]
    converged = bool(done.all())
    est = est * norms2
    return SLQEstimate(per_probe=est[0], steps=steps, converged=converged, others=tuple(est[1:]))
