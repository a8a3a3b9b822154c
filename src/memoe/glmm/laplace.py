"""The Laplace approximation to the GLMM deviance and the two objectives lme4's ``glmer`` optimises.

Notes
-----
At the conditional modes ``u`` (PIRLS), with ``L L' = Lambda' Z' W Z Lambda + I`` at the working
weights ``W`` of the modes, lme4's Laplace deviance (Bates et al. 2015; lme4's
``glmResp::Laplace``) is

    -2 log L(theta, beta) ~= -2 log p(y | mu(u)) + ||u||^2 + log det(L L'),

where ``-2 log p(y | mu)`` is R's ``family$aic`` term: the sum of the unit deviances plus the
family's normalising constants (log binomial coefficients, ``log y!``), so that ``logLik`` is a
proper log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from memoe.glmm.pirls import PirlsProblem, PirlsState

__all__ = ["LAPLACE_KINDS", "joint_objective", "laplace_deviance", "observed_laplace_deviance", "theta_objective"]

#: lme4's expected (Fisher) working weights in log det, or glmmTMB's observed information
LAPLACE_KINDS = ("expected", "observed")


def laplace_deviance(problem: PirlsProblem, state: PirlsState) -> float:
    """``-2 log p(y | mu) + ||u||^2 + log det(L L')`` at a PIRLS solution."""
    return problem.loglik_terms(state.mu, dev_sum=state.dev_sum) + state.sqrL + state.ldL2


def observed_laplace_deviance(problem: PirlsProblem, state: PirlsState, theta: np.ndarray) -> float:
    """The Laplace deviance with ``log det(Lambda' Z' W_obs Z Lambda + I)``, ``W_obs`` the observed information
    of the conditional log-likelihood in eta at the modes (glmmTMB / TMB's Laplace approximation).

    The modes are the same as lme4's (PIRLS solves the same penalised likelihood); only the curvature
    differs, and only for non-canonical links (NB2 with the log link). ``inf`` where ``W_obs`` makes the
    matrix indefinite.
    """
    w = problem.family.observed_weights(problem.y, state.mu, state.eta, problem.wt)
    if not np.all(np.isfinite(w)):
        return np.inf
    try:
        with np.errstate(all="ignore"):
            _, _, ldL2 = problem.wls(np.asarray(theta, dtype=float), w, np.zeros(problem.n), with_beta=False)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return np.inf
    if not np.isfinite(ldL2):
        return np.inf
    return problem.loglik_terms(state.mu, dev_sum=state.dev_sum) + state.sqrL + ldL2


def theta_objective(
    problem: PirlsProblem, eta0: np.ndarray | None = None, warm: bool = False
) -> Callable[[np.ndarray], float]:
    """lme4's first stage (``nAGQ = 0``): the Laplace deviance of theta with beta and u from PIRLS.

    Every evaluation restarts PIRLS from the same linear predictor ``eta0`` (lme4's ``lp0``), so
    the objective is a deterministic function of theta. With ``warm`` each evaluation starts from the
    (beta, u) of the last evaluation that converged instead (MixedModels.jl's warm starts): PIRLS stops
    at the same modes (to ``U_TOL``) in a few Newton steps instead of a full run from ``mustart``.

    Returns
    -------
    callable
        theta -> deviance (``inf`` when PIRLS fails).
    """
    last: list = [None]
    state: list = [None]
    predict: list = [None]

    def f(theta: np.ndarray) -> float:
        state[0] = None
        try:
            start = predict[0](theta) if (warm and predict[0] is not None) else None
            if start is not None:
                st = problem.solve(theta, beta=None, u0=start[1], beta0=start[0], warm=True, transient=True)
            elif warm and last[0] is not None:
                st = problem.solve(theta, beta=None, u0=last[0][1], beta0=last[0][0], warm=True, transient=True)
            else:
                st = problem.solve(theta, beta=None, eta0=eta0, transient=True)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf
        v = laplace_deviance(problem, st)
        state[0] = st
        if warm and st.converged and np.isfinite(v):
            last[0] = (st.beta, st.u)
        return v if np.isfinite(v) else np.inf

    # the last evaluation's PIRLS state (transient: valid until the next evaluation), for a gradient read at once
    f.state = state
    # optional theta -> (beta0, u0) or None: a warm start predicted from the last modes' derivatives in theta
    f.predict = predict
    return f


def joint_objective(
    problem: PirlsProblem,
    u0: np.ndarray,
    deviance: Callable[[PirlsProblem, PirlsState, np.ndarray], float],
    warm: bool = False,
    min_iter: int = 2,
) -> Callable[[np.ndarray], float]:
    """lme4's second stage: a deviance of ``x = (theta, beta)`` with u from PIRLS (``uOnly``).

    Parameters
    ----------
    problem : PirlsProblem
    u0 : numpy.ndarray, shape (q,)
        Fixed PIRLS start for every evaluation (the first stage's modes), which keeps the
        objective deterministic for the optimiser and the finite-difference Hessian.
    deviance : callable
        ``(problem, state, theta) -> float``: Laplace or adaptive Gauss-Hermite.
    warm : bool, default False
        Start PIRLS from the modes of the last converged evaluation instead of ``u0``. PIRLS runs to
        ``U_TOL`` (Newton, quadratic convergence), so the value differs from the cold start's only by
        rounding, and successive BOBYQA points are close: one or two steps instead of four or more.
    min_iter : int, default 2
        Fewest PIRLS iterations of a cold (not ``warm``) evaluation (see :meth:`PirlsProblem.solve`).
    """
    k = problem.theta_map.size
    last = [u0]

    def f(x: np.ndarray) -> float:
        x = np.asarray(x, dtype=float)
        theta, beta = x[:k], x[k:]
        state[0] = None
        try:
            start = predict[0](x) if predict[0] is not None else None
            if start is not None:
                # a start predicted to second order in the step (the modes' derivatives): one Newton iteration
                # fewer to the same modes, and a cold objective still takes the same number at every point
                st = problem.solve(theta, beta=beta, u0=start, warm=warm, min_iter=max(min_iter - 1, 2),
                                   transient=True)
            else:
                st = problem.solve(theta, beta=beta, u0=last[0], warm=warm, min_iter=min_iter, transient=True)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf
        v = deviance(problem, st, theta)
        state[0] = st
        if warm and st.converged and np.isfinite(v):
            last[0] = st.u
        return v if np.isfinite(v) else np.inf

    state: list = [None]
    predict: list = [None]
    f.last = last  # the modes the next evaluation starts from (the caller's Hessian starts there)
    # the last evaluation's PIRLS state (transient: valid until the next evaluation), for a gradient read at once
    f.state = state
    # optional x -> u0 or None: a start predicted from the modes' derivatives at a nearby point
    f.predict = predict
    return f
