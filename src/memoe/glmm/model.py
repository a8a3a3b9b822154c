"""Generalised linear mixed models with lme4 formulas: ``memoe.glmm.glmm(formula, data, family).fit()``.

The stages follow lme4's ``glmer``: ``build_glmm_design`` (formula -> frame, response, X and the
random-effects blocks of the LMM), ``PirlsProblem`` (conditional modes by PIRLS on the LMM's
penalised least squares), then two optimisations with BOBYQA and lme4's bounds:

1. ``nAGQ = 0``: the Laplace deviance of theta, with beta and u both from PIRLS;
2. the Laplace (``nAGQ = 1``) or adaptive Gauss-Hermite (``nAGQ > 1``) deviance of (theta, beta),
   with u from PIRLS, started at stage 1's estimates. The reported estimates are stage 2's.

The finite-difference Hessian of the stage-2 deviance at the optimum gives lme4's convergence
checks and its default covariance of the fixed effects.

With one grouping factor of at most two random effects per level and a canonical link (binomial logit, Poisson
log) the Laplace deviance has an analytic gradient (:meth:`PirlsProblem.laplace_gradient`): both stages then run a
projected BFGS with it (same optimum, 5-11 evaluations per stage instead of BOBYQA's 15-60) and the Hessian's
columns are central differences of that gradient (``GlmmControl(optimizer="bobyqa")`` keeps lme4's BOBYQA).
With ``nAGQ > 1`` (one scalar term) stage 2 and the derivative check use the adaptive Gauss-Hermite deviance's
exact gradient (:func:`memoe.glmm.agq.agq_gradient`, the modes re-found at each point as lme4 does) in the same way.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.core.frames import to_pandas
from memoe.core.linalg.threads import blas_threads
from memoe.core.optim import (
    check_convergence,
    finite_difference_derivatives,
    minimize_bounded,
    minimize_bounded_gradient,
)
from memoe.core.optim.arguments import check_bool, check_control, check_start
from memoe.core.optim.checks import ConvergenceReport
from memoe.core.optim.finish import finish_fit, is_boundary
from memoe.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceError,
    FormulaTypeError,
    MemoeError,
    SeparationWarning,
)
from memoe.errors import warn as emit_warning
from memoe.glmm.agq import QuadratureError, agq_deviance, agq_gradient, check_agq
from memoe.glmm.control import SINGULAR_TOL, GlmmControl
from memoe.glmm.crossed_gradient import CROSSED_GRADIENT_MAX_Q, CrossedGradient
from memoe.glmm.design import GlmmDesign, build_glmm_design, no_separation_certificate, separating_direction
from memoe.glmm.families import Binomial, Family, NegativeBinomial, Poisson, get_family
from memoe.glmm.laplace import (
    LAPLACE_KINDS,
    joint_objective,
    laplace_deviance,
    observed_laplace_deviance,
    theta_objective,
)
from memoe.glmm.pirls import PirlsProblem, PirlsState
from memoe.glmm.result import GlmmResult
from memoe.glmm.single import GRADIENT_MAX_Q

__all__ = ["GLMM", "SINGULAR_TOL", "GlmmControl"]

#: the quasi-Newton second stage's ftol_abs where PIRLS is Fisher scoring (the deviance's noise floor; _quasi_newton)
NOISY_FTOL_ABS = 1e-9
# above this many (theta, beta) entries the O(k^2) finite-difference Hessian is skipped
MAX_PARAMS_FOR_DERIVS = 40


@dataclass(frozen=True)
class StageResult:
    """One optimisation stage: its optimiser summary and the parameters it reached.

    ``family_theta``: the negative binomial theta the stage reached when it is estimated (else None).
    """

    opt: object
    theta: np.ndarray
    beta: np.ndarray
    family_theta: float | None = None


#: bounds on log(theta) of an estimated negative binomial: beyond e^20 the family is Poisson to rounding
NB_LOG_THETA_BOUNDS = (-20.0, 20.0)


def nb_start_theta(y: np.ndarray, wt: np.ndarray) -> float:
    """A moment start for the NB2 theta: ``mean^2 / (var - mean)``, clipped to [0.05, 100]."""
    used = wt > 0
    m = float(np.average(y[used], weights=wt[used]))
    v = float(np.average((y[used] - m) ** 2, weights=wt[used]))
    return float(np.clip(m * m / (v - m), 0.05, 100.0)) if v > m * (1.0 + 1e-8) else 100.0


def _derivatives_from_gradient(fg, x: np.ndarray, lower: np.ndarray, h: float):
    """lme4's ``deriv12`` values for the gradient and the Hessian's diagonal stencil; the Hessian's columns from
    differences of ``fg``'s analytic gradient at the same points (symmetrised).

    ``fg(x) -> (value, gradient or None)``. Returns ``(gradient, hessian)``, or None when the analytic gradient
    was not available at some point (the caller then differences values only).
    """
    n = len(x)
    forward = x - h < lower
    f0, g0 = fg(x)
    if g0 is None:
        return None
    grad = np.zeros(n)
    hess = np.zeros((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        if forward[i]:
            (f1, g1), (f2, g2) = fg(x + e), fg(x + 2 * e)
            if g1 is None or g2 is None:
                return None
            grad[i] = (-3 * f0 + 4 * f1 - f2) / (2 * h)
            hess[:, i] = (-3 * g0 + 4 * g1 - g2) / (2 * h)
        else:
            (fp, gp), (fm, gm) = fg(x + e), fg(x - e)
            if gp is None or gm is None:
                return None
            grad[i] = (fp - fm) / (2 * h)
            hess[:, i] = (gp - gm) / (2 * h)
    return grad, 0.5 * (hess + hess.T)


def _gradient_stage(fun_grad, x0: np.ndarray, lower: np.ndarray, *, missing: list[bool], calls: list[int],
                    maxeval: int, **options):
    """Run the projected BFGS for a fit stage; None (the caller runs BOBYQA) when it failed.

    Failure: the gradient was unavailable at a point (``missing[0]``, set by ``fun_grad``), no descent or too
    many evaluations, a non-finite optimum, or ``calls[0]`` (every evaluation, including the start Hessian's,
    which the optimiser's own count leaves out) beyond ``maxeval``. The final gradient is left out of the
    settings: it may be in whitened coordinates, and settings are saved as JSON.
    """
    try:
        opt = minimize_bounded_gradient(fun_grad, x0, lower, maxeval=min(maxeval, 500), **options)
    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
        return None
    if missing[0] or opt.return_code < 0 or opt.return_code == 5 or calls[0] > maxeval or not np.isfinite(opt.fmin):
        return None
    settings = {key: v for key, v in opt.settings.items() if key != "gradient"}
    return dataclasses.replace(opt, feval=calls[0], settings=settings)


class GLMM:
    """A generalised linear mixed model specified by an lme4 formula (lme4's ``glmer``).

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"cbind(incidence, size - incidence) ~ period + (1 | herd)"``. Binomial
        responses are ``cbind(successes, failures)``, 0/1 (or logical) outcomes, a factor
        (success = any level but the first, as R), or proportions with ``weights`` = trials.
        ``offset(expr)`` terms are read as R does (e.g. ``+ offset(np.log(exposure))``).
    data : pandas.DataFrame
    family : str or Family, default "binomial"
        ``"binomial"`` (logit link), ``"poisson"`` (log), ``"Gamma"`` (inverse; lme4's dispersion handling),
        ``"inverse_gaussian"`` (1/mu^2), ``"negative_binomial"`` / ``"nbinom2"`` (NB2, log link, theta
        estimated as lme4's ``glmer.nb``), R's spellings (``"inverse.gaussian"``, ``"gamma"``) too, or a
        :class:`~memoe.glmm.families.Family` with its link, e.g. ``Gamma(link="log")``,
        ``Gaussian(link="log")``, ``NegativeBinomial(theta=2.0)`` (theta fixed).
        Without a random-effects term in ``formula`` the model is the GLM (R's ``glm`` / MASS's ``glm.nb``),
        fitted by IRLS: :class:`~memoe.glmm.glm.GlmResult`.
    weights : str or array-like, optional
        Prior weights (a column name or one value per row).
    offset : str or array-like, optional
        Offset on the linear-predictor scale (e.g. ``np.log(exposure)``).
    contrasts : dict, optional
        R's ``contrasts=``: factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``.
        Default (None) is R's: treatment for unordered factors, poly for ordered Categoricals.

    R equivalent
    ------------
    ``lme4::glmer(formula, data, family, weights, offset, nAGQ)`` (``nAGQ`` is an argument of
    :meth:`fit`).

    Examples
    --------
    >>> import memoe
    >>> from memoe.glmm import glmm
    >>> cbpp = memoe.datasets.load("cbpp")
    >>> fit = glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial").fit()
    >>> round(fit.loglik, 3)
    -92.026
    """

    def __init__(
        self, formula: str, data: pd.DataFrame, family: str | Family = "binomial", weights=None, offset=None,
        contrasts: dict[str, str] | None = None,
    ):
        if not isinstance(formula, str):
            raise FormulaTypeError(
                f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}"
            )
        data = to_pandas(data, "data")  # polars / pyarrow tables too
        self.formula = formula
        self.family = get_family(family)
        #: NB2 with theta estimated (lme4's glmer.nb, glmmTMB's nbinom2): log(theta) joins both optimisations
        self.nb_estimated = isinstance(self.family, NegativeBinomial) and self.family.theta is None
        self.data_name = data.attrs.get("name") if isinstance(data, pd.DataFrame) else None
        self.gdesign: GlmmDesign = build_glmm_design(
            formula, data, self.family, weights=weights, offset=offset, contrasts=contrasts
        )
        self.design = self.gdesign.design
        # the contrast of every factor (R's default or the argument); the codec saves it
        self.contrasts: dict[str, str] = dict(self.design.fixed.contrasts)
        working = self.family
        if self.nb_estimated:
            working = self.family.with_theta(nb_start_theta(self.gdesign.y, self.gdesign.wt))
        self.problem = PirlsProblem(self.gdesign, working)
        self._separation: tuple[np.ndarray | None] | None = None

    def separation(self, mu: np.ndarray | None = None) -> list[str]:
        """Fixed effects that diverge under complete or quasi-complete separation (empty if none).

        Binomial family only; see :func:`memoe.glmm.design.separating_direction`. ``mu``: means at which
        the fixed effects' score equations hold (a converged joint PIRLS state); where they certify that no
        separating direction exists (:func:`memoe.glmm.design.no_separation_certificate`) the linear
        programme is skipped.
        """
        if self.family.name != "binomial":
            return []
        if self._separation is None:
            g = self.gdesign
            if mu is not None and no_separation_certificate(self.design.X, g.y, g.wt, mu, self.problem.family):
                self._separation = (None,)
            else:
                self._separation = (separating_direction(self.design.X, g.y, g.wt),)
        d = self._separation[0]
        if d is None:
            return []
        return [n for n, v in zip(self.design.fixef_names, d, strict=True) if v != 0.0]

    # ------------------------------------------------------------------ objectives
    def deviance_function(self, nAGQ: int = 1, laplace: str = "expected"):
        """``(problem, state, theta) -> deviance`` for the second stage (``laplace``: see :meth:`fit`)."""
        if nAGQ <= 1 and laplace == "observed":
            return observed_laplace_deviance
        if nAGQ <= 1:
            return lambda problem, state, theta: laplace_deviance(problem, state)
        return lambda problem, state, theta: agq_deviance(problem, state, theta, nAGQ)

    def objective(
        self, nAGQ: int = 1, u0: np.ndarray | None = None, laplace: str = "expected", warm: bool = False,
        min_iter: int = 2,
    ):
        """The stage-2 deviance as a function of ``x = (theta, beta)``.

        ``u0`` is the PIRLS start of every evaluation (default: zero); with ``warm`` only of the first,
        later ones start from the last converged modes (see :func:`memoe.glmm.laplace.joint_objective`).
        """
        u0 = np.zeros(self.problem.q) if u0 is None else u0
        return joint_objective(self.problem, u0, self.deviance_function(nAGQ, laplace), warm=warm, min_iter=min_iter)

    def _check_laplace(self, laplace, nAGQ: int) -> str:
        if not isinstance(laplace, str) or laplace.lower() not in LAPLACE_KINDS:
            raise ArgumentError(f"laplace must be one of {', '.join(LAPLACE_KINDS)}, got {laplace!r}")
        laplace = laplace.lower()
        if laplace == "observed":
            if nAGQ != 1:
                raise ArgumentError(f"laplace='observed' is a Laplace approximation: it needs nAGQ=1, got {nAGQ}")
            if self.family.has_dispersion:
                raise ArgumentError(
                    f"laplace='observed' (glmmTMB's approximation) is available for families with a fixed scale "
                    f"(binomial, poisson, negative_binomial), not {self.family}: lme4's {self.family.name} GLMM "
                    "does not scale the random effects by the dispersion as glmmTMB does"
                )
        return laplace

    # ------------------------------------------------------------------ fitting
    def set_family_theta(self, theta: float) -> None:
        """Set the working NB theta of the PIRLS problem (only for an estimated negative binomial)."""
        self.problem.family = self.family.with_theta(theta)

    def with_family_parameter(self, f):
        """``x -> f(x[:-1])`` with the NB theta ``exp(x[-1])`` set first (estimated negative binomial)."""
        lo, hi = NB_LOG_THETA_BOUNDS

        def g(x: np.ndarray) -> float:
            lt = float(x[-1])
            if not (lo <= lt <= hi):
                return np.inf
            self.set_family_theta(np.exp(lt))
            return f(np.asarray(x[:-1], dtype=float))

        return g

    def _minimize_restarting(self, f, x0, lower, step, control: GlmmControl, max_restarts: int = 10):
        """BOBYQA on the stage-2 deviance, restarted from its result while trial points hit infinite values.

        Links with a restricted domain (inverse, 1/mu^2, identity) give an infinite deviance wherever a mean
        leaves (0, inf); BOBYQA's quadratic model then shrinks its trust region and can stop short of the
        optimum ("xtol reached"). A restart with smaller first steps continues from there; it stops when a
        restart no longer lowers the deviance by ``ftol_abs``.
        """
        hits = [0]

        def counted(x):
            v = f(x)
            if not np.isfinite(v):
                hits[0] += 1
            return v

        def run(start, st):
            return minimize_bounded(
                counted, start, lower, ftol_abs=control.ftol_abs, xtol_abs=control.xtol_abs,
                maxeval=control.maxeval, initial_step=st,
            )

        opt = run(x0, step)
        for _ in range(max_restarts):
            if not hits[0]:
                break
            hits[0] = 0
            step = 0.25 * step
            again = run(opt.x, step)
            improved = again.fmin < opt.fmin - control.ftol_abs
            total = opt.feval + again.feval
            opt = dataclasses.replace(again if improved else opt, x0=opt.x0, feval=total)
            if not improved:
                break
        return opt

    def _quasi_newton(self, f, to_orig, C: np.ndarray, x0: np.ndarray, lower: np.ndarray, step: np.ndarray,
                      control: GlmmControl, nAGQ: int = 1):
        """The second stage by projected BFGS with the analytic gradient, in BOBYQA's whitened coordinates.

        ``x = (theta, g)``, ``beta = beta_1 + C g`` (``to_orig``), so the beta part of the gradient is ``C'`` times
        the gradient in beta. Each evaluation is one warm-started PIRLS run and the gradient at its modes
        (:meth:`PirlsProblem.laplace_gradient`); the start's Hessian from forward differences of the gradient in
        theta (one evaluation each) and the whitened beta block 2 I, so the steps are Newton's from the start: 5-7
        (value, gradient) evaluations in all against BOBYQA's 37-59 values on the small workloads (15-24 without
        the start's Hessian). Returns the
        optimiser summary (``x`` whitened, ``feval`` counting every evaluation), or None when the gradient was
        unavailable at a point or the method failed: the caller then runs BOBYQA.
        """
        k = self.design.theta_map.size
        gradient = self._stage2_gradient(nAGQ)
        missing = [False]
        calls = [0]

        def fun_grad(xt: np.ndarray):
            calls[0] += 1
            xo = to_orig(xt)
            v = f(xo)
            st = f.state[0]
            if not (np.isfinite(v) and st is not None and st.converged):
                return np.inf, np.full(len(xt), np.nan)
            g = gradient(xo[:k], st)
            if g is None:
                missing[0] = True
                return np.inf, np.full(len(xt), np.nan)
            if nAGQ > 1 and hasattr(f, "predict"):
                # the next PIRLS run starts from the modes' first-order prediction (the AGQ gradient's du/dx)
                f.predict[0] = self._mode_predictor(xo)
            g = np.asarray(g, dtype=float)
            g[k:] = C.T @ g[k:]
            return v, g

        def initial_hessian(x: np.ndarray, g: np.ndarray) -> np.ndarray:
            # Newton steps from the start instead of BFGS learning the curvature from a probing step. The theta
            # columns by forward differences of the gradient (one evaluation each, steps of 1e-3 of the first
            # steps); the whitened beta block is 2 I: C' (2 X' W X - 2 G' G) C with C C' the inverse of the
            # first stage's Schur complement, the penalised deviance's curvature in beta (the log-determinant's
            # share, O(1 / cluster size), is left to the BFGS updates). k evaluations instead of k + p: 148
            # instead of 209 stage-2 evaluations over 24 simulated models, the same optima (|d logLik| < 5e-12)
            n = len(x)
            H = np.full((n, n), np.nan)
            H[k:, k:] = 2.0 * np.eye(n - k)
            for i in range(k):
                hi = 1e-3 * step[i]
                xi = x.copy()
                xi[i] += hi  # upwards: a theta at its bound of 0 stays feasible
                _, gi = fun_grad(xi)
                H[:, i] = (gi - g) / hi
            H[:k, k:] = H[k:, :k].T
            return 0.5 * (H + H.T)

        # Fisher scoring (probit, cloglog) converges linearly: with warm starts its stopping error leaves ~3e-10 of
        # noise in the deviance (gradients ~3e-5), below which BFGS line-searches noise (cbpp probit: 100
        # evaluations, the optimum reached at the 4th); stop at that floor instead (logLik within 5e-10)
        ftol = control.ftol_abs if self._newton_pirls() else max(control.ftol_abs, NOISY_FTOL_ABS)
        return _gradient_stage(fun_grad, x0, lower, missing=missing, calls=calls, maxeval=control.maxeval,
                               initial_step=step, ftol_abs=ftol, xtol_abs=control.xtol_abs,
                               initial_hessian=initial_hessian)

    def _quasi_newton_theta(self, f, x0: np.ndarray, lower: np.ndarray, control: GlmmControl):
        """The first stage (nAGQ = 0, theta only) by projected BFGS with the analytic gradient.

        Each evaluation is one warm-started joint PIRLS run and the gradient at its joint modes
        (:meth:`PirlsProblem.laplace_gradient` with ``joint``), the start's Hessian from forward differences of the
        gradient: 5-10 evaluations against BOBYQA's 15-52 on the small workloads. None (the caller runs BOBYQA)
        when the gradient was unavailable at a point or the method failed.
        """
        P = self.problem
        missing = [False]
        calls = [0]

        def fun_grad(theta: np.ndarray):
            calls[0] += 1
            v = f(theta)
            st = f.state[0]
            if not (np.isfinite(v) and st is not None and st.converged):
                return np.inf, np.full(len(theta), np.nan)
            g = P.laplace_gradient(theta, st, joint=True)
            if g is None:
                missing[0] = True
                return np.inf, np.full(len(theta), np.nan)
            if P.sensitivity is not None and hasattr(f, "predict"):
                # the next PIRLS run starts from the modes' first-order prediction at its theta (the gradient's
                # du/dtheta and dbeta/dtheta): one Newton step fewer from a BFGS step away; the modes are the same
                dU, dB = P.sensitivity
                t0, b0, u0 = np.array(theta, dtype=float), st.beta.copy(), st.u.copy()
                def predict(t, t0=t0, b0=b0, u0=u0, dU=dU, dB=dB):
                    # a linear prediction far from its point can be worse than the last modes (seen at 0.25 away)
                    d = np.asarray(t, dtype=float) - t0
                    return (b0 + d @ dB, u0 + d @ dU) if np.max(np.abs(d), initial=0.0) <= 0.1 else None

                f.predict[0] = predict
            return v, g

        def initial_hessian(x: np.ndarray, g: np.ndarray) -> np.ndarray:
            n = len(x)
            H = np.full((n, n), np.nan)
            for i in range(n):
                hi = 1e-4 * max(1.0, abs(float(x[i])))
                xi = x.copy()
                xi[i] += hi  # upwards: a theta at its bound of 0 stays feasible
                H[:, i] = (fun_grad(xi)[1] - g) / hi
            return 0.5 * (H + H.T)

        return _gradient_stage(fun_grad, x0, lower, missing=missing, calls=calls, maxeval=control.maxeval,
                               ftol_abs=control.stage1_ftol_abs, xtol_abs=control.stage1_xtol_abs,
                               initial_hessian=initial_hessian)

    def _em_theta(self, theta: np.ndarray, f) -> np.ndarray | None:
        """One EM step for theta from the first-stage objective ``f``'s evaluation at ``theta``.

        With spherical modes ``u_j`` and ``A_j = Lambda' Z_j' W_j Z_j Lambda + I`` (the Laplace precision of
        ``u_j``), ``E[b_j b_j' | y] ~= Lambda (u_j u_j' + A_j^-1) Lambda'``; their mean over the levels is the
        M-step's covariance of the random effects and its Cholesky factor the new relative factor (the
        residual scale is 1 for families without a dispersion). Batched over the levels; with several factors
        (the dense path) ``A_j^-1`` are the diagonal blocks of the dense ``A^-1``, per factor. None when the
        evaluation failed or the step is not finite (the caller keeps ``theta``).
        """
        P = self.problem
        sw = P.single
        v = f(theta)
        st = f.state[0]
        if not (np.isfinite(v) and st is not None and st.converged):
            return None
        tmap = self.design.theta_map
        with np.errstate(all="ignore"):
            lams = tmap.lambdas(theta)
            if sw is not None:
                q, nl = sw.q, sw.l1
                pairs = [(a, b) for a in range(q) for b in range(a + 1)]
                prods = np.empty((len(pairs), P.n))
                for i, (a, b) in enumerate(pairs):
                    np.multiply(st.w, sw.ZT[a], out=prods[i])
                    if not sw._ones[b]:
                        prods[i] *= sw.ZT[b]
                sums = sw._sums(prods)  # (pairs, levels)
                S = np.empty((nl, q, q))
                for i, (a, b) in enumerate(pairs):
                    S[:, a, b] = S[:, b, a] = sums[i]
                A = lams[0].T @ S @ lams[0] + np.eye(q)  # (levels, q, q)
                blocks = [(st.u.reshape(nl, q), np.linalg.inv(A))]
            elif P.dense is not None and P.q <= CROSSED_GRADIENT_MAX_Q:
                # several factors: the diagonal blocks of the dense A^-1 (A couples the levels)
                if P._crossed is None:
                    P._crossed = CrossedGradient(P.X, P.codes, P.nlevels, P.Zraw, tmap)
                blocks = P._crossed.posterior_blocks(np.asarray(theta, dtype=float), st.w, st.u)
                if blocks is None:
                    return None
            else:
                return None
            factors = []
            for b, (u, Ainv) in enumerate(blocks):
                lam, nl, q = lams[b], u.shape[0], u.shape[1]
                Sigma = lam @ ((u.T @ u + Ainv.sum(axis=0)) / nl) @ lam.T
                if np.sum(tmap.block == b) < q * (q + 1) // 2:
                    # a diagonal structure ((1 + x || g)): its factor is the standard deviations
                    factors.append(np.diag(np.sqrt(np.diag(Sigma))))
                    continue
                try:
                    factors.append(np.linalg.cholesky(Sigma))
                except np.linalg.LinAlgError:
                    return None
            new = tmap.theta_of(factors)
        if not (np.all(np.isfinite(new)) and np.all(new >= tmap.lower_bounds)):
            return None
        return np.asarray(new, dtype=float)

    def _beta_whitening(self, theta: np.ndarray, state: PirlsState) -> np.ndarray | None:
        """Lower Cholesky factor of the (unscaled) covariance of beta at a PIRLS state, None if unavailable."""
        P = self.problem
        if P.p == 0:
            return None
        try:
            with np.errstate(all="ignore"):
                z = state.eta - P.offset + (P.y - state.mu) / P.family.mu_eta(state.eta)
                sw = P.single
                if sw is not None and P.dense is None and sw.q <= 2:
                    # one joint step of the single-factor solver leaves the Schur complement (no PLSProblem set-up)
                    sw.solve(np.asarray(theta, dtype=float), state.w, z, True)
                    vcov = np.linalg.inv(sw.schur)
                else:
                    sol = P.wls_problem(state.w, z, with_beta=True).solve(theta, reml=False)
                    vcov = np.asarray(sol.vcov_unscaled, dtype=float)
                C = np.linalg.cholesky(vcov)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError, MemoeError):
            return None
        return C if np.all(np.isfinite(C)) and np.all(np.diag(C) > 0) else None

    def _beta_scale(self, theta: np.ndarray, state: PirlsState) -> np.ndarray | None:
        """Standard errors of beta at a PIRLS state (dispersion-scaled RX factor), None if unavailable."""
        P = self.problem
        try:
            with np.errstate(all="ignore"):
                z = state.eta - P.offset + (P.y - state.mu) / P.family.mu_eta(state.eta)
                sol = P.wls_problem(state.w, z, with_beta=True).solve(theta, reml=False)
                phi = P.family.dispersion_ml(P.y, state.mu, P.wt)
                se = np.sqrt(phi * np.diag(sol.vcov_unscaled))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError, MemoeError):
            return None
        return se if np.all(np.isfinite(se)) and np.all(se > 0) else None

    def _modes_at(self, theta, beta, u0: np.ndarray, nb: bool, x: np.ndarray) -> np.ndarray:
        """Conditional modes at (theta, beta) from a nearby start (the last evaluation's); ``u0`` if PIRLS fails."""
        if nb:
            self.set_family_theta(float(np.exp(x[-1])))
        try:
            st = self.problem.solve(theta, beta=np.asarray(beta, dtype=float), u0=u0, warm=True)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return u0
        return st.u if st.converged and np.all(np.isfinite(st.u)) else u0

    def _newton_pirls(self) -> bool:
        """Whether PIRLS' working weights are the exact curvature (binomial logit, Poisson log: canonical links)."""
        fam = self.problem.family
        return (type(fam) is Binomial and fam.link.name == "logit") or (type(fam) is Poisson and fam.link.name == "log")

    def _gradient_family(self) -> bool:
        """Families with the analytic Laplace gradient: the canonical links and the binomial probit and cloglog
        (:meth:`PirlsProblem.laplace_gradient`)."""
        fam = self.problem.family
        return self._newton_pirls() or (type(fam) is Binomial and fam.link.name in ("probit", "cloglog"))

    def _warm(self, control: GlmmControl) -> bool:
        """Warm starts across evaluations: on by default for families without a dispersion parameter.

        With a restricted link domain (Gamma's inverse link, the inverse Gaussian's 1/mu^2) a warm start from
        the last point can leave the domain where a cold start does not; BOBYQA then stalls short of the optimum.
        """
        return bool(control.warm_start) and not self.problem.family.has_dispersion

    def _stage1(self, control: GlmmControl, start: np.ndarray | None) -> tuple[StageResult, PirlsState]:
        tmap = self.design.theta_map
        f = theta_objective(self.problem, warm=self._warm(control))
        x0 = tmap.initial() if start is None else np.asarray(start, dtype=float)
        lower = tmap.lower_bounds
        nb_theta = None
        if self.nb_estimated:
            # glmer.nb alternates theta and the rest; optimising log(theta) with them reaches the same optimum
            f = self.with_family_parameter(f)
            x0 = np.concatenate([x0, [np.log(self.problem.family.theta)]])
            lower = np.concatenate([lower, [NB_LOG_THETA_BOUNDS[0]]])
        opt = None
        if not self.nb_estimated and control.optimizer == "auto" and self._gradient_available(1, "expected"):
            extra = 0
            if start is None:
                # lme4's start (Lambda = I) is often on the concave side of the deviance, where BFGS probes its way
                # in by a line search (pois_ri: 6 of 11 evaluations); one EM step from the first evaluation's modes
                # starts it near the optimum instead (pois_ri 11 -> 1 + 6, pois_slope 17 -> 1 + 11, same optima)
                em = self._em_theta(x0, f)
                if em is not None:
                    x0, extra = em, 1
            opt = self._quasi_newton_theta(f, x0, lower, control)
            if opt is not None and extra:
                opt = dataclasses.replace(opt, feval=opt.feval + extra, x0=tmap.initial())
        if opt is None:
            opt = minimize_bounded(
                f, x0, lower, ftol_abs=control.stage1_ftol_abs, xtol_abs=control.stage1_xtol_abs,
                maxeval=control.maxeval,
            )
        theta = opt.x[: tmap.size].copy()
        if self.nb_estimated:
            nb_theta = float(np.exp(opt.x[-1]))
            self.set_family_theta(nb_theta)
        state = self.problem.solve(theta, beta=None)
        return StageResult(opt, theta, state.beta.copy(), nb_theta), state

    def fit(
        self,
        nAGQ: int = 1,
        start: np.ndarray | None = None,
        control: GlmmControl | None = None,
        warn: bool = True,
        laplace: str = "expected",
    ):
        """Estimate the model as lme4's ``glmer`` (two stages, BOBYQA with lme4's bounds).

        Parameters
        ----------
        nAGQ : int, default 1
            0: theta only (beta from PIRLS); 1: Laplace; > 1: adaptive Gauss-Hermite quadrature
            with that many nodes (one scalar random-effects term only).
        start : array-like or dict, optional
            Starting theta (lme4 order, or a dict by theta name); default identity relative factors.
        control : GlmmControl or dict, optional
            A dict holds GlmmControl's field names.
        warn : bool, default True
            Emit convergence, singular-fit and separation warnings (always recorded on the result).
        laplace : {"expected", "observed"}, default "expected"
            The curvature in the Laplace approximation's ``log det``: the expected (Fisher) working weights
            of PIRLS (lme4's ``glmer`` / ``glmer.nb``), or the observed information at the modes (glmmTMB /
            TMB). They coincide for canonical links (binomial logit, Poisson log) and differ for NB2 with
            the log link. With ``"observed"`` and an estimated NB theta the fixed effects' covariance is
            glmmTMB's: from the joint Hessian in (theta, beta, log theta_NB).

        Returns
        -------
        GlmmResult

        Raises
        ------
        ArgumentError, ArgumentTypeError, QuadratureError
        """
        if isinstance(nAGQ, (bool, np.bool_)) or not isinstance(nAGQ, numbers.Integral):
            raise ArgumentTypeError(f"nAGQ must be an integer (0, 1 or more nodes), got {nAGQ!r}")
        check_agq(self.problem, nAGQ)
        laplace = self._check_laplace(laplace, int(nAGQ))
        if nAGQ > 1 and self.nb_estimated:
            # the AGQ deviance (lme4's) drops the family's normalising constants, which depend on the NB theta
            raise QuadratureError(
                "nAGQ > 1 cannot estimate the negative binomial theta (the quadrature deviance leaves out the "
                "terms that depend on it); use nAGQ=1, or fix theta with NegativeBinomial(theta=...)"
            )
        warn = check_bool(warn, "warn")
        control = check_control(control, GlmmControl)
        if control.optimizer not in ("auto", "bobyqa"):
            raise ArgumentError(f"control optimizer must be 'auto' or 'bobyqa', got {control.optimizer!r}")
        tmap = self.design.theta_map
        start = check_start(start, tmap.names, tmap.lower_bounds)
        # many small factorisations: BLAS threads cost more than they save (memoe.core.linalg.threads)
        with blas_threads(1):
            return self._fit(int(nAGQ), start, control, warn, laplace)

    def _fit(self, nAGQ: int, start, control: GlmmControl, warn: bool, laplace: str = "expected"):
        tmap = self.design.theta_map
        k, p = tmap.size, self.design.p
        if k == 0:
            from memoe.glmm.glm import fit_glm

            return fit_glm(self, control, warn)
        nb = self.nb_estimated
        stage1, state1 = self._stage1(control, start)
        if not (np.isfinite(stage1.opt.fmin) and stage1.opt.fmin < 1e299):
            raise ConvergenceError(
                f"PIRLS found no finite deviance for the {self.problem.family} model at any theta tried (the linear "
                "predictor leaves the domain of the link, as lme4's 'PIRLS loop resulted in NaN value'); try another "
                "link (e.g. link='log') or starting values"
            )
        nb_hessian = None
        if nAGQ == 0:
            theta, beta, stage2 = stage1.theta.copy(), stage1.beta.copy(), None
            f = None
            lower = tmap.lower_bounds
        else:
            f = self.objective(nAGQ, u0=state1.u, laplace=laplace, warm=self._warm(control))
            x0 = np.concatenate([stage1.theta, stage1.beta])
            lower = np.concatenate([tmap.lower_bounds, np.full(p, -np.inf)])
            fopt, lopt = f, lower
            if nb:
                fopt = self.with_family_parameter(f)
                x0 = np.concatenate([x0, [np.log(stage1.family_theta)]])
                lopt = np.concatenate([lower, [NB_LOG_THETA_BOUNDS[0]]])
            # steps of 10% of each start value (at least 0.05): theta and beta live on similar scales
            step = np.maximum(0.1 * np.abs(x0), 0.05)
            whiten = None
            if not self.problem.family.has_dispersion:
                whiten = self._beta_whitening(stage1.theta, state1)
            if whiten is not None:
                # BOBYQA on beta = beta_1 + C g, C C' = the first stage's covariance of beta: the coefficients become
                # uncorrelated and of unit scale (an uncentred covariate's slope and the intercept are strongly
                # correlated, which BOBYQA's quadratic model needs hundreds of evaluations to learn: VerbAgg 405 ->
                # 74); a linear change of variables, so the optimum is the same. The theta steps shrink by the
                # typical ratio of standard error to the default step: BOBYQA's model works best when a first step
                # changes the deviance by similar amounts in every coordinate (10^6 rows: SEs ~ 0.002, not 0.05)
                se = np.sqrt(np.sum(whiten * whiten, axis=1))
                step[:k] *= float(np.clip(np.median(se / step[k : k + p]), 1e-3, 1.0))
                b1 = x0[k : k + p].copy()
                f_orig = fopt

                def to_orig(xt, b1=b1, C=whiten):
                    xo = np.array(xt, dtype=float, copy=True)
                    xo[k : k + p] = b1 + C @ xt[k : k + p]
                    return xo

                fopt = lambda xt, f_orig=f_orig, to_orig=to_orig: f_orig(to_orig(xt))  # noqa: E731
                x0 = x0.copy()
                x0[k : k + p] = 0.0
                step[k : k + p] = 1.0
            elif self.problem.family.has_dispersion:
                # the coefficients of Gamma / inverse Gaussian models live on the scale of their links (1/mu
                # is ~0.01 for a mean of 100): first steps of one standard error keep the linear predictor
                # inside the link's domain, where fixed steps of 0.05 can leave it (mu < 0) and stall BOBYQA
                se = self._beta_scale(stage1.theta, state1)
                if se is not None:
                    step[k : k + p] = se
            opt = None
            if whiten is not None and control.optimizer == "auto" and self._gradient_available(nAGQ, laplace):
                opt = self._quasi_newton(f, to_orig, whiten, x0, lopt, step, control, nAGQ)
            if opt is None:
                opt = self._minimize_restarting(fopt, x0, lopt, step, control)
            if whiten is not None:
                opt = dataclasses.replace(opt, x=to_orig(opt.x), x0=to_orig(opt.x0))
                fopt = f_orig
            x = opt.x.copy()
            x[:k][(tmap.lower_bounds == 0) & (np.abs(x[:k]) < 1e-12)] = 0.0
            theta, beta = x[:k], x[k : k + p]
            fresh = False
            if self._warm(control):
                # finite differences need an objective that is a smooth function of x: warm starts make PIRLS'
                # stopping error (|delta u| < U_TOL, ~1e-10 in the deviance) vary from point to point, which a
                # step of 1e-4 turns into Hessian errors of ~1e-2; every Hessian evaluation starts from one fixed
                # point instead. With a canonical link PIRLS is Newton's method: from the estimates' modes (1e-4
                # away) three iterations (two steps: 1e-4 -> 1e-8 -> 1e-16, then the check) make every point exact
                # to rounding, where the first stage's modes took four or five. Fisher scoring with another link
                # converges linearly, so the number of steps to the tolerance from so close a start would vary
                # between points: those start from the first stage's modes as before
                u_hat, min_iter = state1.u, 2
                if self._newton_pirls():
                    u_hat, min_iter = self._modes_at(theta, beta, f.last[0], nb, x), 3
                f = self.objective(nAGQ, u0=u_hat, laplace=laplace, min_iter=min_iter)
                fopt = self.with_family_parameter(f) if nb else f
                fresh = True
            nb_theta = None
            if nb:
                nb_theta = float(np.exp(x[-1]))
                if control.calc_derivs and len(x) <= MAX_PARAMS_FOR_DERIVS:
                    # the joint Hessian in (theta, beta, log theta_NB): the SE of log(theta), as glmmTMB reports
                    with np.errstate(all="ignore"):
                        f0 = opt.fmin if np.array_equal(x, opt.x) and not fresh else None
                        _, nb_hessian = finite_difference_derivatives(
                            fopt, x, lopt, delta=control.hessian_delta, f0=f0
                        )
                self.set_family_theta(nb_theta)
            stage2 = StageResult(opt, theta.copy(), beta.copy(), nb_theta)
        # the optimiser's value is reused only when the Hessian's objective is the optimised one (no warm starts)
        same_x = stage2 is not None and np.array_equal(np.concatenate([theta, beta]), stage2.opt.x)
        f0 = stage2.opt.fmin if same_x and not self._warm(control) else None
        # with theta_NB estimated the (theta, beta) Hessian is at the estimated theta_NB, as glmer.nb's final fit
        report, hessian = self._check(f, theta, beta, lower, control, f0, nAGQ, laplace)
        singular = is_boundary(theta, tmap.lower_bounds, control.singular_tol)
        messages = finish_fit(report, singular=singular, names=tmap.names, values=theta, warn=warn)
        result = GlmmResult(
            model=self, nAGQ=nAGQ, theta=theta, beta=beta, u_start=state1.u, stage1=stage1, stage2=stage2,
            convergence=report, hessian=hessian, singular=singular, messages=messages, nb_hessian=nb_hessian,
            laplace=laplace,
        )
        if not np.isfinite(result.criterion):
            raise ConvergenceError(
                f"the {self.problem.family} GLMM has no finite Laplace deviance at its estimates (PIRLS left the "
                "link's domain); try another link (e.g. link='log') or starting values"
            )
        separated = self.separation(state1.mu if state1.converged else None)
        if separated:
            msg = (
                "complete or quasi-complete separation: the likelihood keeps increasing along the fixed effects "
                f"{separated} (fitted probabilities numerically 0 or 1); their estimates and standard errors "
                "are not finite in the limit"
            )
            result.messages.append(msg)
            if warn:
                emit_warning(msg, SeparationWarning)
        return result

    def result_at(
        self, theta, beta, nAGQ: int = 1, hessian: bool = True, control: GlmmControl | None = None,
        family_theta: float | None = None, laplace: str = "expected",
    ):
        """The result object at given (theta, beta), without optimising (e.g. at another program's estimates).

        PIRLS starts from zero modes; with ``hessian`` the finite-difference Hessian (and so the
        Hessian-based ``vcov`` and the convergence checks) is computed there. ``family_theta``: the
        negative binomial theta (required when it is estimated).
        """
        check_agq(self.problem, nAGQ)
        laplace = self._check_laplace(laplace, max(int(nAGQ), 1))
        control = control or GlmmControl()
        if self.nb_estimated:
            if family_theta is None:
                raise ArgumentError("result_at of a negative binomial GLMM with theta estimated needs family_theta=")
            self.set_family_theta(float(family_theta))
        tmap = self.design.theta_map
        theta = np.asarray(theta, dtype=float)
        beta = np.asarray(beta, dtype=float)
        u0 = np.zeros(self.problem.q)
        lower = np.concatenate([tmap.lower_bounds, np.full(self.design.p, -np.inf)])
        f = self.objective(max(int(nAGQ), 1), u0=u0, laplace=laplace) if hessian and nAGQ > 0 else None
        singular = is_boundary(theta, tmap.lower_bounds, control.singular_tol)
        with blas_threads(1):
            report, H = self._check(f, theta, beta, lower, control, None, max(int(nAGQ), 1), laplace)
            return GlmmResult(
                model=self, nAGQ=int(nAGQ), theta=theta, beta=beta, u_start=u0, stage1=None, stage2=None,
                convergence=report, hessian=H, singular=singular, messages=list(report.messages), laplace=laplace,
            )

    def _gradient_available(self, nAGQ: int, laplace: str) -> bool:
        """Whether the stage-2 deviance has its analytic gradient here: a canonical link or the binomial probit /
        cloglog, and either nAGQ = 1 with lme4's expected curvature and one grouping factor with q <= 3 or several
        with few random effects (:meth:`PirlsProblem.laplace_gradient`), or nAGQ > 1 (one scalar term:
        :func:`memoe.glmm.agq.agq_gradient`)."""
        P = self.problem
        if self.nb_estimated or not self._gradient_family():
            return False
        if nAGQ > 1:
            return P.single is not None and P.dense is None and P.single.q == 1
        return (
            nAGQ == 1 and laplace == "expected"
            and (
                (P.single is not None and P.dense is None and P.single.q <= GRADIENT_MAX_Q)
                or (P.dense is not None and P.q <= CROSSED_GRADIENT_MAX_Q)
            )
        )

    def _stage2_gradient(self, nAGQ: int):
        """``(theta, state) -> gradient in (theta, beta) or None`` of the stage-2 deviance (Laplace or AGQ)."""
        P = self.problem
        if nAGQ > 1:
            return lambda theta, st: agq_gradient(P, st, theta, nAGQ)
        return P.laplace_gradient

    def _mode_predictor(self, x: np.ndarray):
        """``x' -> u0`` predicted from the modes and their derivatives at ``x`` (the last :func:`agq_gradient`), or
        None (no prediction more than 0.1 away in any coordinate: a linear prediction can then be worse than the
        last modes)."""
        sens = getattr(self.problem, "_agq_sensitivity", None)
        if sens is None:
            return None
        u0, du_theta, du_beta = sens
        x0 = np.array(x, dtype=float)

        def predict(xn: np.ndarray) -> np.ndarray | None:
            d = np.asarray(xn, dtype=float) - x0
            if np.max(np.abs(d), initial=0.0) > 0.1:
                return None
            return u0 + d[0] * du_theta + d[1:] @ du_beta

        return predict

    def _with_gradient(self, f, nAGQ: int = 1):
        """``x -> (f(x), gradient or None)`` for an objective of :meth:`objective` (its last state read at once).

        With nAGQ > 1 the first point's modes and their derivatives predict the later points' PIRLS starts (the
        derivative check's stencil, h away): one Newton iteration fewer at each, the same modes.
        """
        gradient = self._stage2_gradient(nAGQ)
        k = self.design.theta_map.size
        first = [True]

        def fg(x: np.ndarray):
            v = f(x)
            st = f.state[0]
            g = None
            if np.isfinite(v) and st is not None and st.converged:
                g = gradient(x[:k], st)
                if first[0] and g is not None and nAGQ > 1 and hasattr(f, "predict"):
                    f.predict[0] = self._mode_predictor(x)
            first[0] = False
            return v, g

        return fg

    def _derivatives(self, f, x, lower, control: GlmmControl, f0, nAGQ: int, laplace: str):
        """Gradient and Hessian of the stage-2 deviance at ``x`` (lme4's ``deriv12`` stencil, step ``h``).

        With the analytic gradient (:meth:`_gradient_available`) every column of the Hessian comes from central
        differences of that gradient at the ``2 k`` points of the diagonal stencil (one-sided at a theta bound,
        as the values), symmetrised: ``1 + 2 k`` evaluations instead of ``2 k + k (k - 1)`` (cbpp 11 instead of 31,
        binslope 11 instead of 31). The gradient differences' error is O(h^2), as the values' second differences,
        without their rounding error ``4 eps |f| / h^2``. The reported gradient stays lme4's central difference
        of the values.
        """
        if self._gradient_available(nAGQ, laplace) and hasattr(f, "state"):
            out = _derivatives_from_gradient(self._with_gradient(f, nAGQ), x, lower, control.hessian_delta)
            if out is not None:
                return out
        return finite_difference_derivatives(f, x, lower, delta=control.hessian_delta, f0=f0)

    def _check(self, f, theta, beta, lower, control: GlmmControl, f0: float | None, nAGQ: int = 0,
               laplace: str = "expected"):
        """lme4's checkConv on the stage-2 deviance; the Hessian is kept for ``vcov``."""
        if f is None or not control.calc_derivs or len(lower) > MAX_PARAMS_FOR_DERIVS:
            return ConvergenceReport(converged=True), None
        x = np.concatenate([theta, beta])
        # infinite deviances next to the estimates (a link's domain) make inf - inf: caught below as non-finite
        with np.errstate(invalid="ignore", over="ignore"):
            grad, hess = self._derivatives(f, x, lower, control, f0, nAGQ, laplace)
        k = len(theta)
        free = np.ones(len(x), dtype=bool)
        free[:k] = ~((lower[:k] == 0) & (theta < control.singular_tol))
        if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
            # e.g. separation: the deviance is flat or undefined around estimates that ran off
            msg = "Model failed to converge: the deviance is not finite around the estimates (no Hessian)"
            return ConvergenceReport(converged=False, messages=[msg], gradient=grad, hessian=hess), None
        return check_convergence(grad, hess, free, grad_tol=control.grad_tol), hess

    def __repr__(self) -> str:
        d = self.design
        return (
            f"GLMM({self.formula!r}, family={self.family}, nobs={d.n}, "
            f"groups={ {b.factor.name: b.nlevels for b in d.blocks} })"
        )
