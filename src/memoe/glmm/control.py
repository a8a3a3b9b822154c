"""Optimiser and check settings of a GLMM fit (:class:`GlmmControl`).

In a module of its own so that inference code (profiles, bootstrap refits) can build a control without
importing the model, which imports the result, which imports the inference code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SINGULAR_TOL", "GlmmControl"]

# lme4's isSingular() tolerance
SINGULAR_TOL = 1e-4


@dataclass(frozen=True)
class GlmmControl:
    """Optimiser and check settings for :meth:`GLMM.fit`.

    The first stage only provides starting values, so it stops earlier; the second stage goes to
    the tight optimum (lme4's default Nelder-Mead stops when the deviance changes by 1e-5).

    Attributes
    ----------
    stage1_ftol_abs, stage1_xtol_abs : float
        Stopping tolerances of the nAGQ = 0 stage (theta only, beta from PIRLS).
    ftol_abs, xtol_abs : float
        Stopping tolerances of the final (theta, beta) stage.
    maxeval : int
        Most objective evaluations per stage.
    calc_derivs : bool
        Compute the finite-difference gradient and Hessian (convergence checks and ``vcov``).
    grad_tol, singular_tol : float
        lme4's ``check.conv.grad`` and ``isSingular`` tolerances.
    hessian_delta : float
        Finite-difference step of the Hessian (lme4's ``deriv12`` default).

    optimizer : {"auto", "bobyqa"}
        "auto": where the Laplace deviance has its analytic gradient (one grouping factor with at most two
        random effects per level, binomial logit or Poisson log), both stages by a projected BFGS with that
        gradient (:func:`memoe.core.optim.minimize_bounded_gradient`; stage 2 only for nAGQ = 1), falling back
        to BOBYQA where it fails; elsewhere BOBYQA. "bobyqa": lme4's derivative-free BOBYQA always. Same
        optimum; the quasi-Newton stages take 5-11 evaluations where BOBYQA takes 15-60.

    R equivalent
    ------------
    ``lme4::glmerControl(optimizer = "bobyqa", optCtrl = list(...))``.

    Examples
    --------
    >>> import memoe
    >>> from memoe.glmm import GlmmControl
    >>> cbpp = memoe.datasets.load("cbpp")
    >>> f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    >>> fit = memoe.glmm(f, cbpp, "binomial").fit(control=GlmmControl(calc_derivs=False))
    """

    stage1_ftol_abs: float = 1e-8
    stage1_xtol_abs: float = 1e-6
    ftol_abs: float = 1e-11
    xtol_abs: float = 1e-8
    maxeval: int = 100_000
    calc_derivs: bool = True
    grad_tol: float = 2e-3
    singular_tol: float = SINGULAR_TOL
    #: finite-difference step of the Hessian (lme4's deriv12 default)
    hessian_delta: float = 1e-4
    #: start PIRLS at every evaluation from the last evaluation's modes (same optimum, fewer PIRLS steps);
    #: families with a dispersion (Gamma, inverse Gaussian: links with a restricted domain) always start cold
    warm_start: bool = True
    #: "auto" (quasi-Newton with the analytic gradient where it exists, else BOBYQA) or "bobyqa"
    optimizer: str = "auto"
