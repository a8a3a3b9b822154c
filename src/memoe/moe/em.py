"""The EM loop: state, stopping rule, monotonicity guard and empty-expert detection.

Order of calls per iteration: ``e_step(params)`` (posterior, observed log-likelihood) -> stopping
test -> ``m_step(tau, params)``. The M-step never decreases the Q-function, so the observed-data
log-likelihood never decreases; a decrease beyond round-off is recorded on the run.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from memoe.core.arguments import check_int
from memoe.errors import ArgumentError, ArgumentTypeError
from memoe.moe.experts import MStepControl
from memoe.moe.params import MoEParams
from memoe.moe.problem import EStep, MoEProblem

__all__ = ["EMControl", "EMRun", "run_em"]


@dataclass(frozen=True)
class EMControl:
    """Stopping rule of one EM run.

    Attributes
    ----------
    max_iter : int
    tol : float
        Relative change of the observed log-likelihood, ``|l_t - l_{t-1}| / (1 + |l_t|)``.
    tol_par : float
        Largest relative parameter change (see :meth:`MoEParams.distance`).
    min_mass : float or None
        An expert whose posterior mass (sum of its posterior probabilities) falls below this many
        subjects is declared empty and the run stops; default ``max(2, p)``.
    mstep : MStepControl or None
        M-step settings for this run (None: the expert's own).
    """

    max_iter: int = 1000
    tol: float = 1e-10
    tol_par: float = 1e-6
    min_mass: float | None = None
    mstep: MStepControl | None = None

    def __post_init__(self) -> None:
        check_int(self.max_iter, "EMControl.max_iter", minimum=1)
        _check_nonneg(self.tol, "EMControl.tol")
        _check_nonneg(self.tol_par, "EMControl.tol_par")
        if self.min_mass is not None:
            _check_nonneg(self.min_mass, "EMControl.min_mass")
        if self.mstep is not None and not isinstance(self.mstep, MStepControl):
            raise ArgumentTypeError(f"EMControl.mstep must be an MStepControl or None, got {type(self.mstep).__name__}")


def _check_nonneg(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value) >= 0):
        raise ArgumentError(f"{name} must be a non-negative number, got {value!r}")
    if not np.isfinite(float(value)):
        raise ArgumentError(f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass
class EMRun:
    """Outcome of one EM run.

    Attributes
    ----------
    params : MoEParams
        Final parameters (those at which ``estep`` was computed).
    estep : EStep
    loglik : float
    trace : list of float
        Observed log-likelihood at every iteration.
    n_iter : int
    converged : bool
    empty : list of int
        Experts (0-based) that lost their posterior mass; the run stopped there.
    max_decrease : float
        Largest decrease of the log-likelihood between iterations (0 for a monotone run).
    """

    params: MoEParams
    estep: EStep
    loglik: float
    trace: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    empty: list[int] = field(default_factory=list)
    max_decrease: float = 0.0
    polish_iter: int = 0
    polish_converged: bool = False
    stopped: bool = False


def run_em(
    problem: MoEProblem,
    params: MoEParams,
    control: EMControl | None = None,
    stop: Callable[[int, list[float]], bool] | None = None,
) -> EMRun:
    """Run EM from ``params`` until the stopping rule holds or an expert empties.

    Parameters
    ----------
    problem : MoEProblem
    params : MoEParams
        Start.
    control : EMControl, optional
    stop : callable, optional
        ``stop(iteration, trace)`` after every iteration; True ends the run there (``EMRun.stopped``):
        the multi-start search abandons exploratory runs that cannot catch up with the best ones.

    Returns
    -------
    EMRun
    """
    ctl = control or EMControl()
    min_mass = ctl.min_mass if ctl.min_mass is not None else max(2.0, float(problem.structure.p))
    e = problem.e_step(params)
    trace = [e.loglik]
    run = EMRun(params=params, estep=e, loglik=e.loglik, trace=trace)
    previous = None
    for it in range(1, ctl.max_iter + 1):
        mass = e.mass
        empty = [int(k) for k in np.flatnonzero(mass < min_mass)] if problem.K > 1 else []
        if empty:
            run.empty = empty
            break
        new = problem.m_step(e.tau, params, previous, ctl.mstep)
        e_new = problem.e_step(new)
        ll_old, ll = e.loglik, e_new.loglik
        if not np.isfinite(ll):
            break
        run.max_decrease = max(run.max_decrease, ll_old - ll)
        dpar = new.distance(params)
        previous, params, e = params, new, e_new
        trace.append(ll)
        run.n_iter = it
        if abs(ll - ll_old) / (1.0 + abs(ll)) < ctl.tol and dpar < ctl.tol_par:
            run.converged = True
            break
        if stop is not None and it < ctl.max_iter and stop(it, trace):
            run.stopped = True
            break
    run.params, run.estep, run.loglik = params, e, e.loglik
    return run


def polish(
    problem: MoEProblem, run: EMRun, max_iter: int = 500, gtol: float = 1e-5, precondition: bool = False
) -> EMRun:
    """Finish an EM run by quasi-Newton (BFGS) on the observed log-likelihood with the analytic score.

    EM converges linearly (slowly when the classes overlap) and its relative-change rule can stop
    short of the maximum; BFGS from the EM solution converges superlinearly. Its line search accepts
    only steps that increase the log-likelihood, and the result is kept only if it is higher, so
    the sequence of log-likelihoods stays non-decreasing.

    Parameters
    ----------
    problem : MoEProblem
    run : EMRun
    max_iter : int
    gtol : float
        Stop when the largest absolute score is below ``gtol * (number of subjects)``.
    precondition : bool
        Work in coordinates ``psi = psi0 + T w`` with ``T T' = B^-1``, B the BHHH matrix (sum of the
        per-subject score outer products) at the start: the first step is a scoring step and the
        problem is well scaled. Stops when ``max |T' g| < sqrt(gtol)``, i.e. when the predicted gain
        ``g' B^-1 g / 2`` is of order ``gtol`` (Laplace experts, whose evaluations are costly).
    """
    st = problem.structure
    psi0 = st.pack(run.params)
    floor = getattr(problem.expert, "sigma_floor", 0.0)
    T = None
    if precondition:
        S = problem.subject_scores(run.params, run.estep)
        B = S.T @ S
        B += 1e-8 * max(float(np.trace(B)) / max(len(psi0), 1), 1e-12) * np.eye(len(psi0))
        try:
            T = np.linalg.inv(np.linalg.cholesky(B)).T
        except np.linalg.LinAlgError:
            T = None

    def f(psi):
        # below the residual-SD floor an expert collapses onto exactly fitted subjects (likelihood
        # unbounded): treat it as infeasible so the line search backs off
        if np.any(st.unpack(psi).sigma < floor):
            return 1e300, np.zeros_like(psi)
        ll, g = problem.loglik_and_score(psi)
        if not np.isfinite(ll):
            return 1e300, np.zeros_like(psi)
        return -ll, -g

    if T is None:
        res = minimize(f, psi0, jac=True, method="BFGS", options={"maxiter": max_iter, "gtol": gtol * problem.N})
        x = res.x
    else:

        def fw(w):
            v, g = f(psi0 + T @ w)
            return v, T.T @ g

        res = minimize(fw, np.zeros(len(psi0)), jac=True, method="BFGS",
                       options={"maxiter": max_iter, "gtol": float(np.sqrt(gtol))})
        x = psi0 + T @ res.x
    # a step below the residual-SD floor is a collapse onto exactly fitted subjects, not an improvement
    if np.all(np.isfinite(x)) and -res.fun > run.loglik and np.all(st.unpack(x).sigma >= floor):
        params = st.unpack(x)
        e = problem.e_step(params)
        run.params, run.estep, run.loglik = params, e, e.loglik
        run.trace.append(e.loglik)
    run.polish_iter = int(res.nit)
    run.polish_converged = bool(res.success)
    return run
