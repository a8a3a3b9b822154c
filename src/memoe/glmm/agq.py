"""Adaptive Gauss-Hermite quadrature for a GLMM with one scalar random-effects term (lme4's ``nAGQ > 1``).

Notes
-----
With one scalar term the levels are conditionally independent, so the likelihood is a product of
one-dimensional integrals. For level ``j`` with mode ``u0_j`` and ``s_j = 1 / L_jj`` (the
Laplace approximation's conditional SD of ``u_j``), the nodes are ``u_jk = u0_j + s_j z_k``, where
``(z_k, w_k)`` is the Gauss-Hermite rule for the standard normal density (weights sum to 1).
With ``devc_j(u) = sum_{i in j} d_i(u) + u^2`` (unit deviances of the level plus the penalty),

    -2 log L = sum_j [ devc_j(u0_j) + log L_jj^2 - 2 log m_j ],
    m_j = sum_k w_k exp(-(devc_j(u_jk) - devc_j(u0_j)) / 2 + z_k^2 / 2).

As in lme4's ``glmerAGQ`` the unit deviances are used, *without* the family's normalising
constants, so lme4's (and our) AGQ log-likelihood is on a different scale from the Laplace one.
With one node (``z = 0, w = 1``) this is the Laplace deviance without those constants.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from memoe.errors import QuadratureError
from memoe.glmm.pirls import PirlsProblem, PirlsState

__all__ = ["QuadratureError", "agq_deviance", "check_agq", "gh_rule"]

MAX_NAGQ = 100


@cache
def gh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for the standard normal density (lme4's ``GHrule``)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / np.sqrt(2.0 * np.pi)
    z.flags.writeable = False
    w.flags.writeable = False
    return z, w


def check_agq(problem: PirlsProblem, nAGQ: int) -> None:
    """lme4's conditions for ``nAGQ > 1``: one scalar random-effects term.

    Raises
    ------
    QuadratureError
    """
    if int(nAGQ) != nAGQ or nAGQ < 0 or nAGQ > MAX_NAGQ:
        raise QuadratureError(f"nAGQ must be an integer between 0 and {MAX_NAGQ}, got {nAGQ!r}")
    if nAGQ > 1 and (len(problem.qk) != 1 or problem.qk[0] != 1):
        raise QuadratureError(
            "nAGQ > 1 is only available for models with a single, scalar random-effects term "
            f"(this model has {len(problem.qk)} grouping factor(s) with {problem.qk} columns)"
        )


def agq_deviance(problem: PirlsProblem, state: PirlsState, theta: np.ndarray, nAGQ: int) -> float:
    """Adaptive Gauss-Hermite deviance at a PIRLS solution (see the module notes).

    Vectorised over nodes x rows; per-level sums by ``np.bincount``.
    """
    z, w = gh_rule(int(nAGQ))
    fam = problem.family
    codes = problem.codes[0]
    l1 = problem.nlevels[0]
    lam = float(theta[0])
    zcol = problem.Zraw[0][:, 0]
    u0 = state.u
    # L_jj^2 = 1 + lambda^2 sum_{i in j} w_i z_i^2: the scalar term's factor is diagonal
    L2 = 1.0 + lam * lam * np.bincount(codes, weights=state.w * zcol * zcol, minlength=l1)
    sd = 1.0 / np.sqrt(L2)
    fixed_eta = state.eta - lam * zcol * u0[codes]
    devc0 = np.bincount(codes, weights=state.dev_resid, minlength=l1) + u0 * u0
    K = len(z)
    U = u0[None, :] + z[:, None] * sd[None, :]  # (K, l1)
    eta = fixed_eta[None, :] + lam * zcol[None, :] * U[:, codes]
    d = fam.dev_resids(problem.y[None, :], fam.linkinv(eta), problem.wt[None, :])
    idx = (np.arange(K)[:, None] * l1 + codes[None, :]).ravel()
    devc = np.bincount(idx, weights=d.ravel(), minlength=K * l1).reshape(K, l1) + U * U
    expo = -0.5 * (devc - devc0[None, :]) + 0.5 * (z * z)[:, None]
    mult = (w[:, None] * np.exp(expo)).sum(axis=0)
    return float(devc0.sum() + np.log(L2).sum() - 2.0 * np.log(mult).sum())
