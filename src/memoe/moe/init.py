"""Starting soft assignments for EM: random, k-means on two-stage OLS coefficients, splitting a fit.

Each strategy returns posterior-like weights ``tau`` (N, K) from which the first M-step builds the
starting parameters; all randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

from memoe.moe.data import SubjectStats

__all__ = ["kmeans_tau", "random_tau", "split_tau", "start_plan", "two_stage_features"]

# weight kept on the assigned expert when a hard assignment is softened, so no expert starts empty
_HARD = 0.9


def random_tau(N: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """Random soft assignments: each subject's row drawn from a flat Dirichlet, shape (N, K)."""
    return rng.dirichlet(np.ones(K), size=N)


def _soften(labels: np.ndarray, K: int) -> np.ndarray:
    tau = np.full((len(labels), K), (1.0 - _HARD) / max(K - 1, 1))
    tau[np.arange(len(labels)), labels] = _HARD if K > 1 else 1.0
    return tau


def two_stage_features(stats: SubjectStats) -> np.ndarray:
    """Per-subject OLS coefficients of y on X_i, shrunk towards the pooled fit, standardised.

    Returns
    -------
    numpy.ndarray, shape (N, p)

    Notes
    -----
    ``b_i = (X_i'X_i + lambda I)^-1 (X_i'y_i + lambda b_pool)`` with ``lambda`` one thousandth of the
    average diagonal of ``X_i'X_i``: subjects whose own fit is not identified (few visits, or columns
    constant within subject) fall back on the pooled coefficients instead of failing.
    """
    XX, Xy = stats.XX, stats.Xy
    N, p, _ = XX.shape
    b_pool = np.linalg.lstsq(XX.sum(axis=0), Xy.sum(axis=0), rcond=None)[0]
    lam = 1e-3 * float(np.mean(np.trace(XX, axis1=1, axis2=2))) / p + 1e-12
    A = XX + lam * np.eye(p)[None]
    b = np.linalg.solve(A, (Xy + lam * b_pool[None])[:, :, None])[:, :, 0]
    sd = b.std(axis=0)
    keep = sd > 1e-12 * (1.0 + np.abs(b).max(axis=0))
    f = (b[:, keep] - b[:, keep].mean(axis=0)) / sd[keep]
    return f if f.shape[1] else np.zeros((N, 1))


def kmeans_tau(features: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """k-means (k-means++ seeding) on the features, softened to (N, K) weights."""
    if K == 1:
        return np.ones((features.shape[0], 1))
    seed = int(rng.integers(2**31 - 1))
    _, labels = kmeans2(features, K, minit="++", seed=seed)
    if np.unique(labels).size < K:  # an empty cluster: fall back on a random start
        return random_tau(features.shape[0], K, rng)
    return _soften(labels, K)


def split_tau(tau_prev: np.ndarray, features: np.ndarray, j: int) -> np.ndarray:
    """Split expert ``j`` of a (K-1)-expert posterior in two along its main axis of variation.

    Parameters
    ----------
    tau_prev : numpy.ndarray, shape (N, K - 1)
    features : numpy.ndarray, shape (N, d)
    j : int
        Expert to split.

    Returns
    -------
    numpy.ndarray, shape (N, K)
        Subjects of expert ``j`` on the positive side of the first principal component of their
        (posterior-weighted) features move to the new expert K.
    """
    w = tau_prev[:, j]
    mu = (w @ features) / w.sum()
    C = ((features - mu) * w[:, None]).T @ (features - mu) / w.sum()
    _, vecs = np.linalg.eigh(np.atleast_2d(C))
    score = (features - mu) @ vecs[:, -1]
    side = (score > np.median(score[w > 0.5])) if np.any(w > 0.5) else score > 0
    tau = np.hstack([tau_prev, np.zeros((tau_prev.shape[0], 1))])
    tau[side, -1] = tau[side, j]
    tau[side, j] = 0.0
    return tau


def start_plan(n_starts: int, K: int, has_previous: bool) -> list[str]:
    """Strategy of each start: one k-means start first, splits of the K-1 fit when available,
    then random and k-means starts alternating 2:1.
    """
    plan: list[str] = []
    if K == 1:
        return ["single"]
    plan.append("kmeans")
    if has_previous:
        plan += [f"split{j}" for j in range(K - 1)]
    i = 0
    while len(plan) < n_starts:
        plan.append("kmeans" if i % 3 == 2 else "random")
        i += 1
    return plan[:n_starts]
