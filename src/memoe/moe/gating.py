"""The gate: a multinomial logit of baseline covariates, fitted to soft (posterior) targets.

``P(z_i = k | w_i) = softmax_k(w_i' gamma_k)`` with ``gamma_1 = 0`` (expert 1 is the reference).
"""

from __future__ import annotations

import numpy as np

from memoe.moe.kernels import logsumexp_rows

__all__ = ["gate_log_probs", "gate_newton", "gate_objective", "gate_scores"]


def gate_log_probs(W: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Log gating probabilities.

    Parameters
    ----------
    W : numpy.ndarray, shape (N, r)
    gamma : numpy.ndarray, shape (K, r)
        Row 0 is zero.

    Returns
    -------
    numpy.ndarray, shape (N, K)
    """
    eta = W @ gamma.T
    return eta - logsumexp_rows(eta)[:, None]


def gate_objective(W: np.ndarray, tau: np.ndarray, gamma: np.ndarray) -> float:
    """The gate's part of the EM Q-function, ``sum_i sum_k tau_ik log pi_ik``."""
    return float(np.sum(tau * gate_log_probs(W, gamma)))


def gate_scores(W: np.ndarray, tau: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Per-subject scores of the free gating coefficients.

    Parameters
    ----------
    W : numpy.ndarray, shape (N, r)
    tau, pi : numpy.ndarray, shape (N, K)
        Posterior and gating probabilities.

    Returns
    -------
    numpy.ndarray, shape (N, (K - 1) r)
        ``W_i (tau_ik - pi_ik)`` for k = 2..K, expert-major.
    """
    d = tau[:, 1:] - pi[:, 1:]
    return (d[:, :, None] * W[:, None, :]).reshape(len(W), -1)


def gate_newton(
    W: np.ndarray,
    tau: np.ndarray,
    gamma: np.ndarray,
    max_iter: int = 25,
    tol: float = 1e-10,
) -> np.ndarray:
    """Weighted multinomial logistic regression by damped Newton steps from ``gamma``.

    Parameters
    ----------
    W : numpy.ndarray, shape (N, r)
    tau : numpy.ndarray, shape (N, K)
        Soft targets (posterior probabilities); rows sum to one.
    gamma : numpy.ndarray, shape (K, r)
        Start (row 0 zero).
    max_iter : int
    tol : float
        Stop when the Newton decrement falls below ``tol`` times ``1 + |objective|``.

    Returns
    -------
    numpy.ndarray, shape (K, r)

    Notes
    -----
    Gradient ``g_k = W'(tau_k - pi_k)``, Hessian ``H_kl = -W' diag(pi_k (delta_kl - pi_l)) W`` over the
    K - 1 free rows, vectorised over subjects. Each step is accepted only if the objective
    ``sum tau log pi`` increases (step halving), so the EM stays monotone. Under (quasi-)separation
    the Hessian becomes singular; the step is then damped (Levenberg: ``H - mu I``), which changes the
    step, not the objective: no ridge penalty is added, so coefficients of a separated gate keep
    growing slowly instead of being shrunk.
    """
    K, r = gamma.shape
    if K == 1:
        return gamma
    gamma = gamma.copy()
    f0 = gate_objective(W, tau, gamma)
    for _ in range(max_iter):
        pi = np.exp(gate_log_probs(W, gamma))
        g = ((tau[:, 1:] - pi[:, 1:]).T @ W).ravel()
        p1 = pi[:, 1:]
        m = K - 1
        # -H = W' diag(pi_k delta_kl - pi_k pi_l) W, one (r, r) block per pair of free experts
        Hn = np.empty((m, r, m, r))
        for k in range(m):
            for j in range(k, m):
                v = p1[:, k] * ((1.0 if j == k else 0.0) - p1[:, j])
                Hn[k, :, j, :] = (W * v[:, None]).T @ W
                Hn[j, :, k, :] = Hn[k, :, j, :].T
        Hn = Hn.reshape(m * r, m * r)
        mu = 1e-10 * max(1.0, float(np.trace(Hn)) / (m * r))
        step = None
        for _attempt in range(8):
            try:
                c = np.linalg.cholesky(Hn + mu * np.eye(m * r))
                step = np.linalg.solve(c.T, np.linalg.solve(c, g))
                break
            except np.linalg.LinAlgError:
                mu *= 100.0
        if step is None:
            break
        decrement = float(g @ step)
        if decrement < tol * (1.0 + abs(f0)):
            break
        t = 1.0
        improved = False
        for _half in range(30):
            cand = gamma.copy()
            cand[1:] += t * step.reshape(m, r)
            f1 = gate_objective(W, tau, cand)
            if f1 >= f0:
                gamma, f0, improved = cand, f1, True
                break
            t *= 0.5
        if not improved:
            break
    return gamma
